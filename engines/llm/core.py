"""The model side of the LLM engine: the model, its LoRA bank and the step runner.

`build_core` makes them from an `LLMConfig`. They live either on the engine's worker thread
(`llm.runner = "thread"`) or in a process of their own (`"process"`, see `process.py`);
the engine sees the same three things either way: a runner (`execute`, `free`, `reset`,
`kv_tokens`), a bank (what the adapter registry writes: `check`, `free_slots`, `add`,
`remove`) and the `ModelFacts` it needs to validate requests and describe the model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engines.llm.config import LLMConfig
from engines.llm.lora import LoRABank
from engines.llm.module import CausalLMModule
from engines.llm.runner import ModelRunner


@dataclass(frozen=True)
class ModelFacts:
    """What the engine's front half needs to know about the model (plain data: it crosses
    the process boundary)."""

    eos: frozenset[int]
    max_positions: int  # longest prompt + completion the model takes
    parameters: int
    memory_bytes: int  # weights and buffers
    device: str  # where input ids go, e.g. "cpu" or "cuda:0"


@dataclass
class ModelCore:
    model: Any
    module: CausalLMModule  # the model as served: the LightningModule training fine-tunes
    tokenizer: Any
    model_dir: Path
    runner: ModelRunner
    bank: LoRABank
    facts: ModelFacts


def build_core(config: LLMConfig, progress: Callable[[str], None]) -> ModelCore:
    """Load the model (local files only), wrap it for per-row LoRA and build its runner;
    with `compile = "decode"` the decode step is compiled and warmed here, before ready."""
    from engines.llm.loading import input_device, load_model_and_tokenizer

    model, tok, placement, model_dir = load_model_and_tokenizer(config, progress)
    device = input_device(model)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = tok.eos_token_id if eos is None else eos
    eos_ids = frozenset(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    max_positions = int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)
    facts = ModelFacts(
        eos=eos_ids, max_positions=max_positions, parameters=sum(p.numel() for p in model.parameters()),
        memory_bytes=sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers())),
        device=str(device))
    bank = LoRABank(model, config.adapters.max_loaded, placement.dtype)
    # The served model is the same LightningModule class that training fine-tunes; its
    # forward is the HF model's, so the step pays one extra Python call and no more.
    module = CausalLMModule(model)
    if config.kv_cache == "static":
        from engines.llm import slots

        slots.register()
        model.config._attn_implementation = slots.ATTENTION
        sched = config.scheduler
        runner = ModelRunner(
            module, device, bank.ctx, kv_slots=sched.max_running, hf_config=model.config,
            dtype=model.get_input_embeddings().weight.dtype,
            decode_graph="compiled" if config.compile == "decode" else "off",
            max_len=min(max_positions, sched.max_prompt_tokens + sched.max_new_tokens_limit))
    else:
        runner = ModelRunner(module, device, bank.ctx)
    if config.compile == "decode":
        progress(f"compiling the decode step for batch sizes {runner.buckets} (torch.compile)")
        runner.warm_up()
    return ModelCore(model, module, tok, Path(model_dir), runner, bank, facts)
