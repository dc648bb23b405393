"""The engine contract shared by every model kind.

An engine owns one model (or one family: a base LLM and its adapters). The daemon builds it
from its config section through the registry in `daemon/registry.py`, calls `load()` on a
worker thread while systemd waits (EXTEND_TIMEOUT_USEC), `start()` on the event loop, and
`stop()` on drain. Request-level methods are engine-specific (an LLM streams tokens, a
tensor model answers once) and live on the concrete classes; this protocol is only what
the daemon needs to run, describe and drain any engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable


class LoadCancelled(Exception):
    """Raised by a `load()` progress callback when the daemon is asked to stop mid-load;
    loaders let it propagate (a half-loaded or half-trained model is never kept)."""


@dataclass(frozen=True)
class ModelInfo:
    """What Admin.ListModels / GetModel report for one served model."""

    name: str
    kind: str  # registry kind, e.g. "llm", "coordination"
    version: str
    state: str  # "loading" | "ready" | "draining" | "stopped" | "failed"
    device: str
    parameters: int
    memory_bytes: int  # weights (+ caches where known) on the model's device
    config: dict[str, Any] = field(default_factory=dict)
    services: tuple[str, ...] = ()  # fully-qualified gRPC services this model backs


@runtime_checkable
class Engine(Protocol):
    name: str

    @property
    def version(self) -> str:
        """The served weights' version, as `info().version`; cheap (front ends read it on
        every request, where `info()` copies the whole config)."""

    def load(self, progress: Callable[[str], None]) -> None:
        """Blocking: read weights, build the model, warm it up. Runs on a worker thread.

        `progress` is called with a short phrase now and then (every few seconds in long
        loads) so the daemon can extend systemd's start timeout; it raises LoadCancelled
        when a stop was requested. Raise on failure (the daemon exits non-zero, naming it).
        """

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the engine's worker thread(s); requests may arrive once this returns."""

    async def stop(self, grace_s: float) -> None:
        """Stop accepting work, let in-flight requests finish within `grace_s`, then stop."""

    def info(self) -> ModelInfo:
        """A snapshot for Admin; cheap and thread-safe."""

    def stats(self) -> dict[str, float]:
        """Counters and gauges for Admin.GetStats (names are stable, units in the name)."""

    async def wait_faulted(self) -> str:
        """Return (why) once the engine's worker has died or given up after failing steps
        in a row; the daemon then marks it NOT_SERVING and calls `restart()`."""

    async def restart(self) -> None:
        """Fail what the dead worker held (Unavailable), start a fresh one and prove it
        with a canary request; raise if the canary fails (the daemon retries, backing off)."""
