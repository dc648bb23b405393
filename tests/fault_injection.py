"""Faults injected where real ones arise: in an engine's model step, patched on the class.

Shared by the LLM and coordination fault tests (imported by name: tests/ is on sys.path
as the rootdir of tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable


class ThreadKill(BaseException):
    """Not an Exception: nothing in a step catches it, so the worker thread dies."""


class Injected:
    """Replaces `cls.method`: the next calls raise `errors` in turn, one each (with
    `repeat=True` the last one again on every call until `heal()`); then the real method
    runs. `pending` is what is left to raise."""

    def __init__(self, monkeypatch, cls: type, method: str, *errors: BaseException, repeat: bool = False) -> None:
        self.pending, self.repeat = list(errors), repeat
        real = getattr(cls, method)

        def injected(*args, **kwargs):
            if self.pending:
                error = self.pending[0] if self.repeat and len(self.pending) == 1 else self.pending.pop(0)
                raise error
            return real(*args, **kwargs)
        monkeypatch.setattr(cls, method, injected)

    def heal(self) -> None:
        self.pending.clear()


# The running test's Held barriers; monkeypatch removes each at the test's end.
_active: dict[Any, bool] = {}


class Held:
    """A barrier in the LLM engine's model step. A step that serves only held requests
    waits before it reaches the model (the runner's `submit`, in a thread or the model
    process) until every one of them is cancelled (by the client, a Cancel frame, the
    drain) or the test calls `release()` or `permit()`, or another request arrives; then
    it runs for real. A held request cannot finish first, however fast the machine is; it
    advances only in steps that also serve others, so it never blocks them.
    `reached()` returns once a step waits.

    `where(request)` picks the held requests (all by default); with `after_first_token`
    only their decode steps are held, so each streams its first token first. Patched on
    the runner classes and restored by monkeypatch; a step held past `bound_s` fails. A
    step still held when the test ends (its monkeypatch undone) runs: a request the test
    left behind on a shared daemon must not stall the next test's steps."""

    def __init__(self, monkeypatch, where: Callable[[Any], bool] = lambda request: True,
                 after_first_token: bool = False, bound_s: float = 120.0) -> None:
        from engines.llm.process import ProcessRunner
        from engines.llm.runner import ModelRunner
        from engines.llm.scheduler import Scheduler

        self._where, self._after_first, self._bound_s = where, after_first_token, bound_s
        self._entered, self._open = threading.Event(), threading.Event()
        self._permits = self._arrivals = 0
        self._lock = threading.Lock()
        monkeypatch.setitem(_active, self, True)  # removed when the test ends
        for cls in (ModelRunner, ProcessRunner):  # OverlappedProcessRunner submits through ProcessRunner's
            self._patch(monkeypatch, cls)
        add = Scheduler.add

        def arrive(scheduler, seq) -> bool:
            queued = add(scheduler, seq)
            self._arrivals += queued  # a new request must not wait behind a held one
            return queued
        monkeypatch.setattr(Scheduler, "add", arrive)

    def _patch(self, monkeypatch, cls: type) -> None:
        real = cls.submit

        def held(runner, plan):
            rows = list(plan.decode) + [c.seq for c in plan.prefill]
            holdable = plan.decode if self._after_first else rows
            held = [seq for seq in holdable if self._where(seq.request)]
            if held and len(held) == len(rows) and not self._open.is_set():
                self._entered.set()
                end, arrivals = time.monotonic() + self._bound_s, self._arrivals
                # Cancels are flags set from other threads: look at them every 5 ms.
                while not (self._open.wait(0.005) or all(seq.cancelled for seq in held) or self._take_permit()
                           or self._arrivals != arrivals or self not in _active):
                    if time.monotonic() > end:
                        raise TimeoutError("Held: a held step was neither cancelled nor released")
            return real(runner, plan)
        monkeypatch.setattr(cls, "submit", held)

    def _take_permit(self) -> bool:
        with self._lock:
            if self._permits:
                self._permits -= 1
                return True
            return False

    def permit(self, steps: int = 1) -> None:
        """Let `steps` held steps run; the ones after them are held again."""
        with self._lock:
            self._permits += steps

    async def reached(self) -> None:
        assert await asyncio.to_thread(self._entered.wait, 60), "no step reached the barrier"

    def release(self) -> None:
        self._open.set()


def request_id_ends(suffix: str) -> Callable[[Any], bool]:
    """`where` for Held: the request with this id (session ids carry a per-session prefix)."""
    return lambda request: request.request_id.endswith(suffix)
