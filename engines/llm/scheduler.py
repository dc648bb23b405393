"""The scheduler: which requests run, and what each step computes. It never touches a tensor.

Contract (vLLM v1's `Scheduler.schedule() -> SchedulerOutput`): each call to
`schedule(now)` plans exactly one forward step of the model runner and returns a
`StepPlan`; the runner executes the plan and returns sampled tokens; the engine applies
them (output handling) and tells the scheduler which requests finished (`finish`). The
scheduler keeps three sets:

* waiting: queued, bounded (`max_waiting`), served by priority, each request gaining +1
  per `priority_aging_s` waited, so low priorities are delayed, never starved; FIFO among
  equals; the best one waits for room and smaller ones do not jump it (no starvation);
* prefilling: admitted, prompt not yet fully in the KV cache;
* running: prompt cached, one token decoded per step.

Every step: (a) drop cancelled or expired requests from all three sets (they never reach
the runner); (b) every running row decodes one token; (c) what is left of the step's token
budget (`max_step_tokens` minus the decode rows, at most `prefill_chunk_tokens`; with no
row decoding, or at most `burst_stall_fraction` of `max_running`, few or none wait on the
step and it may prefill `prefill_chunk_tokens`) goes to
prompt tokens: first prompts already being prefilled, then newly admitted ones, while
`max_running` rows and the reserved-token budget (`max_batch_tokens`, prompt +
max_new_tokens per request, reserved on admission so that a running request can always
finish and nothing is ever preempted) allow. A prompt longer than what is left is
prefilled in chunks over several steps. So a burst of arrivals delays running streams by
at most one budgeted step each step, and is prefilled over as many steps as it needs; a
burst into a quiet engine is prefilled in one large step that stalls the few streams
already running once, instead of every stream that joins it over many budgeted steps.

Overlapped steps (`process.OverlappedProcessRunner`): the engine may plan step k+1 and
send it before it applies step k's tokens. A plan is then made one step behind the
outputs: requests that ended in step k on EOS or a stop string are decoded once more for
nobody (the engine drops that token), and a request's `planned` count keeps a
length-limited one from being decoded past `max_new_tokens`.

Not thread-safe: the engine serializes calls under its lock (arrivals on the event loop,
`schedule` on the worker). `cancelled` may be set from any thread; it is acted on at the
next `schedule`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from engines.llm.config import SchedulerConfig
from engines.llm.prefix_cache import PrefixIndex
from engines.llm.types import FinishReason, GenerationRequest


class Status(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    RUNNING = "running"
    FINISHED = "finished"


H = TypeVar("H")


@dataclass(eq=False)
class Sequence(Generic[H]):
    """One request as the scheduler and the runner see it (plain data, no tensors).
    `handle` is whoever queued it's record of the request (the engine's
    `output.RequestOutput`: `Sequence[RequestOutput]`); scheduler and runner never read it."""

    request: GenerationRequest
    prompt_ids: list[int]
    slot: int = 0  # LoRA bank slot (0 = base model), for the runner
    t_enqueue: float = field(default_factory=time.monotonic)
    order: int = 0  # arrival order, FIFO tie-break
    status: Status = Status.WAITING
    t_admit: float | None = None
    prefilled: int = 0  # prompt tokens scheduled into the KV cache so far (from `cached` on)
    # Prefix caching (`prefix_cache.py`): the key its prompt is cached under (the adapter's
    # name and load generation, "" for the base model; None = not cached), its full blocks'
    # hashes (set on admission) and the leading prompt tokens found cached then, which the
    # runner copies into its slot instead of computing them.
    cache_key: str | None = None
    block_hashes: tuple[bytes, ...] = ()
    cached: int = 0
    planned: int = 0  # tokens the plans so far sample for it (its prompt's last chunk, then one per decode)
    cancelled: bool = False  # set from any thread; acted on at the next schedule()
    handle: H = None  # type: ignore[assignment]  # None only where nobody reads it (tests, the model process)

    @property
    def reserve(self) -> int:
        return len(self.prompt_ids) + self.request.sampling.max_new_tokens

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED

    def expired(self, now: float) -> bool:
        return self.request.deadline is not None and now >= self.request.deadline


@dataclass(frozen=True)
class PrefillChunk:
    seq: Sequence
    start: int  # first prompt position of this chunk
    length: int

    @property
    def whole(self) -> bool:
        """The whole prompt in one chunk (may be batched with other whole prompts)."""
        return self.start == 0 and self.length == len(self.seq.prompt_ids)

    @property
    def last(self) -> bool:
        """This chunk completes the prompt: the runner samples the first token."""
        return self.start + self.length == len(self.seq.prompt_ids)


@dataclass
class StepPlan:
    """What one forward step computes. `dropped` are already out of the scheduler (the
    runner frees their state, the engine ends their streams); `decode` is every running
    row, in admission order; `prefill` the prompt chunks, oldest admission first."""

    dropped: list[tuple[Sequence, FinishReason]] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    # Prefix-cache blocks to forget, after this step's hits were copied and its prompts saved.
    evicted: list[bytes] = field(default_factory=list)

    @property
    def prefill_tokens(self) -> int:
        return sum(c.length for c in self.prefill)

    @property
    def num_tokens(self) -> int:
        return self.prefill_tokens + len(self.decode)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


class WaitingQueue:
    """Bounded; `best(now)` is the highest aged priority (FIFO among equals). Admission
    policy lives in `best` alone, so another policy (per-tenant fairness) replaces it."""

    def __init__(self, capacity: int, aging_s: float) -> None:
        self.capacity = capacity
        self.aging_s = aging_s
        self.items: list[Sequence] = []
        self._admits = 0
        self._last_admit: dict[str, int] = {}  # tenant -> admission count when last admitted

    def __len__(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) >= self.capacity

    def push(self, seq: Sequence) -> None:
        self.items.append(seq)

    def remove(self, seq: Sequence) -> None:
        self.items.remove(seq)

    def best(self, now: float) -> Sequence | None:
        """Fair across tenants, then by priority: the tenant admitted least recently goes
        first (so one tenant's flood holds another's request back by one admission at
        most); within it, the highest aged priority, FIFO among equals. With one tenant
        (no api keys) this is plain priority order."""
        if not self.items:
            return None
        first: dict[str, int] = {}  # tenant -> arrival order of its oldest waiting request
        for s in self.items:
            t = s.request.tenant
            if t not in first or s.order < first[t]:
                first[t] = s.order
        tenant = min(first, key=lambda t: (self._last_admit.get(t, -1), first[t]))
        return max((s for s in self.items if s.request.tenant == tenant),
                   key=lambda s: (s.request.priority + (now - s.t_enqueue) / self.aging_s, -s.order))

    def admit(self, seq: Sequence) -> None:
        """`seq` (from `best`) leaves the queue for a batch slot."""
        self.items.remove(seq)
        self._admits += 1
        self._last_admit[seq.request.tenant] = self._admits


class Scheduler:
    def __init__(self, config: SchedulerConfig, prefix: PrefixIndex | None = None) -> None:
        self.config = config
        self.prefix = prefix  # None: no prefix caching
        self.waiting = WaitingQueue(config.max_waiting, config.priority_aging_s)
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self.reserved = 0  # prompt + max_new_tokens of every admitted request
        self._admitted = 0  # len(prefilling) + len(running), changed in one place at a time

    # ---- queries (any thread) ------------------------------------------------------------

    @property
    def running_count(self) -> int:
        """Admitted and not finished (prefilling or decoding); a counter, so a reader on
        another thread never sees a request in neither set while it moves between them."""
        return self._admitted

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(len(self.waiting) or self.prefilling or self.running)

    # ---- changes (serialized by the caller) ---------------------------------------------

    def add(self, seq: Sequence) -> bool:
        """Queue `seq`; False (and not queued) when the waiting queue is full."""
        if self.waiting.full():
            return False
        seq.status = Status.WAITING
        self.waiting.push(seq)
        return True

    def finish(self, seq: Sequence) -> None:
        """`seq` ended (EOS, length, stop string) after the step that served it."""
        if seq.status is Status.FINISHED:
            return
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        else:
            (self.running if seq.status is Status.RUNNING else self.prefilling).remove(seq)
            self._release(seq)
        seq.status = Status.FINISHED

    def abort_all(self) -> list[Sequence]:
        """A step failed: every admitted request shared its forward; end them all here and
        return them (waiting requests stay queued)."""
        victims = self.prefilling + self.running
        for seq in victims:
            self._release(seq)
            seq.status = Status.FINISHED
        self.prefilling, self.running = [], []
        self.forget_cache()
        return victims

    def forget_cache(self) -> None:
        """The runner was reset (its prefix cache emptied): forget what the index held."""
        if self.prefix is not None:
            self.prefix.clear()

    def schedule(self, now: float) -> StepPlan:
        plan = StepPlan()
        self._drop(now, plan)
        # A request whose plans already sample all its max_new_tokens is not decoded again:
        # with an overlapping runner (see below) it is still running here, its last token
        # planned but not yet applied; it leaves when that token is.
        plan.decode = [s for s in self.running if s.planned < s.request.sampling.max_new_tokens]
        for seq in plan.decode:
            seq.planned += 1
        cfg = self.config
        if len(plan.decode) <= cfg.burst_stall_fraction * cfg.max_running:
            budget = cfg.prefill_chunk_tokens  # no stream, or a few, wait on this step: prefill all a step may
        else:  # many streams wait for this step: bound it
            budget = max(1, min(cfg.prefill_chunk_tokens, cfg.step_tokens - len(plan.decode)))
        for seq in self.prefilling:  # prompts already under way, oldest first
            if budget <= 0:
                break
            budget -= self._chunk(seq, budget, plan)
        while budget > 0 and self._admitted < cfg.max_running:
            seq = self.waiting.best(now)
            if seq is None or self.reserved + seq.reserve > cfg.max_batch_tokens:
                break  # the best one waits for room; smaller ones do not jump it
            self.waiting.admit(seq)
            self.reserved += seq.reserve
            self._admitted += 1
            seq.status, seq.t_admit = Status.PREFILLING, now
            if self.prefix is not None and seq.cache_key is not None:
                seq.block_hashes = self.prefix.hashes(seq.cache_key, seq.prompt_ids)
                seq.cached = seq.prefilled = self.prefix.match(seq.block_hashes, len(seq.prompt_ids))
            self.prefilling.append(seq)
            plan.admitted.append(seq)
            budget -= self._chunk(seq, budget, plan)
        # Prompts completed by this step decode from the next one on.
        done = [c.seq for c in plan.prefill if c.last]
        for seq in done:
            self.prefilling.remove(seq)
            seq.status, seq.planned = Status.RUNNING, 1
            self.running.append(seq)
            if self.prefix is not None and seq.cache_key is not None:
                self.prefix.insert(seq.cache_key, seq.block_hashes)  # the runner saves them this step
        if self.prefix is not None and plan:
            plan.evicted = self.prefix.take_evicted()
        return plan

    def _chunk(self, seq: Sequence, budget: int, plan: StepPlan) -> int:
        n = min(budget, len(seq.prompt_ids) - seq.prefilled)
        plan.prefill.append(PrefillChunk(seq, seq.prefilled, n))
        seq.prefilled += n
        return n

    def _drop(self, now: float, plan: StepPlan) -> None:
        for group in (self.waiting.items, self.prefilling, self.running):
            for seq in [s for s in group if s.cancelled or s.expired(now)]:
                group.remove(seq)
                if seq.status is not Status.WAITING:
                    self._release(seq)
                seq.status = Status.FINISHED
                plan.dropped.append((seq, FinishReason.CANCELLED if seq.cancelled else FinishReason.DEADLINE))

    def _release(self, seq: Sequence) -> None:
        self.reserved -= seq.reserve
        self._admitted -= 1
