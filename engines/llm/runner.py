"""The model runner: executes one `StepPlan` on the model and returns what was sampled.

It owns everything that is a tensor, in two parts:

* `StepModel`: the model's forward (one call site, so a wrapper around the served model, a
  LightningModule or a compiled graph, changes one line), the LoRA context (which bank slot
  each row reads) and per-request sampling state (generators, repetition-penalty history);
* a `KVLayout`: how the running requests' KV cache is laid out and how a step's decode rows
  and prompt chunks become forward passes (`layouts.py`: the slot layout, its static-shape
  decode variant, the padded layout).

It never calls back up: the scheduler decides what runs, the engine applies the result
(`output.py`) and tells the runner which requests to forget (`free`).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from engines.llm.sampling import make_generator, sample_batch
from engines.llm.scheduler import Sequence, StepPlan


@dataclass
class Sampled:
    seq: Sequence
    token: int
    logprob: float | None
    first: bool  # the first token of the request (sampled after its prefill)


@dataclass
class StepResult:
    sampled: list[Sampled] = field(default_factory=list)  # decode rows first, then completed prompts
    mask_s: float = 0.0  # time spent on constrained rows' masks (compute + advance) this step


class KVLayout(Protocol):
    """How the running requests' KV cache is laid out, and how a step uses it. One class per
    layout (`layouts.py`), chosen once at start-up (`layouts.LAYOUTS`); a new layout (paged,
    prefix-shared) is a new class, and nothing above the runner changes."""

    def execute(self, plan: StepPlan) -> StepResult:
        """Run `plan`'s decode rows (one token each, rows the plan no longer lists are
        forgotten) and prompt chunks through the model (`StepModel.forward`, as many
        forwards as the layout needs), caching their K/V; return every token sampled: one
        per decode row, then one per prompt the step completes (`first=True`)."""
        ...

    def free(self, seqs: list[Sequence]) -> None:
        """Forget these requests' cache rows (finished, dropped or cancelled)."""
        ...

    def clear(self) -> None:
        """Forget every request (after a failed step)."""
        ...

    @property
    def kv_tokens(self) -> int:
        """Token positions the cache holds for live requests (the `kv_cache_tokens` gauge)."""
        ...


@dataclass(eq=False)
class _RowState:
    generator: torch.Generator | None
    seen: torch.Tensor | None  # prompt + generated ids, only with a repetition penalty
    constraint: Any = None  # the request's structured-output constraint (types.Constraint), if any
    matcher: Any = None  # its llguidance matcher (constraints.Grammars), built with the first mask
    pending: Future | None = None  # its next mask, computing while the forward runs (`prefetch`)


class StepModel:
    """The served model as the layouts use it: `forward` (the one place the model is
    called) and `sample` (per-row sampling state kept per request until `forget`).
    Constrained rows (structured output) are masked here, where sampling happens: their
    matcher gives the allowed tokens, and advances with the token sampled."""

    def __init__(self, model: Any, device: torch.device, lora_ctx: Any = None, grammars: Any = None) -> None:
        self.model = model
        self.device = device
        self._lora_ctx = lora_ctx  # LoRABank.ctx: `.index` selects each row's adapter slot
        self._rows: dict[Sequence, _RowState] = {}
        self.grammars = grammars  # constraints.Grammars over this model's tokenizer; None = refuse
        self.mask_s = 0.0  # mask time the step waited for, since the runner last reset it
        self._masker: ThreadPoolExecutor | None = None  # made on the first constrained row

    def forward(self, slots: list[int], call: Callable[..., Any] | None = None, **inputs: Any) -> torch.Tensor:
        """One forward pass (`call`, default the model) with row i reading LoRA bank slot
        `slots[i]`; returns the last position's logits (B, V), or with a boolean
        `logits_to_keep` (B, 1) the kept rows' logits (K, V), in row order."""
        if self._lora_ctx is not None:
            self._lora_ctx.index = torch.tensor(slots, device=self.device) if any(slots) else None
            keep = inputs.get("logits_to_keep")
            self._lora_ctx.kept = keep.view(-1) if isinstance(keep, torch.Tensor) else None
        logits = (self.model if call is None else call)(**inputs).logits
        return logits if logits.dim() == 2 else logits[:, -1]

    def prefetch(self, seqs: list[Sequence]) -> None:
        """Start the next masks of these rows' constrained requests on a helper thread, to
        compute while the forward runs (llguidance releases the GIL; a row's next mask
        depends only on tokens already sampled, as in vLLM and SGLang). A new request's
        grammar is compiled there too (a cache miss on this side), beside its prefill
        rather than inside the step. `sample` waits for what it needs; a mask not used
        this step (a prompt still prefilling) stays valid."""
        for seq in seqs:
            if seq.request.sampling.constraint is None:
                continue
            st = self._state(seq)
            if st.pending is None:
                if self._masker is None:
                    self._masker = ThreadPoolExecutor(1, thread_name_prefix="llm-mask")
                st.pending = self._masker.submit(self._next_mask, st)

    def _next_mask(self, st: _RowState) -> torch.Tensor:
        if st.matcher is None:
            st.matcher = self.grammars.matcher(st.constraint)
        return self.grammars.allowed(st.matcher)

    def _mask(self, st: _RowState) -> torch.Tensor:
        pending, st.pending = st.pending, None
        return pending.result() if pending is not None else self._next_mask(st)

    def sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[tuple[int, float | None]]:
        """One token per row of `logits` (B, V) for `seqs` (B), under each request's sampling."""
        states = [self._state(s) for s in seqs]
        constrained = any(st.constraint is not None for st in states)
        t0 = time.perf_counter() if constrained else 0.0
        masks = [None if st.constraint is None else self._mask(st) for st in states]
        if constrained:
            self.mask_s += time.perf_counter() - t0
        picks = sample_batch(logits, [(s.request.sampling, st.seen, st.generator, mask)
                                      for s, st, mask in zip(seqs, states, masks)])
        t0 = time.perf_counter() if constrained else 0.0
        for st, (token, _) in zip(states, picks):
            if st.seen is not None:
                st.seen = torch.cat([st.seen, torch.tensor([token])])
            if st.constraint is not None:
                self.grammars.advance(st.matcher, token)
        if constrained:
            self.mask_s += time.perf_counter() - t0
        return picks

    def forget(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self._rows.pop(seq, None)

    def clear(self) -> None:
        self._rows.clear()

    def _state(self, seq: Sequence) -> _RowState:
        state = self._rows.get(seq)
        if state is None:
            params = seq.request.sampling
            seen = torch.tensor(seq.prompt_ids, dtype=torch.long) if params.repetition_penalty != 1.0 else None
            state = self._rows[seq] = _RowState(make_generator(params), seen, params.constraint)
        return state


class ModelRunner:
    """The runner on the calling thread (`llm.runner = "thread"`, and inside the model
    process): a `StepModel` and a `KVLayout`. Implements `core.StepRunner`: the forward
    runs in `collect`, on the caller's thread, so nothing overlaps it and every step's
    result is handed back at once."""

    def __init__(self, layout: KVLayout, model: StepModel) -> None:
        self.layout = layout
        self.model = model
        self._submitted: StepPlan | None = None

    def submit(self, plan: StepPlan) -> StepResult | None:
        if not plan:
            self.free([seq for seq, _ in plan.dropped])
        else:
            self._submitted = plan
        return None

    def collect(self) -> StepResult | None:
        plan, self._submitted = self._submitted, None
        return self.execute(plan)

    def execute(self, plan: StepPlan) -> StepResult:
        """Free the plan's dropped requests, then run it (`KVLayout.execute`)."""
        self.free([seq for seq, _ in plan.dropped])
        self.model.mask_s = 0.0
        self.model.prefetch(plan.decode + [c.seq for c in plan.prefill])
        result = self.layout.execute(plan)
        result.mask_s = self.model.mask_s
        return result

    def free(self, seqs: list[Sequence]) -> None:
        """Forget finished or dropped requests: their cache rows and sampling state."""
        if seqs:
            self.model.forget(seqs)
            self.layout.free(seqs)

    def reset(self) -> None:
        """After a failed step: drop all state (the scheduler aborted every admitted request)."""
        self._submitted = None
        self.model.clear()
        self.layout.clear()

    @property
    def kv_tokens(self) -> int:
        return self.layout.kv_tokens
