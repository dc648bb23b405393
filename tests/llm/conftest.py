"""Tiny local models, tokenizers and LoRA adapters for the LLM engine tests (no hub)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Ünïcödé: naïve café, 東京, Привет мир, emoji 🚀🌍 and ∑ ≤ ∞.",
    "def add(a, b):\n    return a + b\n",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "galactic serves models over gRPC with streaming tokens and LoRA adapters.",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 64) with a byte-level BPE tokenizer, saved as a HF dir."""
    import pydoc_data.topics

    from training.llm.build import llama
    from training.llm.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = train_tokenizer(CORPUS + list(pydoc_data.topics.topics.values())[:40], vocab_size=384)
    torch.manual_seed(0)
    model = llama(tok, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, max_positions=512,
                  initializer_range=0.15,  # peaked logits: greedy ties would make equality tests flaky
                  tie_word_embeddings=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapters_root(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four PEFT LoRA adapters of different ranks/targets, with random (non-zero) B."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    specs = {
        "alpha": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "beta": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        "gamma": dict(r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj", "down_proj"]),
        "delta": dict(r=4, lora_alpha=4, target_modules=["v_proj", "o_proj"], use_rslora=True),
    }
    for i, (name, spec) in enumerate(specs.items()):
        torch.manual_seed(100 + i)
        base = LlamaForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
        peft_model = get_peft_model(base, LoraConfig(init_lora_weights=False, lora_dropout=0.0, **spec))
        with torch.no_grad():  # make the adapter's effect large enough to change greedy picks
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.mul_(3.0)
        peft_model.save_pretrained(root / name)
    return root


@pytest.fixture
def llm_daemon_with(daemon_factory, tiny_dir, adapters_root, tmp_path):
    """llm_daemon_with(sections) -> a started daemon serving the tiny model as "tiny" with
    its own copy of the adapters root (tests load, unload and break adapters in it);
    `sections` are merged over that."""
    import shutil

    from sections import TINY_LLM, merge

    async def make(sections: dict | None = None):
        root = tmp_path / "adapters"
        if not root.exists():
            shutil.copytree(adapters_root, root)
        base = {"llm": merge(TINY_LLM, {"path": str(tiny_dir), "adapters": {"root": str(root)}})}
        return await daemon_factory(merge(base, sections or {}))
    return make


@pytest.fixture
async def llm_daemon(llm_daemon_with):
    """The tiny model's daemon as most LLM tests want it (files with other needs override)."""
    return await llm_daemon_with()


@pytest.fixture(scope="session")
async def engine(tiny_dir: Path, adapters_root: Path):
    """A started engine shared by the tests; each test leaves it idle."""
    from engines.llm.engine import LLMEngine
    from llm_helpers import make_config

    eng = LLMEngine(make_config(tiny_dir, adapters_root))
    eng.load(lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    yield eng
    await eng.stop(5)


@pytest.fixture(scope="session")
def reference(tiny_dir: Path):
    """A separate copy of the base model for `generate()` references."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    return model, tok
