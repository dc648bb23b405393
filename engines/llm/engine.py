"""LLMEngine: the public face of continuous batching over one causal LM and its LoRA adapters.

A thin façade over four parts, each testable alone:

    generate() --validate, tokenize--> Scheduler (waiting / prefilling / running, budgets)
        StepWorker thread, one step:  plan = scheduler.schedule(now)      (no tensors)
                                      runner.submit(plan)                 (all tensors)
                                      [the previous step's output, while the model process computes]
                                      result = runner.collect()
                                      output.emit / finish per request     (text, streams)
        --> ResultStream per request --> the caller's `async for`

Contract per request: any number of `TokenChunk`s, then exactly one `FinalOutput` (or an
exception, if the step serving it failed: a failing step fails every request in it, never
the daemon). Lifecycle, admission and adapter administration stay here.

Locks: `_model_lock` is held by the worker for a whole step and by adapter installs, so
adapter weights never change under a forward pass; `_lock` guards the scheduler's sets,
`_live` and the adapter registry for short sections. Order is always `_model_lock` then `_lock`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import torch
from opentelemetry import trace

from engines.base import ModelInfo
from engines.config import to_mapping
from engines.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from engines.llm import metrics as m
from engines.llm.adapters import AdapterRegistry, OnDemandLoads
from engines.llm.config import LLMConfig
from engines.llm.constraints import Compiler, Grammars
from engines.llm.core import RUNNERS, ModelFacts, ModelSide, StepRunner
from engines.llm.detok import IncrementalDecoder
from engines.llm.output import OutputProcessor, RequestOutput
from engines.llm.prefix_cache import PrefixIndex
from engines.llm.runner import StepResult
from engines.llm.scheduler import Scheduler, Sequence
from engines.llm.types import (
    AdapterInfo,
    Constraint,
    FinalOutput,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    Timings,
    TokenChunk,
)
from engines.llm.validation import validate_and_tokenize
from engines.worker import Outbox, ResultStream, SupervisedWorker

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Steps failing in a row (not out of memory) after which the worker gives up: the engine is
# then broken, not unlucky, and the daemon restarts it (health NOT_SERVING meanwhile).
MAX_FAILED_STEPS = 3


class _Cancelled:
    """The items of a request closed before it was queued: its one FinalOutput, then the end."""

    def __init__(self) -> None:
        self._sent = False

    async def __anext__(self) -> FinalOutput:
        if self._sent:
            raise StopAsyncIteration
        self._sent = True
        return FinalOutput(FinishReason.CANCELLED, 0, 0, Timings(0.0, 0.0, 0.0))


class RequestStream:
    """One queued request's outputs (an async iterator). Not a generator on purpose: a
    generator that is never started never runs its `finally`, and the request it queued
    would keep its slot; here `close()` always frees it.

    A request that must wait before it is queued (its constraint compiling, its adapter
    loading on demand) is not queued yet: `start` awaits that and queues it (`deferred`),
    on the first `__anext__`; the compile's or the load's error, or DeadlineExceeded, is
    then that call's exception. Closed meanwhile (a Cancel, the drain), the request ends
    at once with its FinalOutput(CANCELLED); the load or compile goes on for the others."""

    def __init__(self, seq: Sequence[RequestOutput] | None, wake: Callable[[], None],
                 start: Callable[[], Awaitable[Sequence[RequestOutput]]] | None = None,
                 forget: Callable[[], object] = lambda: None) -> None:
        self._seq = seq
        self._wake = wake
        self._start = start
        self._forget = forget  # closed before it was queued: the engine forgets the request
        self._closed = False
        self._starting: asyncio.Future | None = None  # `start`, awaited by the first __anext__
        self._items = seq.handle.stream.__aiter__() if seq is not None else None

    @classmethod
    def deferred(cls, wake: Callable[[], None], start: Callable[[], Awaitable[Sequence[RequestOutput]]],
                 forget: Callable[[], object]) -> "RequestStream":
        return cls(None, wake, start, forget)

    def __aiter__(self) -> "RequestStream":
        return self

    async def queued(self) -> None:
        """Return once the request is queued (at once unless it was deferred); raises what
        its first item would (the compile's or the load's error). A front end that must
        answer such errors before it commits to a response (an HTTP status) awaits this."""
        if self._items is not None:
            return
        if self._closed:
            self._items = _Cancelled()
            return
        # A task of its own, so that close() from elsewhere (a Cancel frame, the drain) ends
        # the wait now rather than when the load or compile ends.
        self._starting = asyncio.ensure_future(self._start())
        try:
            self._seq = await self._starting
        except asyncio.CancelledError:
            if self._closed and not asyncio.current_task().cancelling():  # close(), not our caller
                self._items = _Cancelled()
                return
            raise
        self._items = self._seq.handle.stream.__aiter__()
        if self._closed:
            self.close()

    async def __anext__(self) -> TokenChunk | FinalOutput:
        try:
            await self.queued()
            return await self._items.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException:  # the consumer was cancelled, the step, compile or load failed
            self.close()
            raise

    def close(self) -> None:
        self._closed = True
        if self._seq is None:
            self._forget()
            if self._starting is not None:
                self._starting.cancel()
        if self._seq is not None and not self._seq.done:
            self._seq.cancelled = True
            self._wake()

    async def aclose(self) -> None:
        self.close()


class LLMEngine:
    """Implements `engines.base.Engine` for kind "llm" (service galactic.v1.Generation)."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self.name = config.name
        self.state = "loading"
        self.model: Any = None  # the HF model, where it lives in this process (runner = "thread")
        self.module: Any = None
        self._side: ModelSide | None = None  # built in load()
        self._facts = ModelFacts(eos=frozenset(), max_positions=1 << 30, parameters=0, memory_bytes=0, device="cpu")
        self.tokenizer: Any = None
        self._decode_tokenizer: Any = None
        self._runner: StepRunner | None = None  # built in load(), with the model
        self._outbox: Outbox | None = None  # created with the worker in start()
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        pc = config.prefix_cache
        self._prefix = PrefixIndex(pc.max_tokens, pc.block_tokens) if config.prefix_caching else None
        self._scheduler = Scheduler(config.scheduler, self._prefix)
        self._live: dict[str, Sequence[RequestOutput]] = {}
        self._order = itertools.count()
        self._adapters: AdapterRegistry | None = None  # built in load(), with the model
        # request id -> a request not queued yet: its constraint compiling or its adapter loading
        self._loading: dict[str, RequestStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: SupervisedWorker | None = None  # created in start()
        self._waiters: list[asyncio.Future] = []
        self._runner_holds = False  # the runner held the last step's tokens back (StepRunner.collect)
        self._model_dir = ""
        self._grammars: Grammars | None = None  # admission's compiled constraints; built in load()
        self._compiler: Compiler | None = None  # compiles them off the event loop; built in load()
        self._counters = {"generated_tokens_total": 0.0, "prompt_tokens_total": 0.0, "steps_total": 0.0,
                          "requests_finished_total": 0.0, "requests_failed_total": 0.0,
                          "prefix_cache_queried_tokens_total": 0.0, "prefix_cache_hit_tokens_total": 0.0}
        self._m = m.ModelMetrics(config.name)
        self._output = OutputProcessor(set(), self._m, self._counters)
        self._on_demand = OnDemandLoads(
            lambda name: asyncio.to_thread(self._adapters.load_unpinned, name), config.adapters.negative_cache_s,
            precheck=lambda name: self._adapters.check_dir(name), needed=lambda name: self._adapters.wants_load(name),
            metrics=self._m)

    # ---- lifecycle -------------------------------------------------------------------

    def load(self, progress: Callable[[str], None]) -> None:
        try:
            side = self._side = RUNNERS[self.config.runner](self.config, progress)
        except Exception:
            self.state = "failed"
            raise
        self.model, self.module, self._runner = side.model, side.module, side.runner
        tok, model_dir, facts, bank = side.tokenizer, side.model_dir, side.facts, side.bank
        self.tokenizer, self._model_dir, self._facts = tok, str(model_dir), facts
        # The worker decodes while the event loop encodes; a Rust tokenizer used from two
        # threads at once can fail with "Already borrowed" (encode mutates its padding /
        # truncation state), so the worker gets its own copy.
        self._decode_tokenizer = copy.deepcopy(tok)
        self._output.eos = set(facts.eos)
        # Its own tokenizer copy: llguidance reads it on a compile thread while this one
        # encodes on the event loop (see above).
        self._grammars = Grammars(copy.deepcopy(tok), facts.eos, self.config.constraints)
        self._compiler = Compiler(self._grammars)
        self._adapters = AdapterRegistry(self.config.adapters, bank, self._model_lock, self._lock, Path(model_dir))
        self._adapters.on_evict = lambda name: self._m.adapter_evictions.inc()
        if self._prefix is not None:  # under `_lock`, as every use of the index
            self._adapters.on_remove = lambda adapter: self._prefix.drop(adapter.cache_key)
        for name, path in self.config.adapters.preload.items():
            progress(f"loading adapter {name}")
            self._adapters.install(name, *self._adapters.read(path))
        progress("ready")

    @property
    def runner(self) -> StepRunner | None:
        """The step runner (`core.StepRunner`) built by load(); for tests and tools."""
        return self._runner

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._runner is None:
            raise FailedPrecondition("start() before load()")
        self._loop = loop
        self._outbox = Outbox(loop)
        self._worker = SupervisedWorker(f"llm-{self.name}", self._step, self._has_work,
                                        max_failures=MAX_FAILED_STEPS)
        self._outbox.thread = self._worker.thread
        self._worker.start(loop)
        self.state = "ready"
        self._update_gauges()

    # ---- supervision: the daemon restarts a worker that died or kept failing ----------

    async def wait_faulted(self) -> str:
        """Return (why) once the worker thread has died or given up after failing steps."""
        return await self._worker.wait_faulted()

    async def restart(self) -> None:
        """Fail every request the dead worker held with Unavailable, start a fresh worker,
        and prove the engine with a canary request; raises if the canary fails (the caller
        retries). New requests get Unavailable until the canary has passed."""
        self.state = "restarting"
        await self._worker.replace(self._fail_held)
        self._outbox.thread = self._worker.thread
        self._update_gauges()
        await self.canary()
        self.state = "ready"

    def _fail_held(self) -> None:
        """Between the dead worker and its successor: every live request fails Unavailable."""
        self._runner_holds = False  # reset() below drops what the runner held
        with self._lock:
            victims = list(self._live.values())
            for seq in victims:
                self._scheduler.finish(seq)
                self._retire(seq)
        self._runner.reset()
        with self._lock:
            self._scheduler.forget_cache()  # the runner's reset emptied the cached blocks
        for seq in victims:
            self._output.fail(seq.handle, Unavailable(f"model {self.name} restarted its worker; retry"))

    async def canary(self) -> None:
        """One greedy token through scheduler, runner and output: checks the engine, not
        just that its thread is alive. Raises what the step raised."""
        req = GenerationRequest(request_id=f"canary-{next(self._order)}", prompt="canary",
                                sampling=SamplingParams(max_new_tokens=1, ignore_eos=True))
        async for _ in RequestStream(self._enqueue(req, canary=True), self._worker.notify):
            pass

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let running requests finish for `grace_s`, cancel the rest."""
        if self._worker is None or self.state == "stopped":  # never started (or load failed)
            if self._side is not None:
                await asyncio.to_thread(self._side.close)
            self.state = "stopped"
            return
        self.state = "draining"
        # Requests waiting for their adapter's on-demand load were accepted: they are served too.
        idle = lambda e: e.running_count + e.waiting_count + len(e._loading) == 0  # noqa: E731
        try:
            await self.wait_until(idle, timeout=grace_s)
        except asyncio.TimeoutError:
            live = [*self._live, *self._loading]
            log.warning("llm engine %s: grace over; cancelling %d live requests", self.name, len(live))
            for request_id in live:
                self.cancel(request_id)
            try:
                await self.wait_until(idle, timeout=30)
            except asyncio.TimeoutError:
                log.warning("llm engine %s: requests still live after cancel; failing them", self.name)
        await asyncio.to_thread(self._worker.stop, 30)
        for seq in list(self._live.values()):  # only if the worker died mid-step
            seq.handle.stream.fail(Unavailable("engine stopped"))
        await asyncio.to_thread(self._side.close)
        self._compiler.close()
        self.state = "stopped"

    @property
    def version(self) -> str:
        """The loaded model's version (its directory's name), as `info().version`; cheap,
        where `info()` copies the whole config: front ends read it on every request."""
        return Path(self._model_dir).name or self.config.path

    def info(self) -> ModelInfo:
        facts = self._facts  # zeros until loaded
        return ModelInfo(
            name=self.name, kind="llm", version=self.version, state=self.state,
            device=facts.device, parameters=facts.parameters, memory_bytes=facts.memory_bytes,
            config=to_mapping(self.config),
            services=("galactic.v1.Generation",),
        )

    def stats(self) -> dict[str, float]:
        return {
            **self._counters,
            "running_requests": float(self.running_count),
            "waiting_requests": float(self.waiting_count),
            "kv_cache_tokens": float(self._runner.kv_tokens if self._runner is not None else 0),
            "reserved_tokens": float(self._scheduler.reserved),
            "adapters_loaded": float(len(self._adapters or ())),
            "adapter_loads_on_demand_total": float(self._on_demand.loads),
            "adapter_load_failures_total": float(self._on_demand.failures),
            "adapter_evictions_total": float(self._adapters.evictions if self._adapters is not None else 0),
            "prefix_cache_tokens": float(self._prefix.tokens if self._prefix is not None else 0),
            "prefix_cache_hit_rate": (self._counters["prefix_cache_hit_tokens_total"]
                                      / max(1.0, self._counters["prefix_cache_queried_tokens_total"])),
        }

    @property
    def running_count(self) -> int:
        """Requests admitted and not yet finished (prefilling or decoding)."""
        return self._scheduler.running_count

    @property
    def waiting_count(self) -> int:
        return self._scheduler.waiting_count

    async def wait_until(self, predicate: Callable[["LLMEngine"], bool], timeout: float | None = None) -> None:
        """Wait (event-driven, re-checked after every step) until `predicate(engine)` holds."""
        loop = asyncio.get_running_loop()

        async def _wait() -> None:
            while not predicate(self):
                fut = loop.create_future()
                self._waiters.append(fut)
                await fut

        await asyncio.wait_for(_wait(), timeout)

    def _state_changed(self) -> None:  # on the event loop
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ---- requests --------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> "RequestStream":
        """Validate and queue `request` now; iterate the result for TokenChunks, then exactly
        one FinalOutput.

        Raises at once InvalidArgument / NotFound / AlreadyExists / ResourceExhausted /
        Unavailable, so a caller knows the request is queued before any token (a Session
        sends Accepted then). `close()`/`aclose()`, or cancelling the task awaiting the
        next item, cancels the request; its slot and cache are freed at the next step.

        Two exceptions, queued only once their wait is over (off the event loop: the batch
        keeps running), the first item waiting for it:

        * a constraint not in the grammar cache is compiled first (`constraints.Compiler`,
          bounded by `constraints.compile_timeout_s`); llguidance's refusal, or the bound
          passed, is InvalidArgument naming `constraint.<kind>` then. What is cheap to check
          (kind, size, a schema that is not JSON) is still raised at once;
        * a request naming an adapter that is not loaded, with `adapters.on_demand`, starts
          its load (or joins the one in flight); the load's errors (NotFound,
          FailedPrecondition, InvalidArgument, ResourceExhausted) or DeadlineExceeded come
          from it. The error of a recent failed load, and NotFound for a name with no
          directory under the root, are raised at once (`OnDemandLoads`).
        """
        if self.state != "ready" or self._worker is None:
            raise Unavailable(f"model {self.name} is {self.state}")
        ids = self._validate(request)
        constraint = request.sampling.constraint
        compile_first = constraint is not None and self._needs_compile(constraint)
        load_first = bool(request.adapter) and self._adapters.wants_load(request.adapter)
        if not (compile_first or load_first):
            return RequestStream(self._enqueue(request, ids=ids), self._worker.notify)
        rid = request.request_id
        if rid in self._live or rid in self._loading:
            raise AlreadyExists(f"request {rid!r} is already running", field="request_id")
        if load_first:
            self._on_demand.start(request.adapter)  # now: concurrent first requests share its load
        stream = RequestStream.deferred(self._worker.notify, lambda: self._queue_later(request, ids, compile_first),
                                        forget=lambda: self._loading.pop(rid, None))
        self._loading[rid] = stream
        return stream

    async def _queue_later(self, req: GenerationRequest, ids: list[int], compile_first: bool) -> Sequence[RequestOutput]:
        try:
            if compile_first:
                await self._compiler.compile(req.sampling.constraint)
            if req.adapter:  # returns at once unless it is (still, or again) to be loaded
                await self._on_demand.wait(req.adapter, req.deadline)
            return self._enqueue(req, ids=ids, accepted=True)
        finally:
            self._loading.pop(req.request_id, None)
            self._state_changed()  # a drain waits for requests not queued yet, too

    def cancel(self, request_id: str) -> bool:
        """End a live request with FinalOutput(CANCELLED) within one step (one waiting for
        its adapter's load or its constraint's compile: at once, the load or compile going
        on for the others); False if unknown."""
        loading = self._loading.get(request_id)
        if loading is not None:
            loading.close()
            return True
        seq = self._live.get(request_id)
        if seq is None or seq.done:
            return False
        seq.cancelled = True
        self._worker.notify()
        return True

    def _validate(self, req: GenerationRequest) -> list[int]:
        """Check the request (its constraint prechecked, not compiled) and tokenize its
        prompt; on the event loop, before any model work."""
        return validate_and_tokenize(req, self.tokenizer, self.config.scheduler, self._facts.max_positions,
                                     self._grammars)

    def _needs_compile(self, constraint: Constraint) -> bool:
        """False if the constraint is in the grammar cache (a hit); counted either way."""
        if self._compiler.needs_compile(constraint):
            self._m.grammar_misses.inc()
            return True
        self._m.grammar_hits.inc()
        return False

    def _enqueue(self, req: GenerationRequest, canary: bool = False, ids: list[int] | None = None,
                 accepted: bool = False) -> Sequence[RequestOutput]:
        """Queue a request; `accepted`: generate() took it before a drain began (it waited
        for its adapter's load), so a draining engine still serves it."""
        open_to_it = self.state == "ready" or canary or (accepted and self.state == "draining")
        if not open_to_it or self._worker is None:
            raise Unavailable(f"model {self.name} is {self.state}")
        if ids is None:
            ids = self._validate(req)
        with self._lock:
            if req.request_id in self._live:
                raise AlreadyExists(f"request {req.request_id!r} is already running", field="request_id")
            if self._scheduler.waiting.full():
                raise ResourceExhausted(f"waiting queue full ({self._scheduler.waiting.capacity}); retry later")
            adapter = self._adapters.acquire(req.adapter) if req.adapter else None
            span = tracer.start_span("llm.request", context=req.trace_context, attributes={
                "llm.request_id": req.request_id, "llm.adapter": req.adapter or "",
                "llm.prompt_tokens": len(ids), "llm.max_new_tokens": req.sampling.max_new_tokens})
            now = time.monotonic()
            out = RequestOutput(
                stream=ResultStream(self._loop, self._outbox),
                decoder=IncrementalDecoder(self._decode_tokenizer, ids, req.sampling.stop), adapter=adapter,
                span=span, queue_span=tracer.start_span("llm.queue", context=trace.set_span_in_context(span)),
                t_enqueue=now, prompt_tokens=len(ids), meter=req.meter)
            seq = Sequence(req, ids, slot=adapter.slot if adapter is not None else 0, t_enqueue=now,
                           order=next(self._order), handle=out,
                           cache_key=adapter.cache_key if adapter is not None else "")
            self._live[req.request_id] = seq
            self._scheduler.add(seq)
        if req.sampling.constraint is not None:
            self._m.constrained.inc()
        if req.meter is not None:  # queued: the prompt is owed whatever happens next
            req.meter(len(ids))
        self._update_gauges()
        self._worker.notify()
        self._state_changed()  # waiting_count changed: wake wait_until() callers now
        return seq

    # ---- adapters --------------------------------------------------------------------

    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        """Load a PEFT LoRA dir (relative to or inside adapters.root, else PermissionDenied)
        and pin it: on-demand loads never evict it. At max_loaded the least recently used
        idle adapter is evicted (unpinned ones first), ResourceExhausted if all are busy.
        The same name already loaded on demand from the same dir is pinned, not reloaded.
        Reading runs off the loop; the install waits for the current step."""
        if not name or not name.strip():
            raise InvalidArgument("adapter name must be non-empty", field="name")
        full = self._adapters.resolve_dir(path)
        pinned = self._adapters.check_free_name(name, full)
        if pinned is not None:
            return pinned
        self._on_demand.forget(name)
        full, weights = await asyncio.to_thread(self._adapters.read, path)
        info = await asyncio.to_thread(self._adapters.install, name, full, weights)
        self._update_gauges()
        return info

    async def unload_adapter(self, name: str, force: bool = False) -> None:
        """Unload an adapter. New requests naming it get NotFound from the moment this is
        called; requests already using it finish normally and the call returns once the last
        one has (a safe hot-swap: load the new version under another name, move traffic, unload
        the old). `force` cancels them instead (each ends with FinalOutput(CANCELLED) within
        one step)."""
        adapter = self._adapters.begin_unload(name)
        self._on_demand.forget(name)
        if force:
            for seq in [s for s in list(self._live.values()) if s.handle.adapter is adapter]:
                seq.cancelled = True

        async def finish() -> None:
            if adapter.in_use:
                self._worker.notify()
                await self.wait_until(lambda e: adapter.in_use == 0)
            await asyncio.to_thread(self._adapters.remove, adapter)
            self._update_gauges()

        # Shielded: if the caller's RPC is cancelled half-way, the unload still completes;
        # otherwise the adapter would stay marked unloading, its name and slot taken forever.
        await asyncio.shield(asyncio.create_task(finish()))

    def list_adapters(self) -> list[AdapterInfo]:
        return self._adapters.infos() if self._adapters is not None else []

    def resolves_adapter(self, name: str) -> bool:
        """Whether a request naming `name` would load it on demand (one stat of root/<name>):
        front ends that look a name up before generate() (OpenAI's `model`) accept it."""
        if self._adapters is None or not self._adapters.wants_load(name):
            return False
        try:
            self._adapters.check_dir(name)
        except NotFound:
            return False
        return True

    async def resolvable_adapters(self) -> list[str]:
        """Adapters under adapters.root that a request would load on demand (none with
        `on_demand` off); lists the root off the event loop."""
        if self._adapters is None or not self.config.adapters.on_demand:
            return []
        return await asyncio.to_thread(self._adapters.resolvable)

    # ---- the step (worker thread) ----------------------------------------------------

    def _step(self) -> None:
        failed: Exception | None = None
        with self._model_lock:
            try:
                with torch.no_grad():
                    self._step_locked()
            except Exception as exc:  # a failing step fails its requests, not the daemon
                self._fail_all(exc)
                failed = exc
        self._update_gauges()
        # One hand-over per step: every token of the step, then the wait_until() check. The
        # worker does not wait for the event loop to deliver them (call_soon_threadsafe
        # wakes it, and the worker goes on to the next step): a stalled or busy front end
        # never stalls the model. A first token then reaches its consumer as soon as the
        # loop holds the GIL: at once with the model process (the worker waits in `recv`
        # with the GIL released), within a switch interval (5 ms) per hand-off with the
        # thread runner, whose forward runs Python code here.
        self._outbox.flush(then=self._state_changed)
        if failed is not None and not isinstance(failed, torch.OutOfMemoryError):
            # Out of memory is load; anything else counts toward MAX_FAILED_STEPS in a row,
            # after which the worker gives up and the daemon restarts it.
            raise failed

    def _has_work(self) -> bool:
        return self._runner_holds or self._scheduler.has_work()

    def _step_locked(self) -> None:
        """One step: plan, submit, apply what the runner hands back, collect, apply.

        A runner that overlaps steps hands back the previous step's tokens from `submit`,
        to apply and send to the event loop while it computes this one, and holds this
        step's back in `collect` (see `core.StepRunner`); otherwise a step's tokens are
        applied as soon as it is collected."""
        with self._lock:
            plan = self._scheduler.schedule(time.monotonic())
            for seq, _ in plan.dropped:
                self._retire(seq)
        for seq in plan.admitted:
            self._output.admitted(seq.handle, seq.t_admit, seq.cached)
            if self._prefix is not None:
                self._counters["prefix_cache_queried_tokens_total"] += len(seq.prompt_ids)
                self._counters["prefix_cache_hit_tokens_total"] += seq.cached
                self._m.prefix_queried.inc(len(seq.prompt_ids))
                self._m.prefix_hit.inc(seq.cached)
        for seq, reason in plan.dropped:  # never reach the model
            self._output.finish(seq.handle, reason)
        self._runner_holds = False
        if not plan:  # nothing to compute: take back what the runner held, free the dropped
            previous = self._runner.submit(plan)
            if previous is not None:
                self._apply(previous)
            return
        rows = plan.decode + [c.seq for c in plan.prefill]
        links = [trace.Link(s.handle.span.get_span_context()) for s in rows]
        with tracer.start_as_current_span("llm.step", links=links) as span:
            previous = self._runner.submit(plan)
            if previous is not None:  # the model computes this step meanwhile
                self._apply(previous)
                self._outbox.flush(then=self._state_changed)
            result = self._runner.collect()
            span.set_attribute("llm.batch_size", len(plan.decode))
            span.set_attribute("llm.prefill_tokens", plan.prefill_tokens)
            span.set_attribute("llm.tokens", plan.num_tokens)
        self._counters["steps_total"] += 1
        self._m.batch_size.observe(len(plan.decode))
        self._m.step_tokens.observe(plan.num_tokens)
        if result is None:
            self._runner_holds = True
        else:
            self._apply(result)

    def _apply(self, result: StepResult) -> None:
        """Stream every sampled token; end the requests they finished. A request that
        ended meanwhile (cancelled, expired, or finished by the step before, when steps
        overlap) gets no more tokens."""
        now = time.monotonic()
        if result.mask_s:
            self._m.mask.observe(result.mask_s)
        finished: list[tuple[Sequence[RequestOutput], FinishReason]] = []
        for s in result.sampled:
            if s.seq.done:
                continue
            reason = self._output.emit(s.seq.handle, s.seq.request.sampling, s.token, s.logprob, s.first, now)
            if reason is not None:
                finished.append((s.seq, reason))
        if not finished:
            return
        self._runner.free([seq for seq, _ in finished])
        # Bookkeeping before the final item: the consumer may act on it at once (cancel(),
        # unload_adapter), and must then see the request gone.
        with self._lock:
            for seq, _ in finished:
                self._scheduler.finish(seq)
                self._retire(seq)
        for seq, reason in finished:
            self._output.finish(seq.handle, reason)

    def _retire(self, seq: Sequence[RequestOutput]) -> None:
        """Under `_lock`: the request leaves the engine's books."""
        self._live.pop(seq.request.request_id, None)
        if seq.handle.adapter is not None:
            AdapterRegistry.release(seq.handle.adapter)

    def _fail_all(self, exc: Exception) -> None:
        """A step raised: fail every admitted request (they shared the forward) and reset."""
        self._runner_holds = False  # its requests are among the victims; reset() drops it
        with self._lock:
            victims = self._scheduler.abort_all()
            for seq in victims:
                self._retire(seq)
        log.exception("llm step failed; failing %d requests", len(victims), exc_info=exc)
        self._runner.reset()
        if isinstance(exc, torch.OutOfMemoryError):
            # Out of device memory is load, not a bug: the client may retry (elsewhere or
            # with less), so RESOURCE_EXHAUSTED rather than INTERNAL.
            exc = ResourceExhausted(f"out of device memory in a batch of {len(victims)}; retry later")
        for seq in victims:
            self._output.fail(seq.handle, exc)

    def _update_gauges(self) -> None:
        self._m.running.set(self.running_count)
        self._m.waiting.set(self.waiting_count)
        self._m.kv_tokens.set(self._runner.kv_tokens if self._runner is not None else 0)
        self._m.kv_usage.set(self._scheduler.reserved / self.config.scheduler.max_batch_tokens)
        if self._prefix is not None:
            self._m.prefix_tokens.set(self._prefix.tokens)
        if self._adapters is not None:
            self._m.adapters_loaded.set(len(self._adapters))
            self._m.adapters_active.set(self._adapters.active)
