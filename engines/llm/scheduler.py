"""Per-request state and the waiting queue's admission policy.

Why our own iteration-level scheduler rather than transformers' continuous batching
manager: that manager has no per-request LoRA adapter (a PeftModel serves only its active
adapter), its `cancel_request` never delivers a final event (the stream would hang), and
it sizes its paged cache from a share of host RAM. Our scheduler is small and explicit:

* every step = (a) drop cancelled / expired requests, (b) admit waiting requests while
  `max_running` and the token budget allow, (c) prefill up to `prefill_chunk_tokens` prompt
  tokens: prompts that fit whole go through one left-padded batched forward, a longer one
  is prefilled alone in chunks, so it never stalls running streams by more than a chunk,
  (d) one decode forward for the whole running batch (rows with different adapters too);
* rows join the batch the step their prompt is prefilled and leave the step they finish,
  are cancelled or expire (`batch.py` re-packs the KV cache);
* the token budget reserves `prompt + max_new_tokens` per request on admission, so a
  running request can always finish and nothing is ever preempted;
* greedy output equals solo `generate()` token for token (fp32): each row keeps its own
  positions and a padding mask, so batching changes only floating-point rounding;
* waiting requests are served by priority, each gaining +1 per `priority_aging_s` waited,
  so low priorities are delayed, never starved; FIFO among equals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.llm.types import GenerationRequest


@dataclass(eq=False)
class Sequence:
    """One request's mutable state; owned by the worker thread once enqueued."""

    request: GenerationRequest
    prompt_ids: list[int]
    stream: Any  # ResultStream[TokenChunk | FinalOutput]
    adapter: Any  # engine's _Adapter or None
    decoder: Any  # IncrementalDecoder
    generator: torch.Generator | None
    span: Any  # the request's OpenTelemetry span
    queue_span: Any
    t_enqueue: float = field(default_factory=time.monotonic)
    order: int = 0  # arrival order, FIFO tie-break
    t_admit: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    prefill_span: Any = None
    prefill_cache: Any = None  # DynamicCache while prefilling
    prefilled: int = 0  # prompt tokens already in prefill_cache
    generated: list[int] = field(default_factory=list)
    seen: torch.Tensor | None = None  # prompt + generated ids (only with a repetition penalty)
    cancelled: bool = False  # set from any thread; acted on at the next step
    done: bool = False

    @property
    def reserve(self) -> int:
        return len(self.prompt_ids) + self.request.sampling.max_new_tokens

    @property
    def slot(self) -> int:
        return self.adapter.slot if self.adapter is not None else 0

    def expired(self, now: float) -> bool:
        return self.request.deadline is not None and now >= self.request.deadline


class WaitingQueue:
    """Bounded; `pop_best` picks the highest aged priority (FIFO among equals)."""

    def __init__(self, capacity: int, aging_s: float) -> None:
        self.capacity = capacity
        self.aging_s = aging_s
        self.items: list[Sequence] = []

    def __len__(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def push(self, seq: Sequence) -> None:
        self.items.append(seq)

    def remove(self, seq: Sequence) -> None:
        self.items.remove(seq)

    def best(self, now: float) -> Sequence | None:
        if not self.items:
            return None
        return max(self.items, key=lambda s: (s.request.priority + (now - s.t_enqueue) / self.aging_s, -s.order))
