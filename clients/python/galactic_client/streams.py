"""Client ends of the two tensor/coordination bidi streams: PlanStream and InferStream.

`AsyncPlanStream` holds one standing plan on the daemon (Coordination.PlanStream, protocol
1): write events (upsert, retract, site, window, plan) and read `PlanUpdate`s. An error
frame raises its typed exception (its `request_id` is the refused event's id) and the
stream lives on: keep calling `next()`.

`AsyncInferStream` multiplexes Infer calls over one InferStream: `submit()` returns a
future of the outputs, resolved by a background reader that routes frames by request id.
Both write under a lock (grpc.aio allows one write in flight) and end every waiter when
the call ends, so nothing waits forever on a stream that is gone.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from galactic.v1 import coordination_pb2, inference_pb2, tensor_pb2

from .errors import Cancelled, GalacticError, from_code, from_rpc_error, from_status

__all__ = ["AsyncPlanStream", "AsyncInferStream"]

_EOF = object()


class _BidiCall:
    """A started bidi call: serialised writes, and the reason it ended."""

    def __init__(self, open_call: Callable[[], grpc.aio.StreamStreamCall]) -> None:
        self._open_call = open_call
        self.call: grpc.aio.StreamStreamCall | None = None
        self._write_lock = asyncio.Lock()
        self.failure: GalacticError | None = None

    def start(self) -> None:
        self.call = self._open_call()

    async def write(self, frame) -> None:
        if self.call is None:
            raise RuntimeError("use the stream as `async with ... as stream`")
        try:
            async with self._write_lock:
                await self.call.write(frame)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except asyncio.InvalidStateError:
            raise self.failure or Cancelled("stream is closed") from None

    async def done_writing(self) -> None:
        try:
            async with self._write_lock:
                await self.call.done_writing()
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # the call already ended; the reader has recorded why


class _ReadingStream:
    """What both bidi wrappers share: a `_BidiCall` and the task reading its answers.

    `close()` half-closes and waits for the answers still due (the daemon finishes what is
    pending, then ends the call), or with `cancel` cancels the call; leaving the `async with`
    on an exception cancels."""

    _bidi: _BidiCall
    _reader: asyncio.Task | None

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close(cancel=exc_type is not None)

    async def close(self, *, cancel: bool = False) -> None:
        if self._bidi.call is None:
            return
        if cancel:
            self._bidi.call.cancel()
        else:
            await self._bidi.done_writing()
        if self._reader is not None:
            await self._reader


class AsyncPlanStream(_ReadingStream):
    """One standing plan on the daemon; made by `AsyncClient.coordinate_stream()`.

    `async with client.coordinate_stream(time_unix=t, observatories=[...]) as plan:` sends
    the PlanOpen; `await plan.next()` returns the first plan (sequence 1), and each later
    change (or burst of changes) yields one more. Leaving the block half-closes the stream
    (after an exception it cancels it).
    """

    def __init__(self, open_call: Callable[[], grpc.aio.StreamStreamCall], open_event: coordination_pb2.PlanOpen) -> None:
        self._bidi = _BidiCall(open_call)
        self._open = open_event
        self._frames: asyncio.Queue = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self.open_event_id = ""

    async def __aenter__(self) -> AsyncPlanStream:
        self._bidi.start()
        self._reader = asyncio.create_task(self._read(), name="galactic-plan-reader")
        self.open_event_id = await self._send(coordination_pb2.PlanEvent(open=self._open))
        return self


    # -- events: each returns its event id, which the answering frame lists -----------------
    async def upsert(self, *targets: coordination_pb2.Target, event_id: str | None = None) -> str:
        """Add targets, or replace those with a known id."""
        return await self._send(coordination_pb2.PlanEvent(upsert=coordination_pb2.TargetUpsert(targets=targets)),
                                event_id)

    async def retract(self, *target_ids: str, event_id: str | None = None) -> str:
        return await self._send(coordination_pb2.PlanEvent(retract=coordination_pb2.TargetRetract(target_ids=target_ids)),
                                event_id)

    async def update_site(self, site_id: str, *, forecast: coordination_pb2.Conditions | None = None,
                          current: coordination_pb2.Conditions | None = None, open: bool | None = None,
                          capacity: int | None = None, event_id: str | None = None) -> str:
        """Change a site's conditions, close (open=False) or reopen it, or change its capacity."""
        update = coordination_pb2.SiteUpdate(site_id=site_id, forecast=forecast, current=current)
        if open is not None:
            update.open = open
        if capacity is not None:
            update.capacity = capacity
        return await self._send(coordination_pb2.PlanEvent(site=update), event_id)

    async def set_window(self, time_unix: float, window_s: float | None = None, *, event_id: str | None = None) -> str:
        window = coordination_pb2.WindowUpdate(time_unix=time_unix)
        if window_s is not None:
            window.window_s = window_s
        return await self._send(coordination_pb2.PlanEvent(window=window), event_id)

    async def request_plan(self, *, event_id: str | None = None) -> str:
        """Ask for a frame carrying the full plan (PlanUpdate.full)."""
        return await self._send(coordination_pb2.PlanEvent(plan=coordination_pb2.PlanRequest()), event_id)

    async def send(self, event: coordination_pb2.PlanEvent) -> str:
        """Send a ready-made event; an empty event_id is filled in."""
        return await self._send(event, event.event_id or None)

    async def _send(self, event: coordination_pb2.PlanEvent, event_id: str | None = None) -> str:
        event.event_id = event_id or f"e{next(self._ids)}"
        await self._bidi.write(event)
        return event.event_id

    # -- frames ------------------------------------------------------------------------
    async def next_frame(self) -> coordination_pb2.PlanFrame | None:
        """The next raw frame (update or error), or None once the stream has ended."""
        item = await self._frames.get()
        if item is _EOF:
            self._frames.put_nowait(_EOF)  # every later call sees the end too
            if self._bidi.failure is not None:
                raise self._bidi.failure
            return None
        return item

    async def next(self) -> coordination_pb2.PlanUpdate:
        """The next plan. An error frame raises its typed error (request_id: the event id);
        the stream lives on. StopAsyncIteration once the daemon has ended the stream."""
        frame = await self.next_frame()
        if frame is None:
            raise StopAsyncIteration
        if frame.HasField("error"):
            raise from_status(frame.error, request_id=",".join(frame.event_ids))
        return frame.update

    def __aiter__(self) -> AsyncPlanStream:
        return self

    async def __anext__(self) -> coordination_pb2.PlanUpdate:
        return await self.next()

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._bidi.call.read()
                if frame is grpc.aio.EOF:
                    break
                self._frames.put_nowait(frame)
        except grpc.RpcError as exc:
            self._bidi.failure = from_rpc_error(exc)
        except asyncio.CancelledError:
            self._bidi.failure = Cancelled("plan stream cancelled")
        finally:
            self._frames.put_nowait(_EOF)


class AsyncInferStream(_ReadingStream):
    """Many Infer calls over one InferStream; made by `AsyncClient.infer_stream()`.

    `outputs = await (await stream.submit("coordination", {"features": x, "site": s}))`:
    `submit` writes the request and returns a future of its named numpy outputs; an error
    frame fails only that future, with its typed exception.
    """

    def __init__(self, open_call: Callable[[], grpc.aio.StreamStreamCall]) -> None:
        self._bidi = _BidiCall(open_call)
        self._pending: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> AsyncInferStream:
        self._bidi.start()
        self._reader = asyncio.create_task(self._read(), name="galactic-infer-reader")
        return self


    async def submit(self, model: str, inputs: Mapping[str, Any], *, version: str = "",
                     request_id: str | None = None) -> asyncio.Future:
        """Send one request; returns a future of {name: numpy array}."""
        from .tensors import to_tensor

        if self._reader is None:
            raise RuntimeError("use the stream as `async with client.infer_stream() as stream`")
        if self._reader.done():
            raise self._bidi.failure or Cancelled("stream is closed")
        if request_id is None:
            request_id = f"r{next(self._ids)}"
        elif request_id in self._pending:
            raise ValueError(f"request_id {request_id!r} is already pending on this stream")
        tensors = [v if isinstance(v, tensor_pb2.Tensor) else to_tensor(name, v) for name, v in inputs.items()]
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._bidi.write(inference_pb2.InferRequest(model=model, version=version, inputs=tensors,
                                                              request_id=request_id))
        except BaseException:
            self._pending.pop(request_id, None)
            raise
        return future

    async def infer(self, model: str, inputs: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """submit() and wait for the outputs."""
        return await (await self.submit(model, inputs, **kwargs))

    async def _read(self) -> None:
        from .tensors import from_tensor

        try:
            while True:
                frame = await self._bidi.call.read()
                if frame is grpc.aio.EOF:
                    break
                future = self._pending.pop(frame.request_id, None)
                if future is None or future.done():
                    continue
                if frame.HasField("error"):
                    future.set_exception(from_status(frame.error, request_id=frame.request_id))
                else:
                    future.set_result({t.name: from_tensor(t) for t in frame.response.outputs})
        except grpc.RpcError as exc:
            self._bidi.failure = from_rpc_error(exc)
        except asyncio.CancelledError:
            self._bidi.failure = Cancelled("infer stream cancelled")
        finally:
            failure = self._bidi.failure
            for request_id, future in self._pending.items():
                if not future.done():
                    future.set_exception(from_code(failure.code, failure.details, request_id=request_id)
                                         if failure else Cancelled("stream closed before the answer",
                                                                   request_id=request_id))
            self._pending.clear()
