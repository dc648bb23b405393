"""Blocking client: `AsyncClient` driven from a private event loop on a daemon thread.

Nothing here talks gRPC. Each method submits the matching `AsyncClient` coroutine to the
loop with `run_coroutine_threadsafe` and waits for it; each async iterator becomes a sync
iterator that bridges one `__anext__` at a time. The client is safe to share between
threads (all channel work happens on the one loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from .aio import DEFAULT_TARGET, AsyncClient, AsyncSession, Chunk, Final, SessionRequest
from .streams import AsyncInferStream, AsyncPlanStream

__all__ = ["Client", "Session", "SyncSessionRequest", "PlanStream", "InferStream"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever on a daemon thread (so it never blocks interpreter exit)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="galactic-client-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync galactic Client cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (or any interruption of the waiting thread) cancels the call too,
            # otherwise it would keep running on the loop.
            future.cancel()
            raise

    def iterate(self, aiterator) -> Iterator[Any]:
        """A sync iterator over an async iterator; closing it closes the async one."""
        try:
            while True:
                try:
                    item = self.run(aiterator.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(aiterator, "aclose", None)
            if aclose is not None and self.loop.is_running():
                self.run(aclose())

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()


def _bridged(name: str):
    """A blocking method that runs AsyncClient.<name> on the client's loop."""
    async_method = getattr(AsyncClient, name)

    @functools.wraps(async_method)
    def method(self: Client, *args: Any, **kwargs: Any):
        return self._runner.run(getattr(self._aio, name)(*args, **kwargs))

    return method


class Client:
    """Blocking client of one daemon or a fleet; same arguments and methods as AsyncClient.

    `with Client("127.0.0.1:50051") as client: text, final = client.generate_text("Hi")`
    """

    def __init__(self, target: str = DEFAULT_TARGET, **kwargs: Any) -> None:
        self._runner = _LoopThread()

        async def make() -> AsyncClient:
            # Built on the loop it will run on: grpc.aio binds a channel to that loop.
            return AsyncClient(target, **kwargs)

        try:
            self._aio = self._runner.run(make())
        except BaseException:
            self._runner.stop()
            raise

    @property
    def aio(self) -> AsyncClient:
        """The AsyncClient this wraps; its coroutines must run on this client's loop."""
        return self._aio

    @property
    def target(self) -> str:
        return self._aio.target

    def close(self) -> None:
        """Close the channel and stop the loop thread."""
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self._aio.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def generate(self, prompt: str | None = None, **kwargs: Any) -> Iterator[Chunk | Final]:
        """Iterate `Chunk`s then one `Final`; see AsyncClient.generate."""
        return self._runner.iterate(self._aio.generate(prompt, **kwargs))

    def session(self, *, timeout: float | None = None) -> Session:
        """A blocking Session; use as `with client.session() as session`."""
        return Session(self._runner, self._aio, timeout)

    def coordinate_stream(self, **kwargs: Any) -> PlanStream:
        """A blocking PlanStream; `with client.coordinate_stream(time_unix=t, ...) as plan`.
        Arguments as AsyncClient.coordinate_stream."""
        return PlanStream(self._runner, self._aio.coordinate_stream(**kwargs))

    def plan_stream(self, open_event: Any, *, timeout: float | None = None) -> PlanStream:
        """coordinate_stream() with a ready-made PlanOpen message."""
        return PlanStream(self._runner, self._aio.plan_stream(open_event, timeout=timeout))

    def infer_stream(self, *, timeout: float | None = None) -> InferStream:
        """A blocking InferStream; `with client.infer_stream() as stream`."""
        return InferStream(self._runner, self._aio.infer_stream(timeout=timeout))

    wait_ready = _bridged("wait_ready")
    reload_model = _bridged("reload_model")
    generate_text = _bridged("generate_text")
    infer = _bridged("infer")
    coordinate = _bridged("coordinate")
    list_models = _bridged("list_models")
    get_model = _bridged("get_model")
    load_adapter = _bridged("load_adapter")
    unload_adapter = _bridged("unload_adapter")
    list_adapters = _bridged("list_adapters")
    adapter_listing = _bridged("adapter_listing")
    stats = _bridged("stats")
    health = _bridged("health")


class SyncSessionRequest:
    """Blocking view of a SessionRequest: iterate for its Chunks and Final."""

    def __init__(self, runner: _LoopThread, request: SessionRequest) -> None:
        self._runner = runner
        self._request = request

    @property
    def request_id(self) -> str:
        return self._request.request_id

    @property
    def final(self) -> Final | None:
        return self._request.final

    def __iter__(self) -> Iterator[Chunk | Final]:
        return self._runner.iterate(self._request)

    def text(self) -> tuple[str, Final]:
        return self._runner.run(self._request.text())

    def cancel(self) -> None:
        self._runner.run(self._request.cancel())


class Session:
    """Blocking view of an AsyncSession."""

    def __init__(self, runner: _LoopThread, aio: AsyncClient, timeout: float | None) -> None:
        self._runner = runner
        self._aio = aio
        self._timeout = timeout
        self._session: AsyncSession | None = None

    def __enter__(self) -> Session:
        async def open_session() -> AsyncSession:
            return await self._aio.session(timeout=self._timeout).__aenter__()

        self._session = self._runner.run(open_session())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._runner.run(self._session.__aexit__(exc_type, exc, tb))

    def submit(self, prompt: str | None = None, **kwargs: Any) -> SyncSessionRequest:
        """Start a request; see AsyncSession.submit."""
        return SyncSessionRequest(self._runner, self._runner.run(self._session.submit(prompt, **kwargs)))

    def cancel(self, request_id: str) -> None:
        self._runner.run(self._session.cancel(request_id))


class PlanStream:
    """Blocking view of an AsyncPlanStream: the same event methods; `next()` blocks for the
    next PlanUpdate (an error frame raises its typed error and the stream lives on;
    StopIteration once the daemon ended it); iterating yields PlanUpdates."""

    def __init__(self, runner: _LoopThread, stream: AsyncPlanStream) -> None:
        self._runner = runner
        self._stream = stream

    @property
    def aio(self) -> AsyncPlanStream:
        return self._stream

    def __enter__(self) -> PlanStream:
        self._runner.run(self._stream.__aenter__())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._runner.run(self._stream.__aexit__(exc_type, exc, tb))

    def close(self, *, cancel: bool = False) -> None:
        self._runner.run(self._stream.close(cancel=cancel))

    def upsert(self, *targets: Any, event_id: str | None = None) -> str:
        return self._runner.run(self._stream.upsert(*targets, event_id=event_id))

    def retract(self, *target_ids: str, event_id: str | None = None) -> str:
        return self._runner.run(self._stream.retract(*target_ids, event_id=event_id))

    def update_site(self, site_id: str, **kwargs: Any) -> str:
        return self._runner.run(self._stream.update_site(site_id, **kwargs))

    def set_window(self, time_unix: float, window_s: float | None = None, *, event_id: str | None = None) -> str:
        return self._runner.run(self._stream.set_window(time_unix, window_s, event_id=event_id))

    def request_plan(self, *, event_id: str | None = None) -> str:
        return self._runner.run(self._stream.request_plan(event_id=event_id))

    def send(self, event: Any) -> str:
        return self._runner.run(self._stream.send(event))

    def next_frame(self) -> Any:
        """The next raw PlanFrame, or None once the stream has ended."""
        return self._runner.run(self._stream.next_frame())

    def next(self) -> Any:
        try:
            return self._runner.run(self._stream.next())
        except StopAsyncIteration:
            raise StopIteration from None

    def __iter__(self) -> Iterator[Any]:
        return self._runner.iterate(self._stream)


class InferStream:
    """Blocking view of an AsyncInferStream: `submit()` returns a concurrent Future of the
    outputs (many may be in flight; the daemon batches them), `infer()` waits for one."""

    def __init__(self, runner: _LoopThread, stream: AsyncInferStream) -> None:
        self._runner = runner
        self._stream = stream

    def __enter__(self) -> InferStream:
        self._runner.run(self._stream.__aenter__())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._runner.run(self._stream.__aexit__(exc_type, exc, tb))

    def submit(self, model: str, inputs: Any, **kwargs: Any) -> concurrent.futures.Future:
        future = self._runner.run(self._stream.submit(model, inputs, **kwargs))

        async def wait() -> Any:
            return await future

        return asyncio.run_coroutine_threadsafe(wait(), self._runner.loop)

    def infer(self, model: str, inputs: Any, **kwargs: Any) -> dict[str, Any]:
        return self._runner.run(self._stream.infer(model, inputs, **kwargs))
