"""Training exports what the engine loads: a LoRA adapter dir and the demo model dir."""

from __future__ import annotations

import asyncio
import dataclasses

from engines.llm.types import GenerationRequest, SamplingParams
from llm_helpers import PROMPTS, collect, make_config


async def test_llm_lora_training_exports_an_adapter_the_engine_serves(tiny_dir, tmp_path):
    from engines.llm.engine import LLMEngine
    from training.llm.cli import train_lora

    data = tmp_path / "data.txt"
    data.write_text("galactic streams tokens.\n\nadapters change the answer.\n\n" * 20)
    root = tmp_path / "adapters"
    out = train_lora(tiny_dir, data, root / "trained", rank=4, steps=3, block=32, batch_size=4)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    eng = LLMEngine(make_config(tiny_dir, root))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        info = await eng.load_adapter("trained", "trained")
        assert info.rank == 4
        ids, _, final = await collect(eng, GenerationRequest("t", prompt=PROMPTS[0], adapter="trained",
                                                             sampling=SamplingParams(max_new_tokens=4)))
        assert final.completion_tokens == len(ids)
    finally:
        await eng.stop(1)


async def test_llm_embedded_demo_model_pipeline_with_a_tiny_spec(tmp_path):
    """The real demo recipe, shrunk: trains, caches, and is served as path = "embedded"."""
    from engines.llm.engine import LLMEngine
    from training.llm.demo import DEMO_SPEC, ensure_demo_model

    spec = dataclasses.replace(DEMO_SPEC, vocab_size=300, hidden=32, layers=1, heads=2, block=32, max_steps=3)
    seen: list[str] = []
    path = ensure_demo_model(tmp_path, seen.append, spec=spec)
    assert (path / "model.safetensors").is_file() and seen
    assert ensure_demo_model(tmp_path, spec=spec) == path  # cached: no retraining
    # Pose the tiny model as the cached default demo so `path = "embedded"` finds it.
    path.rename(tmp_path / f"demo-llm-{DEMO_SPEC.version}-{DEMO_SPEC.hidden}x{DEMO_SPEC.layers}")
    cfg = dataclasses.replace(make_config(path, tmp_path), path="embedded", cache_dir=tmp_path)
    eng = LLMEngine(cfg)
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    try:
        ids, _, final = await collect(eng, GenerationRequest("d", prompt="The", sampling=SamplingParams(max_new_tokens=3)))
        assert final.completion_tokens == len(ids)
    finally:
        await eng.stop(1)


def test_llm_train_cli_registers_its_subcommands(tmp_path):
    import argparse

    from training.llm.cli import register

    parser = argparse.ArgumentParser(prog="galactic-train")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lora", "--base", "b", "--data", "d.jsonl", "--out", str(tmp_path), "--targets", "q_proj,o_proj"])
    assert args.command == "lora" and args.rank == 8 and callable(args.func)
    args = parser.parse_args(["demo-model", "--out", str(tmp_path)])
    assert args.command == "demo-model" and callable(args.func)
