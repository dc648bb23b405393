"""The model side of the LLM engine and the contract the engine drives it by.

The engine holds one `StepRunner` and never asks which kind it is. `RUNNERS` maps
`llm.runner` to a loader, called once in `LLMEngine.load`; each returns a `ModelSide`: the
runner, the adapter bank the registry writes to, the tokenizer and the `ModelFacts` the
engine needs to validate requests and describe the model.

* `"thread"`: `build_core` here; the runner (`runner.ModelRunner`) computes on the
  engine's worker thread;
* `"process"`: the same `build_core` in a child process (`process.py`); the runner sends
  each step down a pipe (`ProcessRunner`, or `OverlappedProcessRunner`, which applies a
  step's tokens while the next one computes).

Inside either, the KV layout is a class too (`layouts.LAYOUTS`), chosen by `build_core`.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from engines.llm.config import LLMConfig
from engines.llm.runner import ModelRunner, StepResult
from engines.llm.scheduler import Sequence, StepPlan


class StepRunner(Protocol):
    """Executes the scheduler's plans on the model; never calls back up. One step is
    `submit(plan)` then `collect()`, from the engine's worker thread, under its model lock;
    `free` and `reset` come from the same thread (or with the worker stopped)."""

    def submit(self, plan: StepPlan) -> StepResult | None:
        """Start computing `plan` (an empty plan computes nothing; its dropped requests are
        freed all the same). Returns the result of an earlier step held back by `collect`,
        for the engine to apply while this one computes, else None."""
        ...

    def collect(self) -> StepResult | None:
        """Wait for the submitted step and return its tokens to apply now; or None when the
        runner holds them back, to return them from the next `submit` (overlapped steps: the
        engine then plans the next step one step behind the outputs)."""
        ...

    def free(self, seqs: list[Sequence]) -> None:
        """Forget finished requests (their cache rows and sampling state), soon: the cache
        gauge and slots must not wait for a step that may never come."""
        ...

    def reset(self) -> None:
        """After a failed step: forget every request, and any result held back."""
        ...

    kv_tokens: int  # token positions the KV cache holds (the `kv_cache_tokens` gauge)


class AdapterBank(Protocol):
    """The part of `lora.LoRABank` the adapter registry writes to, wherever the model is."""

    def check(self, weights: Any) -> None: ...

    @property
    def free_slots(self) -> int: ...

    def add(self, weights: Any) -> int: ...

    def remove(self, slot: int) -> None: ...


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
class ModelSide:
    """What a runner kind's loader hands the engine."""

    runner: StepRunner
    bank: AdapterBank
    tokenizer: Any
    model_dir: Path
    facts: ModelFacts
    close: Callable[[], None]  # ends the model side (a child process); idempotent
    model: Any = None  # the HF model and its LightningModule, where they live in this process
    module: Any = None


@dataclass
class ModelCore:
    model: Any
    module: Any  # the model as served: the LightningModule (module.CausalLMModule) training fine-tunes
    tokenizer: Any
    model_dir: Path
    runner: ModelRunner
    bank: Any  # lora.LoRABank
    facts: ModelFacts


def build_core(config: LLMConfig, progress: Callable[[str], None]) -> ModelCore:
    """Load the model (local files only), wrap it for per-row LoRA and build its runner with
    the configured KV layout (warming a compiled decode step here, before ready)."""
    from engines.llm.constraints import Grammars
    from engines.llm.layouts import LAYOUTS
    from engines.llm.loading import input_device, load_model_and_tokenizer
    from engines.llm.lora import LoRABank
    from engines.llm.module import CausalLMModule
    from engines.llm.runner import StepModel

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
    # Its own tokenizer copy: llguidance reads it on the worker thread while the engine's
    # copy encodes on the event loop (a Rust tokenizer shared across threads can fail).
    grammars = Grammars(copy.deepcopy(tok), eos_ids, config.constraints)
    step_model = StepModel(module, device, bank.ctx, grammars)
    layout = LAYOUTS[(config.kv_cache, config.compile)](step_model, model, config, max_positions, progress)
    return ModelCore(model, module, tok, Path(model_dir), ModelRunner(layout, step_model), bank, facts)


def load_in_thread(config: LLMConfig, progress: Callable[[str], None]) -> ModelSide:
    """`llm.runner = "thread"`: the model in the daemon's process, stepped on the worker thread."""
    core = build_core(config, progress)
    return ModelSide(core.runner, core.bank, core.tokenizer, core.model_dir, core.facts, close=lambda: None,
                     model=core.model, module=core.module)


def load_in_process(config: LLMConfig, progress: Callable[[str], None]) -> ModelSide:
    """`llm.runner = "process"`: the model in a child process (`process.py`)."""
    from engines.llm.process import load_in_process as load

    return load(config, progress)


Loader = Callable[[LLMConfig, Callable[[str], None]], ModelSide]

RUNNERS: dict[str, Loader] = {"thread": load_in_thread, "process": load_in_process}
