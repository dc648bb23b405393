"""Thread <-> asyncio plumbing shared by the engines.

Models run on a dedicated thread (a forward pass holds the GIL only partly and must never
block the event loop, or gRPC keepalives and the systemd watchdog stall). Results travel
back through `ResultStream`, one per request, via `loop.call_soon_threadsafe`; the worker
sleeps on a condition variable and is woken by `notify()`: batches form on events, never
by polling.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable, Generic, TypeVar

T = TypeVar("T")
_END = object()


class ResultStream(Generic[T]):
    """One request's results, written by a worker thread, read by one asyncio consumer.

    The worker calls `put()` any number of times, then exactly one of `close()` or
    `fail()`. The consumer iterates with `async for`; a `fail(exc)` re-raises `exc` in it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self.closed = False  # set on the worker side; read only by the worker

    def put(self, item: T) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    def fail(self, exc: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self._loop.call_soon_threadsafe(self._queue.put_nowait, exc)

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class StepWorker:
    """Runs `step()` on one thread while `has_work()` is true; sleeps until `notify()`.

    `step()` must do one bounded unit of work (one forward pass, one batch) so that new
    arrivals, cancellations and `stop()` are noticed within one step.
    """

    def __init__(self, name: str, step: Callable[[], None], has_work: Callable[[], bool]) -> None:
        self._step = step
        self._has_work = has_work
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._has_work():
                    self._cond.wait()
                if self._stopping:
                    return
            self._step()
