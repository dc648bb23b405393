"""Faults injected where real ones arise: in an engine's model step, patched on the class.

Shared by the LLM and coordination fault tests (imported by name: tests/ is on sys.path
as the rootdir of tests/conftest.py).
"""

from __future__ import annotations


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
