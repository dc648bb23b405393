"""LLMEngine: continuous batching of token streams over one causal LM and its LoRA adapters.

Data flow: `generate()` (event loop) validates, tokenizes and enqueues a `Sequence`; the
`StepWorker` thread runs `_step()` while there is work (see `scheduler.py` for the step's
phases and why we schedule ourselves); each step's tokens go back through the request's
`ResultStream`. Contract per request: any number of `TokenChunk`s, then exactly one
`FinalOutput` (or an exception, if the step serving it failed: a failing step fails every
request in it, never the daemon).

Locks: `_model_lock` is held by the worker for a whole step and by adapter installs, so
adapter weights never change under a forward pass; `_lock` guards the queues and the
adapter registry for short sections. Order is always `_model_lock` then `_lock`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from opentelemetry import trace

from engines.base import ModelInfo
from engines.config import to_mapping
from engines.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from engines.llm import metrics as m
from engines.llm.adapters import AdapterRegistry
from engines.llm.batch import DecodeBatch
from engines.llm.config import LLMConfig
from engines.llm.detok import IncrementalDecoder
from engines.llm.lora import LoRABank, read_adapter
from engines.llm.module import CausalLMModule
from engines.llm.sampling import make_generator, sample_batch
from engines.llm.scheduler import Sequence, WaitingQueue
from engines.llm.validation import validate_and_tokenize
from engines.llm.types import AdapterInfo, FinalOutput, FinishReason, GenerationRequest, Timings, TokenChunk
from engines.worker import Outbox, ResultStream, StepWorker

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class RequestStream:
    """One queued request's outputs (an async iterator). Not a generator on purpose: a
    generator that is never started never runs its `finally`, and the request it queued
    would keep its slot; here `close()` always frees it."""

    def __init__(self, seq: Sequence, wake: Callable[[], None]) -> None:
        self._seq = seq
        self._wake = wake
        self._items = seq.stream.__aiter__()

    @property
    def request_id(self) -> str:
        return self._seq.request.request_id

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> TokenChunk | FinalOutput:
        try:
            return await self._items.__anext__()
        except StopAsyncIteration:
            raise
        except BaseException:  # the consumer was cancelled, or the step failed
            self.close()
            raise

    def close(self) -> None:
        if not self._seq.done:
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
        self.model: Any = None
        self.tokenizer: Any = None
        self._decode_tokenizer: Any = None
        self._forward: Callable[..., Any] | None = None
        self._outbox: Outbox | None = None  # created with the worker in start()
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        sched = config.scheduler
        self._waiting = WaitingQueue(sched.max_waiting, sched.priority_aging_s)
        self._prefilling: list[Sequence] = []
        self._batch: DecodeBatch[Sequence] | None = None
        self._live: dict[str, Sequence] = {}
        self._reserved = 0
        self._running = 0  # admitted, not finished; changed under _lock
        self._order = itertools.count()
        self._adapters: AdapterRegistry | None = None  # built in load(), with the model
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: StepWorker | None = None
        self._waiters: list[asyncio.Future] = []
        self._eos: set[int] = set()
        self._max_positions = 1 << 30
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self._model_dir = ""
        self._counters = {"generated_tokens_total": 0.0, "prompt_tokens_total": 0.0, "steps_total": 0.0,
                          "requests_finished_total": 0.0, "requests_failed_total": 0.0}
        self._m = m.ModelMetrics(config.name)

    # ---- lifecycle -------------------------------------------------------------------

    def load(self, progress: Callable[[str], None]) -> None:
        from engines.llm.loading import input_device, load_model_and_tokenizer

        try:
            model, tok, placement, model_dir = load_model_and_tokenizer(self.config, progress)
        except Exception:
            self.state = "failed"
            raise
        self.model, self.tokenizer, self._model_dir = model, tok, str(model_dir)
        # The worker decodes while the event loop encodes; a Rust tokenizer used from two
        # threads at once can fail with "Already borrowed" (encode mutates its padding /
        # truncation state), so the worker gets its own copy.
        self._decode_tokenizer = copy.deepcopy(tok)
        self._device, self._dtype = input_device(model), placement.dtype
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = tok.eos_token_id if eos is None else eos
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        self._max_positions = int(getattr(model.config, "max_position_embeddings", None) or self._max_positions)
        bank = LoRABank(model, self.config.adapters.max_loaded, placement.dtype)
        self._adapters = AdapterRegistry(self.config.adapters, bank, self._model_lock, self._lock, Path(model_dir))
        for name, path in self.config.adapters.preload.items():
            progress(f"loading adapter {name}")
            full = self._adapters.resolve_dir(path)
            self._adapters.check_base(full)
            self._adapters.install(name, full, read_adapter(full, self.config.adapters.resolved_root()))
        # The served model is the same LightningModule class that training fine-tunes; its
        # forward is the HF model's, so the step pays one extra Python call and no more.
        self.module = CausalLMModule(model)
        self._forward = self.module
        if self.config.compile:
            progress("compiling the forward pass (torch.compile)")
            self._forward = torch.compile(self.module, dynamic=True)
            self._warm_up()
        progress("ready")

    def _warm_up(self) -> None:
        """Run the compiled forward with the exact call signatures the step uses (batched
        prefill with a mask, chunked prefill, decode), at two sizes so shapes go dynamic;
        otherwise the first requests pay the compilation. Adapters loaded later change the
        module tree and cost one more compilation on first use."""
        from transformers import DynamicCache

        dev = self._device
        with torch.no_grad():
            for rows, width in ((1, 5), (2, 6), (3, 9)):  # size 1 is specialised by torch: warm it too
                ids = torch.ones(rows, width, dtype=torch.long, device=dev)
                mask = torch.ones_like(ids)
                if rows > 1:
                    mask[0, :2] = 0
                pos = (mask.cumsum(1) - 1).clamp(min=0)
                cache = DynamicCache()
                self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                              logits_to_keep=1)
                for step in range(2):
                    mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
                    self._forward(input_ids=ids[:, :1], attention_mask=mask, position_ids=pos[:, -1:] + 1 + step,
                                  cache=cache, use_cache=True)
                chunk = DynamicCache()
                self._forward(input_ids=ids[:1], position_ids=torch.arange(width, device=dev).view(1, -1),
                              cache=chunk, use_cache=True, logits_to_keep=1)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.model is None:
            raise FailedPrecondition("start() before load()")
        self._loop = loop
        self._batch = DecodeBatch(self._device)
        self._worker = StepWorker(f"llm-{self.name}", self._step, self._has_work)
        self._outbox = Outbox(loop)
        self._outbox.thread = self._worker.thread
        self._worker.start()
        self.state = "ready"
        self._update_gauges()

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let running requests finish for `grace_s`, cancel the rest."""
        if self._worker is None or self.state == "stopped":  # never started (or load failed)
            self.state = "stopped"
            return
        self.state = "draining"
        try:
            await self.wait_until(lambda e: e.running_count + e.waiting_count == 0, timeout=grace_s)
        except asyncio.TimeoutError:
            for seq in list(self._live.values()):
                seq.cancelled = True
            self._worker.notify()
            try:
                await self.wait_until(lambda e: e.running_count + e.waiting_count == 0, timeout=30)
            except asyncio.TimeoutError:
                log.warning("llm engine %s: requests still live after cancel; failing them", self.name)
        await asyncio.to_thread(self._worker.stop, 30)
        for seq in list(self._live.values()):  # only if the worker died mid-step
            seq.stream.fail(Unavailable("engine stopped"))
        self.state = "stopped"

    def info(self) -> ModelInfo:
        params = sum(p.numel() for p in self.model.parameters()) if self.model is not None else 0
        mem = 0
        if self.model is not None:
            mem = sum(t.numel() * t.element_size() for t in itertools.chain(self.model.parameters(), self.model.buffers()))
        return ModelInfo(
            name=self.name, kind="llm", version=Path(self._model_dir).name or self.config.path, state=self.state,
            device=str(self._device), parameters=params, memory_bytes=mem, config=to_mapping(self.config),
            services=("galactic.v1.Generation",),
        )

    def stats(self) -> dict[str, float]:
        batch = self._batch
        kv = float(len(batch) * batch.length) if batch is not None else 0.0
        return {
            **self._counters,
            "running_requests": float(self.running_count),
            "waiting_requests": float(self.waiting_count),
            "kv_cache_tokens": kv,
            "reserved_tokens": float(self._reserved),
            "adapters_loaded": float(len(self._adapters or ())),
        }

    @property
    def running_count(self) -> int:
        """Requests admitted and not yet finished (prefilling or decoding).

        Counted apart from the prefill list and the batch, which a request leaves and joins
        mid-step: a count summed from them could read 0 between the two."""
        return self._running

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

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
        """
        return RequestStream(self._enqueue(request), self._worker.notify)

    def cancel(self, request_id: str) -> bool:
        """End a live request with FinalOutput(CANCELLED) within one step; False if unknown."""
        seq = self._live.get(request_id)
        if seq is None or seq.done:
            return False
        seq.cancelled = True
        self._worker.notify()
        return True

    def _enqueue(self, req: GenerationRequest) -> Sequence:
        if self.state != "ready" or self._worker is None:
            raise Unavailable(f"model {self.name} is {self.state}")
        ids = validate_and_tokenize(req, self.tokenizer, self.config.scheduler, self._max_positions)
        with self._lock:
            if req.request_id in self._live:
                raise AlreadyExists(f"request {req.request_id!r} is already running", field="request_id")
            if self._waiting.full():
                raise ResourceExhausted(f"waiting queue full ({self._waiting.capacity}); retry later")
            adapter = self._adapters.acquire(req.adapter) if req.adapter else None
            span = tracer.start_span("llm.request", context=req.trace_context, attributes={
                "llm.request_id": req.request_id, "llm.adapter": req.adapter or "",
                "llm.prompt_tokens": len(ids), "llm.max_new_tokens": req.sampling.max_new_tokens})
            seq = Sequence(
                request=req, prompt_ids=ids, stream=ResultStream(self._loop, self._outbox), adapter=adapter,
                decoder=IncrementalDecoder(self._decode_tokenizer, ids, req.sampling.stop),
                generator=make_generator(req.sampling), span=span,
                queue_span=tracer.start_span("llm.queue", context=trace.set_span_in_context(span)),
                order=next(self._order),
            )
            if req.sampling.repetition_penalty != 1.0:
                seq.seen = torch.tensor(ids, dtype=torch.long)
            self._live[req.request_id] = seq
            self._waiting.push(seq)
        self._update_gauges()
        self._worker.notify()
        self._state_changed()  # waiting_count changed: wake wait_until() callers now
        return seq

    # ---- adapters --------------------------------------------------------------------

    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        """Load a PEFT LoRA dir (relative to or inside adapters.root, else PermissionDenied);
        at max_loaded the least recently used idle adapter is evicted, ResourceExhausted if
        all are busy. Reading runs off the loop; the install waits for the current step."""
        if not name or not name.strip():
            raise InvalidArgument("adapter name must be non-empty", field="name")
        full = self._adapters.resolve_dir(path)
        self._adapters.check_free_name(name)
        await asyncio.to_thread(self._adapters.check_base, full)
        weights = await asyncio.to_thread(read_adapter, full, self.config.adapters.resolved_root())
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
        users = [s for s in list(self._live.values()) if s.adapter is adapter]
        if force:
            for seq in users:
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

    # ---- the step (worker thread) ----------------------------------------------------

    def _has_work(self) -> bool:
        return bool(len(self._waiting) or self._prefilling or (self._batch is not None and len(self._batch)))

    def _step(self) -> None:
        with self._model_lock:
            served: list[Sequence] = []
            try:
                with torch.no_grad():
                    self._step_locked(served)
            except Exception as exc:  # a failing step fails its requests, not the daemon
                log.exception("llm step failed; failing %d requests", len(served))
                self._fail_all(exc, served)
        self._update_gauges()
        # One hand-over per step: every token of the step, then the wait_until() check.
        self._outbox.flush(then=self._state_changed)

    def _step_locked(self, served: list[Sequence]) -> None:
        now = time.monotonic()
        sched = self.config.scheduler
        dropped: list[tuple[Sequence, FinishReason]] = []
        with self._lock:
            for seq in list(self._waiting.items):
                if seq.cancelled or seq.expired(now):
                    self._waiting.remove(seq)
                    dropped.append((seq, FinishReason.CANCELLED if seq.cancelled else FinishReason.DEADLINE))
            for seq in [s for s in self._prefilling if s.cancelled or s.expired(now)]:
                self._prefilling.remove(seq)
                dropped.append((seq, FinishReason.CANCELLED if seq.cancelled else FinishReason.DEADLINE))
            keep = []
            for i, seq in enumerate(self._batch.rows):
                if seq.cancelled or seq.expired(now):
                    dropped.append((seq, FinishReason.CANCELLED if seq.cancelled else FinishReason.DEADLINE))
                else:
                    keep.append(i)
            self._batch.keep(keep)
        for seq, reason in dropped:  # before admission, so their rows and tokens are free again
            self._finish(seq, reason)
        with self._lock:
            # Admit by aged priority while rows and the token budget allow.
            while self._running < sched.max_running:
                seq = self._waiting.best(now)
                if seq is None or self._reserved + seq.reserve > sched.max_batch_tokens:
                    break  # the best one waits for room; smaller ones do not jump it (no starvation)
                self._waiting.remove(seq)
                self._reserved += seq.reserve
                seq.t_admit = now
                seq.queue_span.end()
                self._m.queue.observe(now - seq.t_enqueue)
                seq.prefill_span = tracer.start_span("llm.prefill", context=trace.set_span_in_context(seq.span))
                self._prefilling.append(seq)
                self._running += 1

        rows = list(self._prefilling) + list(self._batch.rows)
        served.extend(rows)
        if not rows:
            return
        links = [trace.Link(s.span.get_span_context()) for s in rows]
        with tracer.start_as_current_span("llm.step", links=links) as span:
            prefill_tokens = self._prefill(sched.prefill_chunk_tokens)
            decode_rows = self._decode()
            span.set_attribute("llm.batch_size", decode_rows)
            span.set_attribute("llm.prefill_tokens", prefill_tokens)
            span.set_attribute("llm.tokens", prefill_tokens + decode_rows)
        self._counters["steps_total"] += 1
        self._m.batch_size.observe(decode_rows)
        self._m.step_tokens.observe(prefill_tokens + decode_rows)

    def _set_adapters(self, slots: list[int]) -> None:
        self._adapters.bank.ctx.index = torch.tensor(slots, device=self._device) if any(slots) else None

    def _prefill(self, budget: int) -> int:
        """Prefill up to `budget` prompt tokens, oldest admitted first; returns tokens used.

        Prompts that fit whole in this step's budget are prefilled together in one left-
        padded forward (a burst of arrivals costs one pass, not one per request); a prompt
        longer than what is left is prefilled alone, one chunk per step, in its own cache.
        """
        whole: list[Sequence] = []
        partial: list[tuple[Sequence, int]] = []
        used = 0
        for seq in self._prefilling:
            if used >= budget:
                break
            n = min(budget - used, len(seq.prompt_ids) - seq.prefilled)
            if seq.prefilled == 0 and n == len(seq.prompt_ids):
                whole.append(seq)
            else:
                partial.append((seq, n))
            used += n
        if whole:
            self._prefill_whole(whole)
        for seq, n in partial:
            self._prefill_chunk(seq, n)
        return used

    def _prefill_whole(self, seqs: list[Sequence]) -> None:
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids):] = 1
        # Left padding: each row's positions start at 0 at its first real token.
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        self._set_adapters([s.slot for s in seqs])
        out = self._forward(input_ids=ids.to(self._device), attention_mask=mask.to(self._device),
                            position_ids=positions.to(self._device), cache=cache, use_cache=True, logits_to_keep=1)
        picks = self._sample(seqs, out.logits[:, -1])
        joined, tokens, keep = [], [], []
        for i, seq in enumerate(seqs):
            token = self._prefilled(seq, picks[i])
            if token is not None:
                joined.append(seq)
                tokens.append(token)
                keep.append(i)
        if joined:
            idx = torch.tensor(keep)
            if len(keep) < len(seqs):
                cache.batch_select_indices(idx)  # CPU indices work for layers on any device
            self._batch.join(joined, cache, mask.index_select(0, idx), tokens)

    def _prefill_chunk(self, seq: Sequence, n: int) -> None:
        from transformers import DynamicCache

        start = seq.prefilled
        if seq.prefill_cache is None:
            seq.prefill_cache = DynamicCache()
        ids = torch.tensor([seq.prompt_ids[start : start + n]], device=self._device)
        self._set_adapters([seq.slot])
        out = self._forward(
            input_ids=ids, position_ids=torch.arange(start, start + n, device=self._device).view(1, -1),
            cache=seq.prefill_cache, use_cache=True, logits_to_keep=1)
        seq.prefilled += n
        if seq.prefilled < len(seq.prompt_ids):
            return
        token = self._prefilled(seq, self._sample([seq], out.logits[:, -1])[0])
        if token is not None:
            self._batch.join([seq], seq.prefill_cache, torch.ones(1, len(seq.prompt_ids), dtype=torch.long), [token])
        seq.prefill_cache = None

    def _prefilled(self, seq: Sequence, pick: tuple[int, float | None]) -> int | None:
        """The prompt is in the cache: sample the first token; None if that finished it."""
        seq.prefilled = len(seq.prompt_ids)
        self._prefilling.remove(seq)
        seq.prefill_span.set_attribute("llm.prompt_tokens", len(seq.prompt_ids))
        seq.prefill_span.end()
        self._counters["prompt_tokens_total"] += len(seq.prompt_ids)
        self._m.prompt.inc(len(seq.prompt_ids))
        return self._emit(seq, pick)

    def _decode(self) -> int:
        batch = self._batch
        if not len(batch):
            return 0
        rows = list(batch.rows)
        self._set_adapters([s.slot for s in rows])
        out = self._forward(**batch.step_inputs())
        picks = self._sample(rows, out.logits[:, -1])
        tokens, keep = [], []
        for i, seq in enumerate(rows):
            token = self._emit(seq, picks[i])
            tokens.append(token if token is not None else 0)
            if token is not None:
                keep.append(i)
        batch.advance(torch.tensor(tokens, dtype=torch.long))
        batch.keep(keep)
        return len(rows)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[tuple[int, float | None]]:
        return sample_batch(logits, [(s.request.sampling, s.seen, s.generator) for s in seqs])

    def _emit(self, seq: Sequence, pick: tuple[int, float | None]) -> int | None:
        """Stream one sampled token for `seq`; returns it, or None if `seq` finished."""
        params = seq.request.sampling
        token, logprob = pick
        now = time.monotonic()
        if seq.t_first is None:
            seq.t_first = now
            seq.span.add_event("first_token")
            self._m.ttft.observe(now - seq.t_enqueue)
        else:
            self._m.itl.observe(now - seq.t_last)
        seq.t_last = now
        seq.generated.append(token)
        if seq.seen is not None:
            seq.seen = torch.cat([seq.seen, torch.tensor([token])])
        self._counters["generated_tokens_total"] += 1
        self._m.generated.inc()
        reason = None
        if token in self._eos and not params.ignore_eos:
            text, reason = seq.decoder.flush(), FinishReason.EOS
        else:
            text = seq.decoder.push(token)
            if seq.decoder.stopped:
                reason = FinishReason.STOP_SEQUENCE
            elif len(seq.generated) >= params.max_new_tokens:
                text, reason = text + seq.decoder.flush(), FinishReason.LENGTH
        seq.stream.put(TokenChunk((token,), text, (logprob,) if params.logprobs else None))
        if reason is not None:
            self._finish(seq, reason)
            return None
        return token

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.done:
            return
        now = time.monotonic()
        if reason is FinishReason.DEADLINE:
            tail = seq.decoder.flush()
            if tail:
                seq.stream.put(TokenChunk((), tail))
        if seq.t_admit is None:
            seq.queue_span.end()
        elif seq.prefill_span is not None and seq.t_first is None:
            seq.prefill_span.end()
        seq.prefill_cache = None
        # Bookkeeping before the final item: the consumer may act on it at once (cancel(),
        # unload_adapter), and must then see the request gone.
        seq.done = True
        with self._lock:
            if seq.t_admit is not None:
                self._reserved -= seq.reserve
                self._running -= 1
            self._live.pop(seq.request.request_id, None)
            if seq.adapter is not None:
                AdapterRegistry.release(seq.adapter)
        seq.span.set_attribute("llm.finish_reason", reason.value)
        seq.span.set_attribute("llm.completion_tokens", len(seq.generated))
        seq.span.end()
        seq.stream.put(self._final(seq, reason, now))
        seq.stream.close()
        self._counters["requests_finished_total"] += 1
        self._m.finished(reason.value)
        self._m.e2e.observe(now - seq.t_enqueue)

    def _final(self, seq: Sequence, reason: FinishReason, now: float) -> FinalOutput:
        def ms(t: float | None) -> float:
            return 0.0 if t is None else (t - seq.t_enqueue) * 1000.0

        return FinalOutput(reason, len(seq.prompt_ids), len(seq.generated),
                           Timings(queue_ms=ms(seq.t_admit), ttft_ms=ms(seq.t_first), total_ms=ms(now)))

    def _fail_all(self, exc: Exception, served: list[Sequence]) -> None:
        """A step raised: fail every request it served (they shared the forward) and reset.

        `served` is the step's rows as of its start, so a request caught between leaving
        the prefill list and joining the batch is failed too rather than left hanging."""
        victims = {id(s): s for s in [*served, *self._prefilling, *self._batch.rows] if not s.done}
        if isinstance(exc, torch.OutOfMemoryError):
            # Out of device memory is load, not a bug: the client may retry (elsewhere or
            # with less), so RESOURCE_EXHAUSTED rather than INTERNAL.
            exc = ResourceExhausted(f"out of device memory in a batch of {len(victims)}; retry later")
        self._prefilling.clear()
        self._batch = DecodeBatch(self._device)
        for seq in victims.values():
            seq.done = True
            with self._lock:
                self._reserved -= seq.reserve
                self._running -= 1
                self._live.pop(seq.request.request_id, None)
                if seq.adapter is not None:
                    AdapterRegistry.release(seq.adapter)
            seq.span.record_exception(exc)
            seq.span.end()
            seq.stream.fail(exc)
            self._counters["requests_failed_total"] += 1

    def _update_gauges(self) -> None:
        self._m.running.set(self.running_count)
        self._m.waiting.set(self.waiting_count)
        batch = self._batch
        self._m.kv_tokens.set(len(batch) * batch.length if batch is not None else 0)
        self._m.kv_usage.set(self._reserved / self.config.scheduler.max_batch_tokens)
        if self._adapters is not None:
            self._m.adapters_loaded.set(len(self._adapters))
            self._m.adapters_active.set(self._adapters.active)
