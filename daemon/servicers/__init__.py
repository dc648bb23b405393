"""Servicers: protobuf <-> plain dataclasses, nothing else.

Each servicer looks up the engine a request names, translates the message into the engine's
dataclasses, and translates results back. Validation that needs the model (token limits,
adapters) is the engine's; errors are raised as `engines.errors` and mapped to status codes
by the interceptors (`daemon/interceptors/`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Awaitable, Callable, Mapping, TypeVar

import grpc

from daemon.errors import shorten
from engines.errors import NotFound

E = TypeVar("E")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def pick(engines: Mapping[str, E], name: str, field: str = "model") -> E:
    """The engine called `name`; an empty name means the only or first one."""
    if not name:
        if not engines:
            raise NotFound("no model of this kind is loaded", field=field)
        return next(iter(engines.values()))
    try:
        return engines[name]
    except KeyError:
        raise NotFound(f"unknown model {shorten(name)!r} (loaded: {', '.join(engines) or 'none'})",
                       field=field) from None


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's gRPC deadline as an absolute time.monotonic() value, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def answer_concurrently(
    requests: AsyncIterator[Req],
    handle: Callable[[Req], Awaitable[Resp]],
    on_error: Callable[[Req, Exception], Resp],
) -> AsyncIterator[Resp]:
    """The bidi pattern of InferStream and CoordinateStream: one answer per request (see
    `stream_concurrently`, which this is with a one-item stream per request)."""
    async def one(req: Req) -> AsyncIterator[Resp]:
        yield await handle(req)

    async for frame in stream_concurrently(requests, one, on_error):
        yield frame


async def stream_concurrently(
    requests: AsyncIterator[Req],
    handle: Callable[[Req], AsyncIterator[Resp]],
    on_error: Callable[[Req, Exception], Resp],
    until: asyncio.Event | None = None,
) -> AsyncIterator[Resp]:
    """`write_concurrently` for a servicer that yields its responses: the frames are handed
    to this generator as they are made. Leaving it (the client went away) cancels what is
    still pending."""
    out: asyncio.Queue = asyncio.Queue()
    end = object()

    async def put(frame: Resp) -> None:
        out.put_nowait(frame)

    work = asyncio.create_task(write_concurrently(requests, handle, on_error, put, until))
    work.add_done_callback(lambda _: out.put_nowait(end))
    try:
        while (item := await out.get()) is not end:
            yield item
        await work  # re-raises a failure of the incoming stream
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work


async def _failing(exc: Exception) -> AsyncIterator:
    """A request's frames when its handler failed at once: the failure, at the first frame."""
    raise exc
    yield  # pragma: no cover - makes this an async generator


async def write_concurrently(
    requests: AsyncIterator[Req],
    handle: Callable[[Req], AsyncIterator[Resp]],
    on_error: Callable[[Req, Exception], Resp],
    write: Callable[[Resp], Awaitable[None]],
    until: asyncio.Event | None = None,
) -> None:
    """Every request runs as its own task, so the engine's batcher sees them together, and
    writes its frames (`handle(req)` returns an async iterator of one or more, and may start
    the request's work when called) as it makes them, interleaved with
    the others': the frame leaves from the task the engine wakes, with no hand-off to a
    writer task and no extra turn of the event loop per frame. One write at a time (a lock):
    gRPC takes one message in flight per call. A failing request ends with its own error
    frame (`on_error`) and the stream lives on; a failing write, like a failing read of
    `requests`, ends the call with its exception. Leaving (the client went away) cancels
    what is still pending, which drops it from the engine's queue before its step.

    Once `until` is set (the daemon's drain), this returns as soon as no request is left,
    even if the client keeps the stream open: one idle stream must not hold up shutdown.
    """
    lock = asyncio.Lock()
    pending: set[asyncio.Task] = set()
    changed = asyncio.Event()  # a request or the reader ended, or the drain began: re-check
    failures: list[BaseException] = []

    async def send(frame: Resp) -> None:
        async with lock:
            await write(frame)

    async def answer(req: Req, frames: AsyncIterator[Resp]) -> None:
        async with contextlib.aclosing(frames):
            while True:
                try:
                    frame = await anext(frames)
                except StopAsyncIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - a per-request error frame
                    await send(on_error(req, exc))
                    return
                await send(frame)  # outside the try: a failing write fails the call (`finished`)

    def finished(task: asyncio.Task) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())
        changed.set()

    async def read() -> None:
        try:
            async for req in requests:
                # `handle` is called here, as the request arrives: a handler that starts its
                # work when called (KServe queues an LLM request with the engine before it
                # returns) has it queued before this loop's next turn, with the requests
                # that arrived with it, rather than after its task's first turn.
                try:
                    frames = handle(req)
                except Exception as exc:  # noqa: BLE001 - its error frame, from its task
                    frames = _failing(exc)
                task = asyncio.create_task(answer(req, frames))
                pending.add(task)
                task.add_done_callback(finished)
        finally:
            changed.set()  # a failed read re-raises below

    async def wake_on(event: asyncio.Event) -> None:
        await event.wait()
        changed.set()

    reader = asyncio.create_task(read())
    watch = asyncio.create_task(wake_on(until)) if until is not None else None
    try:
        while True:
            await changed.wait()
            changed.clear()
            if failures:
                raise failures[0]
            if not pending:
                if reader.done():
                    await reader  # re-raises a failure of the incoming stream
                    return
                if until is not None and until.is_set():
                    return
    finally:
        if watch is not None:
            watch.cancel()
        reader.cancel()
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
