"""Generation service: `Generate` (server streaming) and `Session` (bidi, many requests)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import AsyncIterator, Mapping

from opentelemetry import context as otel_context

from galactic.v1 import generation_pb2 as pb
from galactic.v1 import generation_pb2_grpc

from daemon import tenants
from daemon.config import LimitsConfig
from daemon.errors import shorten, to_status
from daemon.servicers import deadline_of, pick
from daemon.validation import Bounds
from engines.errors import AlreadyExists, GalacticError, InvalidArgument, NotFound, Unavailable
from engines.llm.types import ChatMessage, Constraint, FinalOutput, GenerationRequest, SamplingParams, TokenChunk


def to_constraint(msg: pb.Constraint) -> Constraint | None:
    """The proto's oneof -> the engine's Constraint (the engine compiles and checks it)."""
    kind = msg.WhichOneof("kind")
    if kind is None or (kind == "json_object" and not msg.json_object):
        return None
    return Constraint(kind, "" if kind == "json_object" else getattr(msg, kind))


def to_request(msg: pb.GenerateRequest, request_id: str, deadline: float | None) -> GenerationRequest:
    """protobuf -> engine dataclass. Unset optional fields keep the engine's defaults."""
    which = msg.WhichOneof("input")
    if which is None:
        raise InvalidArgument("set either prompt or messages", field="prompt")
    s, st = msg.sampling, msg.stopping
    defaults = SamplingParams()
    sampling = SamplingParams(
        max_new_tokens=st.max_new_tokens if st.HasField("max_new_tokens") else defaults.max_new_tokens,
        temperature=s.temperature if s.HasField("temperature") else defaults.temperature,
        top_k=s.top_k if s.HasField("top_k") else defaults.top_k,
        top_p=s.top_p if s.HasField("top_p") else defaults.top_p,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else defaults.repetition_penalty,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(st.stop),
        logprobs=msg.logprobs,
        ignore_eos=st.ignore_eos,
        constraint=to_constraint(msg.constraint) if msg.HasField("constraint") else None,
    )
    return GenerationRequest(
        request_id=request_id,
        prompt=msg.prompt if which == "prompt" else None,
        messages=tuple(ChatMessage(m.role, m.content) for m in msg.messages.messages) if which == "messages" else (),
        adapter=msg.adapter if msg.HasField("adapter") else None,
        sampling=sampling,
        priority=msg.priority,
        deadline=deadline,
        trace_context=otel_context.get_current(),
    )


def to_chunk(out: TokenChunk) -> pb.TokenChunk:
    return pb.TokenChunk(token_ids=out.token_ids, text=out.text, logprobs=out.logprobs or ())


def to_final(out: FinalOutput) -> pb.Final:
    t = out.timings
    return pb.Final(
        finish_reason=pb.FinishReason.Value(out.finish_reason.name),
        usage=pb.Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                       cached_prompt_tokens=out.cached_prompt_tokens),
        timings=pb.Timings(queue_ms=t.queue_ms, time_to_first_token_ms=t.ttft_ms, total_ms=t.total_ms),
    )


# Engine fields that the proto spells under another message (GenerateRequest.stopping):
# an error names the field of the request the client sent, or its `.field` misleads.
_PROTO_FIELDS = {"sampling.max_new_tokens": "stopping.max_new_tokens", "sampling.stop": "stopping.stop"}


def start(engine, req):
    """engine.generate(req) for the calling tenant (who is charged for its tokens as the
    engine uses them), its validation errors naming the proto's fields."""
    try:
        return engine.generate(tenants.bind(req))
    except GalacticError as exc:
        exc.field = _PROTO_FIELDS.get(exc.field, exc.field)
        raise


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(self, engines: Mapping[str, object], draining: asyncio.Event | None = None,
                 bounds: Bounds | None = None) -> None:
        self._engines = engines
        self._bounds = bounds or Bounds(LimitsConfig())
        # Set when the daemon starts draining: sessions refuse new Submits and end once
        # their live requests have finished, so one idle session cannot hold up shutdown.
        self._draining = draining or asyncio.Event()

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        engine = pick(self._engines, request.model)
        req = to_request(request, uuid.uuid4().hex, deadline_of(context))
        stream = start(engine, req)
        # If the client cancels, gRPC cancels this task; `close()` then frees the request's
        # slot and cache within one decode step.
        try:
            async for out in stream:
                if isinstance(out, TokenChunk):
                    yield pb.GenerateResponse(tokens=to_chunk(out))
                else:
                    yield pb.GenerateResponse(final=to_final(out))
        finally:
            stream.close()

    async def Session(self, request_iterator, context) -> AsyncIterator[pb.SessionResponse]:
        session = _Session(self._engines, deadline_of(context), self._draining, self._bounds)
        reader = asyncio.create_task(session.read(request_iterator))
        drain_watch = asyncio.create_task(session.wake_on_drain())
        try:
            async for frame in session.frames(reader):
                yield frame
        finally:
            reader.cancel()
            drain_watch.cancel()
            await session.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


_WAKE = object()  # queued when a request or the reader ends, so `frames` re-checks


class _Session:
    """One bidi stream: a reader task for client frames, one task per live request, and a
    single outbound queue so frames of different requests interleave as they are made."""

    def __init__(self, engines: Mapping[str, object], deadline: float | None, draining: asyncio.Event,
                 bounds: Bounds) -> None:
        self._engines = engines
        self._bounds = bounds
        self._deadline = deadline
        self._draining = draining
        self._out: asyncio.Queue = asyncio.Queue()
        self._live: dict[str, tuple[object, asyncio.Task]] = {}
        self._reading = True
        # Client ids are unique within a session only; the engine needs them unique across
        # every live request, so they travel to it under this session's prefix.
        self._prefix = uuid.uuid4().hex[:12] + "/"

    async def read(self, request_iterator) -> None:
        try:
            async for frame in request_iterator:
                kind = frame.WhichOneof("frame")
                if kind == "submit":
                    self._submit(frame.submit)
                elif kind == "cancel":
                    try:
                        self._bounds.check(frame.cancel, "cancel")
                    except InvalidArgument as exc:
                        self._error(frame.cancel.request_id, exc)
                        continue
                    self._cancel(frame.cancel.request_id)
                else:
                    self._error("", InvalidArgument("empty session frame", field="frame"))
        finally:
            self._reading = False
            self._out.put_nowait(_WAKE)

    async def wake_on_drain(self) -> None:
        await self._draining.wait()
        self._out.put_nowait(_WAKE)

    async def frames(self, reader: asyncio.Task) -> AsyncIterator[pb.SessionResponse]:
        # Ends when every request has sent its last frame and either the client has
        # half-closed or the daemon is draining.
        while True:
            item = await self._out.get()
            if item is not _WAKE:
                yield item
            elif not self._live and self._out.empty():
                if not self._reading:
                    await reader  # it has finished reading; re-raises a failure of the stream
                    return
                if self._draining.is_set():
                    return

    def _submit(self, submit: pb.Submit) -> None:
        rid = submit.request_id
        try:
            if self._draining.is_set():
                raise Unavailable("server is draining; submit on another host")
            self._bounds.check(submit, "submit")  # before the engine tokenizes anything
            if not rid:
                raise InvalidArgument("request_id is required", field="submit.request_id")
            if rid in self._live:
                raise AlreadyExists(f"request {shorten(rid)!r} is still running", field="submit.request_id")
            deadline = time.monotonic() + submit.timeout_ms / 1e3 if submit.timeout_ms else self._deadline
            engine = pick(self._engines, submit.request.model, field="submit.request.model")
            stream = start(engine, to_request(submit.request, self._prefix + rid, deadline))
        except Exception as exc:  # noqa: BLE001 - becomes this request's error frame
            self._error(rid, exc)
            return
        # Validated and queued: Accepted goes out before any of its tokens.
        self._out.put_nowait(pb.SessionResponse(
            request_id=rid, accepted=pb.Accepted(queue_position=max(0, engine.waiting_count - 1))))
        self._live[rid] = (engine, asyncio.create_task(self._run(rid, stream)))

    async def _run(self, rid: str, stream) -> None:
        try:
            async for out in stream:
                if isinstance(out, TokenChunk):
                    self._out.put_nowait(pb.SessionResponse(request_id=rid, tokens=to_chunk(out)))
                else:
                    self._out.put_nowait(pb.SessionResponse(request_id=rid, final=to_final(out)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - this request alone fails; the session lives
            self._error(rid, exc)
        finally:
            stream.close()
            self._live.pop(rid, None)
            self._out.put_nowait(_WAKE)

    def _cancel(self, rid: str) -> None:
        live = self._live.get(rid)
        if live is None or not live[0].cancel(self._prefix + rid):
            self._error(rid, NotFound(f"no live request {shorten(rid)!r} in this session", field="cancel.request_id"))

    def _error(self, rid: str, exc: BaseException) -> None:
        # An id past its bound comes back cut, not whole: the client learns which one failed.
        rid = shorten(rid, self._bounds.limits.max_id_chars)
        self._out.put_nowait(pb.SessionResponse(request_id=rid, error=to_status(exc)))

    async def close(self) -> None:
        tasks = [task for _, task in self._live.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
