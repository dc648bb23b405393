"""A bidi Generation.Session on the client: many requests over one stream.

`AsyncSession` writes Submit and Cancel frames and one background task reads the server's
frames, routing each by request_id to the queue of its `SessionRequest`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import grpc

from galactic.v1 import generation_pb2

from .errors import Cancelled, GalacticError, from_code, from_rpc_error, from_status
from .generation import Chunk, Final, build_generate_request, chunk_from_pb, final_from_pb

__all__ = ["AsyncSession", "SessionRequest"]

_CLOSED = object()  # queue sentinel: the request ended without a Final (session gone)


class SessionRequest:
    """One request inside a Session: iterate it for its `Chunk`s and its `Final`.

    An Error frame for this request raises its typed exception here; other requests of the
    session are unaffected. `queue_position` is set once the daemon accepts it.
    """

    def __init__(self, session: AsyncSession, request_id: str) -> None:
        self.request_id = request_id
        self.queue_position: int | None = None
        self.final: Final | None = None
        self._session = session
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> SessionRequest:
        return self

    async def __anext__(self) -> Chunk | Final:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item is _CLOSED:
            self._done = True
            raise Cancelled("session closed before the request finished", request_id=self.request_id)
        if isinstance(item, Final):
            self._done = True
            self.final = item
        return item

    async def text(self) -> tuple[str, Final]:
        """Consume the rest of the request; returns its text and Final."""
        parts = [item.text async for item in self if isinstance(item, Chunk)]
        assert self.final is not None  # __anext__ stops only after a Final or by raising
        return "".join(parts), self.final

    async def cancel(self) -> None:
        """Ask the daemon to cancel this request; it still ends with a Final (CANCELLED)."""
        await self._session.cancel(self.request_id)


class AsyncSession:
    """A bidi Generation.Session: many requests over one stream, routed by request_id.

    One background task reads server frames and puts each on its request's queue, so a
    slow consumer of one request never blocks the others' frames from being read.
    Made by `AsyncClient.session()`: `open_call` starts the gRPC call on entry, and
    `default_timeout_ms` is the deadline of a request submitted without its own.
    """

    def __init__(self, open_call: Callable[[], grpc.aio.StreamStreamCall], *, default_timeout_ms: int) -> None:
        self._open_call = open_call
        self._default_timeout_ms = default_timeout_ms
        self._call = None
        self._reader: asyncio.Task | None = None
        self._requests: dict[str, SessionRequest] = {}
        self._write_lock = asyncio.Lock()  # grpc.aio allows one write in flight at a time
        self._ids = itertools.count(1)
        self._failure: GalacticError | None = None

    async def __aenter__(self) -> AsyncSession:
        self._call = self._open_call()
        self._reader = asyncio.create_task(self._read(), name="galactic-session-reader")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close(cancel=exc_type is not None or bool(self._requests))

    async def close(self, *, cancel: bool = False) -> None:
        """End the session. With live requests (or `cancel`) the call is cancelled, which
        cancels them on the daemon; otherwise the stream is half-closed and drained."""
        if self._call is None:
            return
        if cancel:
            self._call.cancel()
        else:
            try:
                async with self._write_lock:
                    await self._call.done_writing()
            except grpc.RpcError:
                pass  # the stream already failed; the reader has recorded why
        if self._reader is not None:
            await self._reader

    async def submit(
        self,
        prompt: str | None = None,
        *,
        request_id: str | None = None,
        timeout_ms: int | None = None,
        **params: Any,
    ) -> SessionRequest:
        """Start a request; returns its handle at once (iterate it for the results).

        `timeout_ms` is this request's deadline; None uses the client's default timeout,
        0 the session's own deadline. `params` are those of `AsyncClient.generate`.
        """
        if self._call is None:
            raise RuntimeError("use the session as `async with client.session() as session`")
        if self._reader.done():
            # The stream has ended: a request submitted now would wait forever for frames.
            failure = self._failure or Cancelled("session is closed")
            raise from_code(failure.code, failure.details)
        request = build_generate_request(prompt, **params)
        if request_id is None:
            request_id = f"r{next(self._ids)}"
            while request_id in self._requests:
                request_id = f"r{next(self._ids)}"
        elif request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already live in this session")
        if timeout_ms is None:
            timeout_ms = self._default_timeout_ms
        handle = SessionRequest(self, request_id)
        self._requests[request_id] = handle
        frame = generation_pb2.SessionRequest(
            submit=generation_pb2.Submit(request_id=request_id, request=request, timeout_ms=timeout_ms)
        )
        try:
            await self._write(frame)
        except BaseException:
            self._requests.pop(request_id, None)
            raise
        return handle

    async def cancel(self, request_id: str) -> None:
        """Send a Cancel frame for one request; the others keep running."""
        frame = generation_pb2.SessionRequest(cancel=generation_pb2.Cancel(request_id=request_id))
        await self._write(frame)

    async def _write(self, frame: generation_pb2.SessionRequest) -> None:
        try:
            async with self._write_lock:
                await self._call.write(frame)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except asyncio.InvalidStateError:
            # Writing after the call finished: report why it finished.
            raise self._failure or Cancelled("session is closed") from None

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._call.read()
                if frame is grpc.aio.EOF:
                    break
                self._route(frame)
        except grpc.RpcError as exc:
            self._failure = from_rpc_error(exc)
        except asyncio.CancelledError:
            self._failure = Cancelled("session cancelled")
        finally:
            # Every request still live ends now, or its consumer would wait forever.
            failure = self._failure
            for request_id, handle in self._requests.items():
                handle._queue.put_nowait(
                    _CLOSED if failure is None else from_code(failure.code, failure.details, request_id=request_id)
                )
            self._requests.clear()

    def _route(self, frame: generation_pb2.SessionResponse) -> None:
        handle = self._requests.get(frame.request_id)
        if handle is None:
            return  # a late frame of a request already ended; nothing waits for it
        kind = frame.WhichOneof("frame")
        if kind == "accepted":
            handle.queue_position = frame.accepted.queue_position
        elif kind == "tokens":
            handle._queue.put_nowait(chunk_from_pb(frame.tokens))
        elif kind == "final":
            del self._requests[frame.request_id]
            handle._queue.put_nowait(final_from_pb(frame.final))
        elif kind == "error":
            del self._requests[frame.request_id]
            handle._queue.put_nowait(from_status(frame.error, request_id=frame.request_id))
