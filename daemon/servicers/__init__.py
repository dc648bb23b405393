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
    """Every request runs as its own task, so the engine's batcher sees them together; the
    frames of each (`handle(req)` yields one or more) leave as they are made, interleaved
    with the others'; a failing request ends with its own error frame (`on_error`) and the
    stream lives on. Leaving the generator (the client went away) cancels what is still
    pending, which drops it from the engine's queue before its step.

    Once `until` is set (the daemon's drain), the stream ends as soon as no request is left
    in it, even if the client keeps it open: one idle stream must not hold up shutdown.
    """
    out: asyncio.Queue = asyncio.Queue()
    pending: set[asyncio.Task] = set()

    async def answer(req: Req) -> None:
        try:
            async with contextlib.aclosing(handle(req)) as frames:
                async for frame in frames:
                    out.put_nowait(frame)
        except Exception as exc:  # noqa: BLE001 - a per-request error frame
            out.put_nowait(on_error(req, exc))

    def finished(task: asyncio.Task) -> None:
        pending.discard(task)
        out.put_nowait(None)  # wake the writer so it can notice the end

    async def read() -> None:
        try:
            async for req in requests:
                task = asyncio.create_task(answer(req))
                pending.add(task)
                task.add_done_callback(finished)
        finally:
            out.put_nowait(None)  # the writer re-checks; a failed read re-raises there

    async def wake_on(event: asyncio.Event) -> None:
        await event.wait()
        out.put_nowait(None)

    reader = asyncio.create_task(read())
    watch = asyncio.create_task(wake_on(until)) if until is not None else None
    try:
        while True:
            item = await out.get()
            if item is not None:
                yield item
            elif not pending and out.empty():
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
