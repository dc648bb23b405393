"""Shared fixtures: real daemons on port 0, real channels, real sockets.

Engine-specific fixtures (tiny models built in the test) live in tests/llm and
tests/coordination; these build on them through `daemon_factory`.
"""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from daemon import config  # noqa: E402
from daemon.server import Daemon  # noqa: E402
from sections import COORDINATION, merge  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def daemon_logging():
    """Log as galacticd does off a terminal (daemon/main.py): JSON lines, plain tracebacks.
    Left unconfigured, structlog's console renderer draws every logged exception with rich
    and its locals, which took 3 s a traceback here (12 s of a 13 s fault test)."""
    from daemon import telemetry
    from daemon.config import TelemetryConfig

    telemetry.configure_logging(TelemetryConfig(log_level="warning"))


# A daemon on an ephemeral port with no engines; tests add the sections they need.
BASE = {
    "server": {"listen": "127.0.0.1:0", "grace_period_s": 10.0},
    "openai": {"listen": "127.0.0.1:0"},
    "telemetry": {"metrics_listen": "127.0.0.1:0", "log_level": "warning"},
}


async def _daemons():
    started: list[Daemon] = []

    async def make(sections: dict | None = None, env: dict | None = None) -> Daemon:
        cfg = config.build(merge(BASE, sections or {}))
        d = Daemon(cfg, env or {})
        started.append(d)
        await d.start()
        return d

    yield make
    for d in started:
        await d.drain()  # idempotent: returns at once for a daemon a test already drained


# make(sections, env) -> a started Daemon, drained after the test (or the session: for a
# daemon that many tests share and leave as they found it).
daemon_factory = pytest.fixture(_daemons, name="daemon_factory")
session_daemon_factory = pytest.fixture(_daemons, name="session_daemon_factory", scope="session")


@pytest.fixture
async def coord_daemon(daemon_factory):
    """A daemon serving the embedded coordination model (tests with other needs override it)."""
    return await daemon_factory(COORDINATION)


@pytest.fixture
async def bare_daemon(daemon_factory):
    return await daemon_factory()


@pytest.fixture
async def channel_to():
    channels = []

    def make(daemon: Daemon) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{daemon.port}")
        channels.append(ch)
        return ch

    yield make
    for ch in channels:
        await ch.close()


class HealthWatch:
    """One service's grpc.health.v1 Watch stream, read into a queue of statuses."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.seen: asyncio.Queue = asyncio.Queue()
        self._call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for resp in self._call:
            self.seen.put_nowait(resp.status)

    async def until(self, status) -> None:
        """Return once the stream reports `status` (the statuses before it are skipped)."""
        while await asyncio.wait_for(self.seen.get(), 60) != status:
            pass

    def close(self) -> None:
        self._call.cancel()
        self._task.cancel()


@pytest.fixture
async def watch_health():
    """watch_health(channel, service) -> a HealthWatch, closed after the test."""
    watches: list[HealthWatch] = []

    def make(channel: grpc.aio.Channel, service: str) -> HealthWatch:
        watches.append(HealthWatch(channel, service))
        return watches[-1]

    yield make
    for w in watches:
        w.close()
