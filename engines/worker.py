"""Thread <-> asyncio plumbing shared by the engines.

Models run on a dedicated thread (a forward pass holds the GIL only partly and must never
block the event loop, or gRPC keepalives and the systemd watchdog stall). Results travel
back through `ResultStream`, one per request, via `loop.call_soon_threadsafe`; the worker
sleeps on a condition variable and is woken by `notify()`: batches form on events, never
by polling.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import AsyncIterator, Callable, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
_END = object()


class Outbox:
    """Hands a whole step's results to the event loop in one `call_soon_threadsafe`.

    Each `call_soon_threadsafe` wakes the loop (a pipe write) and makes its thread contend
    for the GIL with the worker; one per token per stream is thousands a second at batch 32.
    Results sent from the worker thread wait here until the step ends and `flush()` runs;
    results sent from any other thread go straight through, so nothing waits for a step
    that may never come.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[Callable[[object], None], object]] = []
        self.thread: threading.Thread | None = None  # the worker thread whose sends are batched

    def send(self, fn: Callable[[object], None], arg: object) -> None:
        if threading.current_thread() is self.thread:
            self._pending.append((fn, arg))  # only the worker thread touches the list
        else:
            self._loop.call_soon_threadsafe(fn, arg)

    def flush(self, then: Callable[[], None] | None = None) -> None:
        """On the worker thread, at the end of a step: deliver everything, then `then()`."""
        batch, self._pending = self._pending, []

        def deliver() -> None:
            for fn, arg in batch:
                fn(arg)
            if then is not None:
                then()

        if batch or then is not None:
            try:
                self._loop.call_soon_threadsafe(deliver)
            except RuntimeError:  # the event loop is closed: nobody is waiting any more
                pass


class ResultStream(Generic[T]):
    """One request's results, written by a worker thread, read by one asyncio consumer.

    The worker calls `put()` any number of times, then exactly one of `close()` or
    `fail()`. The consumer iterates with `async for`; a `fail(exc)` re-raises `exc` in it.
    With an `outbox`, the worker's writes are delivered when it flushes (once per step).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, outbox: Outbox | None = None) -> None:
        self._loop = loop
        self._outbox = outbox
        self._queue: asyncio.Queue = asyncio.Queue()
        self.closed = False  # set on the worker side; read only by the worker

    def _send(self, item: object) -> None:
        if self._outbox is not None:
            self._outbox.send(self._queue.put_nowait, item)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def put(self, item: T) -> None:
        self._send(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._send(_END)

    def fail(self, exc: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self._send(exc)

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

    Faults: a `step()` that raises is logged and the loop goes on, but after `max_failures`
    failures in a row (0 = never) the thread gives up, and a `BaseException` out of a step
    ends it at once; either way `on_exit(reason)` is called from the dying thread, so the
    engine can fail what it holds and its owner can restart it. A worker that dies silently
    would leave every later request waiting forever while health still says SERVING.
    """

    def __init__(self, name: str, step: Callable[[], None], has_work: Callable[[], bool], *,
                 max_failures: int = 0, on_exit: Callable[[str], None] | None = None) -> None:
        self._step = step
        self._has_work = has_work
        self._max_failures = max_failures
        self._on_exit = on_exit
        self._cond = threading.Condition()
        self._stopping = False
        self.exit_reason: str | None = None  # set when the thread gave up or died
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
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.exit_reason is None

    def _run(self) -> None:
        failures = 0
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._has_work():
                        self._cond.wait()
                    if self._stopping:
                        return
                try:
                    self._step()
                    failures = 0
                except Exception as exc:  # step() fails its own requests first
                    failures += 1
                    log.warning("%s: step failed (%d in a row): %r", self._thread.name, failures, exc)
                    if self._max_failures and failures >= self._max_failures:
                        self._exit(f"{failures} steps in a row failed; last: {exc!r}")
                        return
        except BaseException as exc:  # noqa: BLE001 - the thread is dying: say so, once
            log.error("%s: worker thread died: %r", self._thread.name, exc)
            self._exit(f"worker thread died: {exc!r}")

    def _exit(self, reason: str) -> None:
        self.exit_reason = reason
        if self._on_exit is not None:
            self._on_exit(reason)


class SupervisedWorker:
    """A `StepWorker` its engine can replace, and that says when it failed.

    One supervision for every engine: the thread gives up after `max_failures` failed steps
    in a row, or dies of a `BaseException` (see StepWorker); `wait_faulted()` then returns
    why. The daemon's supervisor (daemon/server.py) turns the engine's services NOT_SERVING
    and calls the engine's `restart()`, which calls `replace()` here (stop the dead thread,
    fail what it held, start a fresh one) and then proves the engine with a canary request.
    The object outlives its threads, so `notify` handed out before a restart stays valid.
    """

    def __init__(self, name: str, step: Callable[[], None], has_work: Callable[[], bool], *,
                 max_failures: int) -> None:
        self._make = lambda: StepWorker(name, step, has_work, max_failures=max_failures, on_exit=self._exited)
        self._worker = self._make()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._faulted: asyncio.Event | None = None
        self.reason = ""  # why the last thread exited

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._faulted = asyncio.Event()
        self._worker.start()

    def _exited(self, reason: str) -> None:  # on the dying worker thread
        self.reason = reason
        try:
            self._loop.call_soon_threadsafe(self._faulted.set)
        except RuntimeError:  # the event loop is closed: nobody is left to restart us
            pass

    async def wait_faulted(self) -> str:
        """Return (why) once the worker thread has died or given up after failing steps."""
        await self._faulted.wait()
        return self.reason

    async def replace(self, release: Callable[[], None], join_s: float = 5.0) -> None:
        """Join the old thread, call `release()` (fail what it held: nothing runs it any
        more), then start a fresh thread."""
        await asyncio.to_thread(self._worker.stop, join_s)
        release()
        self._faulted.clear()
        self._worker = self._make()
        self._worker.start()

    def notify(self) -> None:
        self._worker.notify()

    def stop(self, timeout: float | None = None) -> None:
        self._worker.stop(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._worker.thread
