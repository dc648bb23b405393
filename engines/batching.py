"""A generic dynamic batcher (after Ray Serve's `serve.batch`): many callers, one model step.

Contract, checked here rather than trusted to handlers:
- exactly one result per request: `handler(items)` returns one entry per item, either a
  result or an exception instance for that item alone; a wrong count fails the batch;
- a failing batch (the handler raises) fails every request in it, never the daemon;
- cancelled and expired requests are dropped before the step runs (an expired one gets
  DeadlineExceeded), and a caller whose deadline passes while queued gets it at once;
- batches form on events: an arrival that fills a batch dispatches it, otherwise one timer
  (`loop.call_later`) fires when the oldest request has waited `max_queue_delay_s`, and a
  finished batch dispatches the next. Nothing polls;
- `max_failed_batches` failing batches in a row (or a step that kills the thread) are a
  fault, not bad luck: `wait_faulted()` returns, and the owner's `restart()` fails what the
  batcher held with Unavailable and starts a fresh thread (`engines.worker.SupervisedWorker`).

The queue and timers live on the event loop; the handler runs on one `StepWorker` thread so
a model step never blocks the loop. Each batch gets an OpenTelemetry span linked to the
spans of the requests it carries.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

from opentelemetry import trace

from engines.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from engines.worker import SupervisedWorker

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")

_tracer = trace.get_tracer("galactic.batching")


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.002
    max_queue: int = 1024
    max_batch_cost: int | None = None  # e.g. (target, site) rows per step; None: count only
    # Queued cost at which a batch leaves at once instead of waiting `max_queue_delay_s` for
    # company (Triton's preferred batch size, in cost units): a request that brings this much
    # work amortises a step's fixed cost on its own, so waiting would only add latency.
    preferred_batch_cost: int | None = None
    max_failed_batches: int = 0  # failing batches in a row that make a fault; 0 = never


@dataclass(eq=False)
class _Pending:
    item: Any
    future: asyncio.Future
    deadline: float | None  # absolute time.monotonic()
    cost: int
    enqueued: float
    link: trace.SpanContext | None = None

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass
class _Stats:
    requests: int = 0
    batches: int = 0
    batched_items: int = 0
    rejected_full: int = 0
    expired: int = 0
    failed_batches: int = 0
    step_seconds: float = 0.0


class DynamicBatcher(Generic[I, O]):
    def __init__(self, name: str, handler: Callable[[list[I]], Sequence[O | BaseException]],
                 limits: BatchLimits, cost: Callable[[I], int] = lambda _item: 1) -> None:
        self.name = name
        self._handler = handler
        self._limits = limits
        self._cost = cost
        self._queue: collections.deque[_Pending] = collections.deque()  # loop thread only
        self._ready: collections.deque[list[_Pending]] = collections.deque()  # loop -> worker
        self._busy = False  # a batch is with the worker (one at a time: one model)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._idle = asyncio.Event()
        self._stats = _Stats()
        self._lock = threading.Lock()  # guards _stats, read by stats() from any thread
        self._running: list[_Pending] = []  # the batch the worker thread took last
        self._worker = SupervisedWorker(f"{name}-batcher", self._step, lambda: bool(self._ready),
                                        max_failures=limits.max_failed_batches)

    # -- lifecycle (event loop) ------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker.start(self._loop)
        self._accepting = True

    async def wait_faulted(self) -> str:
        """Return (why) once the worker thread died or gave up after failing batches."""
        return await self._worker.wait_faulted()

    async def restart(self) -> None:
        """After a fault: fail every request held (queued, dispatched, in the dead step)
        with Unavailable and start a fresh worker thread. Submissions stay open."""
        await self._worker.replace(lambda: self._fail_held(Unavailable(f"{self.name} restarted its worker; retry")))

    def _fail_held(self, error: Exception) -> None:
        """On the loop, with no worker thread running: every held request fails."""
        held = [*self._running, *(p for batch in self._ready for p in batch), *self._queue]
        self._running, self._busy = [], False
        self._ready.clear()
        self._queue.clear()
        self._cancel_timer()
        for p in held:
            if not p.future.done():
                p.future.set_exception(error)
        self._idle.set()

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, give queued and running requests `grace_s`, fail the rest."""
        self._accepting = False
        self._maybe_dispatch()  # stopping: no more waiting for company
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(grace_s, 0.0))
        except TimeoutError:
            pass
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(Unavailable(f"{self.name} is shutting down"))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._worker.stop, max(grace_s, 0.1))
        # What a dead worker held would wait forever. Scheduled, not called: a batch the
        # worker finished before it stopped has its completion queued first and keeps it.
        loop.call_soon(self._fail_held, Unavailable(f"{self.name} is shutting down"))

    # -- submission (event loop) -----------------------------------------------------------
    async def submit(self, item: I, deadline: float | None = None) -> O:
        """Queue `item`; return its result from the batch it joins.

        `deadline` is an absolute `time.monotonic()`; raises ResourceExhausted when the queue
        is full, DeadlineExceeded when the deadline passes first, Unavailable when stopping.
        Cancelling the caller drops the item before its step.
        """
        if not self._accepting or self._loop is None:
            raise Unavailable(f"{self.name} is not accepting requests")
        if len(self._queue) >= self._limits.max_queue:
            with self._lock:
                self._stats.rejected_full += 1
            raise ResourceExhausted(f"{self.name} queue is full ({self._limits.max_queue} pending)")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise DeadlineExceeded("deadline passed before the request was queued")
        span = trace.get_current_span().get_span_context()
        p = _Pending(item, self._loop.create_future(), deadline, max(int(self._cost(item)), 1), now,
                     span if span.is_valid else None)
        self._queue.append(p)
        self._idle.clear()
        with self._lock:
            self._stats.requests += 1
        self._maybe_dispatch()
        if deadline is None:
            return await p.future
        try:
            # wait_for cancels the future on timeout, so the worker drops it unrun.
            return await asyncio.wait_for(p.future, timeout=deadline - now)
        except TimeoutError:
            with self._lock:
                self._stats.expired += 1
            raise DeadlineExceeded("deadline passed while queued or running") from None

    def _maybe_dispatch(self) -> None:
        if self._busy:
            return  # the finishing batch calls us again
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()  # cancelled or timed out while waiting
        if not self._queue:
            self._cancel_timer()
            if not self._busy:
                self._idle.set()
            return
        lim = self._limits
        waited = time.monotonic() - self._queue[0].enqueued
        cost = sum(p.cost for p in self._queue) if lim.max_batch_cost or lim.preferred_batch_cost else 0
        full = len(self._queue) >= lim.max_batch_size or (
            lim.max_batch_cost is not None and cost >= lim.max_batch_cost) or (
            lim.preferred_batch_cost is not None and cost >= lim.preferred_batch_cost)
        if full or waited >= lim.max_queue_delay_s or not self._accepting:
            self._cancel_timer()
            self._dispatch()
        elif self._timer is None:
            self._timer = self._loop.call_later(lim.max_queue_delay_s - waited, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_dispatch()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _dispatch(self) -> None:
        lim = self._limits
        batch: list[_Pending] = []
        cost = 0
        now = time.monotonic()
        while self._queue and len(batch) < lim.max_batch_size:
            p = self._queue[0]
            if p.future.done():
                self._queue.popleft()
                continue
            if p.expired(now):
                self._queue.popleft()
                p.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            if batch and lim.max_batch_cost is not None and cost + p.cost > lim.max_batch_cost:
                break
            self._queue.popleft()
            batch.append(p)
            cost += p.cost
        if not batch:
            self._maybe_dispatch()
            return
        self._busy = True
        self._ready.append(batch)
        self._worker.notify()

    # -- the step (worker thread) ----------------------------------------------------------
    def _step(self) -> None:
        batch = self._ready.popleft()
        self._running = batch
        now = time.monotonic()
        # Drop what was cancelled or expired between dispatch and now: never run dead work.
        live = [p for p in batch if not p.future.done() and not p.expired(now)]
        results: Sequence[Any] | None = None
        error: BaseException | None = None
        t0 = time.perf_counter()
        if live:
            links = [trace.Link(p.link) for p in live if p.link is not None]
            with _tracer.start_as_current_span(f"{self.name}.batch", links=links,
                                               attributes={"batch.size": len(live),
                                                           "batch.cost": sum(p.cost for p in live)}):
                try:
                    results = self._handler([p.item for p in live])
                    if len(results) != len(live):
                        raise RuntimeError(f"{self.name}: handler returned {len(results)} results "
                                           f"for {len(live)} requests")
                except Exception as exc:  # a failing batch fails its requests, not the daemon
                    error = exc
        with self._lock:
            self._stats.batches += 1 if live else 0
            self._stats.batched_items += len(live)
            self._stats.failed_batches += 1 if error is not None else 0
            self._stats.step_seconds += time.perf_counter() - t0
        self._loop.call_soon_threadsafe(self._complete, batch, live, results, error)
        if error is not None:  # counted by the worker: max_failed_batches in a row are a fault
            raise RuntimeError(f"{self.name}: batch of {len(live)} failed: {error!r}")

    # -- completion (event loop) -----------------------------------------------------------
    def _complete(self, batch, live, results, error) -> None:
        index = {id(p): i for i, p in enumerate(live)}
        for p in batch:
            if p.future.done():
                continue
            i = index.get(id(p))
            if i is None:
                p.future.set_exception(DeadlineExceeded("deadline passed before the step ran"))
            elif error is not None:
                p.future.set_exception(error)
            elif isinstance(results[i], BaseException):
                p.future.set_exception(results[i])
            else:
                p.future.set_result(results[i])
        self._busy = False
        self._maybe_dispatch()

    # -- introspection (any thread) --------------------------------------------------------
    def stats(self) -> dict[str, float]:
        with self._lock:
            s = self._stats
            return {
                "requests_total": float(s.requests),
                "batches_total": float(s.batches),
                "batch_size_mean": s.batched_items / s.batches if s.batches else 0.0,
                "rejected_queue_full_total": float(s.rejected_full),
                "expired_total": float(s.expired),
                "failed_batches_total": float(s.failed_batches),
                "step_seconds_total": s.step_seconds,
                "queue_depth": float(len(self._queue)),
            }
