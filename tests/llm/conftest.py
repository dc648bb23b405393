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
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.llm.tokenizer import train_tokenizer
    import pydoc_data.topics

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = train_tokenizer(CORPUS + list(pydoc_data.topics.topics.values())[:40], vocab_size=384)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=0.15,  # peaked logits: greedy ties would make equality tests flaky
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
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
