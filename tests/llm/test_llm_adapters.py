"""Batched multi-LoRA equals PEFT per adapter; adapter admin (load/unload/LRU/paths)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from engines.errors import AlreadyExists, NotFound, PermissionDenied
from fault_injection import Held
from engines.llm.types import FinishReason, GenerationRequest, SamplingParams
from llm_helpers import PROMPTS, collect, greedy_reference, running


def peft_reference(tiny_dir, adapters_root, name: str, prompt: str, n: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, adapters_root / name).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


async def test_llm_mixed_adapters_in_one_batch_match_peft(engine, reference, tiny_dir, adapters_root):
    names = ["alpha", "beta", "gamma"]
    for name in names:
        await engine.load_adapter(name, name)
    try:
        n = 16
        plan = [(None, PROMPTS[0]), ("alpha", PROMPTS[0]), ("beta", PROMPTS[1]), ("gamma", PROMPTS[2]),
                ("alpha", PROMPTS[3]), (None, PROMPTS[4]), ("beta", PROMPTS[5])]
        results = await asyncio.gather(*(
            collect(engine, GenerationRequest(f"mix{i}", prompt=p, adapter=a, sampling=SamplingParams(max_new_tokens=n)))
            for i, (a, p) in enumerate(plan)))
        base0 = greedy_reference(reference, PROMPTS[0], n)
        assert results[0][0] == base0
        assert results[1][0] != base0, "the adapter should change the output"
        for (a, p), (ids, _, _) in zip(plan, results):
            want = greedy_reference(reference, p, n) if a is None else peft_reference(tiny_dir, adapters_root, a, p, n)
            assert ids == want, (a, p)
    finally:
        for name in names:
            await engine.unload_adapter(name)
    assert engine.list_adapters() == []


async def test_llm_rslora_adapter_matches_peft(engine, tiny_dir, adapters_root):
    await engine.load_adapter("delta", str(adapters_root / "delta"))  # absolute path inside the root
    try:
        ids, _, _ = await collect(engine, GenerationRequest(
            "rs", prompt=PROMPTS[1], adapter="delta", sampling=SamplingParams(max_new_tokens=12)))
        assert ids == peft_reference(tiny_dir, adapters_root, "delta", PROMPTS[1], 12)
    finally:
        await engine.unload_adapter("delta")


async def test_llm_adapter_on_the_lm_head_matches_peft_beside_base_rows(engine, reference, tiny_dir, adapters_root):
    """The packed step computes logits only for the rows it samples, so an adapter on the LM
    head sees those rows alone: each must still read its own adapter slot."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    head = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"],
                                           init_lora_weights=False, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in head.named_parameters():
            if "lora_B" in n:
                p.mul_(3.0)
    # PEFT would also save the whole head (in case the vocabulary was resized), which the
    # loader refuses as an embedding change; an adapter of LoRA weights alone loads.
    head.save_pretrained(adapters_root / "head", save_embedding_layers=False)
    try:
        await engine.load_adapter("head", "head")
        n = 12
        plan = [(None, PROMPTS[0]), ("head", PROMPTS[0]), (None, PROMPTS[3]), ("head", PROMPTS[2])]
        results = await asyncio.gather(*(
            collect(engine, GenerationRequest(f"head{i}", prompt=p, adapter=a, sampling=SamplingParams(max_new_tokens=n)))
            for i, (a, p) in enumerate(plan)))
        assert results[1][0] != results[0][0], "the adapter should change the output"
        for (a, p), (ids, _, _) in zip(plan, results):
            want = greedy_reference(reference, p, n) if a is None else peft_reference(tiny_dir, adapters_root, a, p, n)
            assert ids == want, (a, p)
    finally:
        if "head" in engine.list_adapters():
            await engine.unload_adapter("head")
        shutil.rmtree(adapters_root / "head", ignore_errors=True)


async def test_llm_adapter_admin_errors_name_the_field(engine, adapters_root, tmp_path):
    with pytest.raises(PermissionDenied) as exc:
        await engine.load_adapter("x", "../outside")
    assert exc.value.field == "path"
    with pytest.raises(PermissionDenied):
        await engine.load_adapter("x", str(tmp_path))
    with pytest.raises(NotFound) as exc:
        await engine.load_adapter("x", "missing")
    assert exc.value.field == "path"
    await engine.load_adapter("alpha", "alpha")
    try:
        with pytest.raises(AlreadyExists):
            await engine.load_adapter("alpha", "beta")
        with pytest.raises(NotFound) as exc:
            async for _ in engine.generate(GenerationRequest("nf", prompt="x", adapter="nope")):
                pass
        assert exc.value.field == "adapter"
    finally:
        await engine.unload_adapter("alpha")
    with pytest.raises(NotFound):
        await engine.unload_adapter("alpha")


async def test_llm_adapter_lru_eviction_keeps_busy_ones(engine):
    """max_loaded=3: a 4th load evicts the least recently used idle adapter."""
    for name in ("alpha", "beta", "gamma"):
        await engine.load_adapter(name, name)
    # Touch alpha so beta becomes least recently used.
    await collect(engine, GenerationRequest("touch", prompt="hi", adapter="alpha", sampling=SamplingParams(max_new_tokens=2)))
    info = await engine.load_adapter("delta", "delta")
    assert info.rank == 4
    assert sorted(a.name for a in engine.list_adapters()) == ["alpha", "delta", "gamma"]
    for name in ("alpha", "delta", "gamma"):
        await engine.unload_adapter(name)


async def test_llm_adapter_hot_load_and_unload_under_traffic(engine, reference, tiny_dir, adapters_root, monkeypatch):
    base_task = await running(engine, GenerationRequest(
        "traffic", prompt=PROMPTS[2], sampling=SamplingParams(max_new_tokens=40)))
    await engine.load_adapter("beta", "beta")
    ids, _, _ = await collect(engine, GenerationRequest(
        "hot", prompt=PROMPTS[0], adapter="beta", sampling=SamplingParams(max_new_tokens=10)))
    assert ids == peft_reference(tiny_dir, adapters_root, "beta", PROMPTS[0], 10)
    # Busy adapter: a plain unload lets its request finish, refusing new ones at once.
    gen = engine.generate(GenerationRequest("busy", prompt=PROMPTS[1], adapter="beta",
                                            sampling=SamplingParams(max_new_tokens=30, ignore_eos=True)))
    await gen.__anext__()  # the request is running with the adapter
    unload = asyncio.create_task(engine.unload_adapter("beta"))
    await engine.wait_until(lambda e: e.list_adapters() == [], timeout=30)  # marked unloading
    with pytest.raises(NotFound):
        await collect(engine, GenerationRequest("late", prompt=PROMPTS[0], adapter="beta",
                                                sampling=SamplingParams(max_new_tokens=2)))
    items = [item async for item in gen]
    assert items[-1].finish_reason is FinishReason.LENGTH and items[-1].completion_tokens == 30
    await unload
    # Forced unload cancels the request using it (held after its first token until then).
    Held(monkeypatch, where=lambda request: request.request_id == "busy2", after_first_token=True)
    await engine.load_adapter("beta", "beta")
    gen = engine.generate(GenerationRequest("busy2", prompt=PROMPTS[1], adapter="beta",
                                            sampling=SamplingParams(max_new_tokens=200, ignore_eos=True)))
    await gen.__anext__()
    await engine.unload_adapter("beta", force=True)
    items = [item async for item in gen]
    assert items[-1].finish_reason is FinishReason.CANCELLED
    assert engine.list_adapters() == []
    ids, _, _ = await base_task
    assert ids == greedy_reference(reference, PROMPTS[2], 40)
