"""Shared fixtures: real daemons on port 0, real channels, real sockets.

Engine-specific fixtures (tiny models built in the test) live in tests/llm and
tests/coordination; these build on them through `daemon_factory`.
"""

from __future__ import annotations

import copy
import os

import grpc
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from daemon import config  # noqa: E402
from daemon.server import Daemon  # noqa: E402


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# A daemon on an ephemeral port with no engines; tests add the sections they need.
BASE = {
    "server": {"listen": "127.0.0.1:0", "grace_period_s": 10.0},
    "telemetry": {"metrics_listen": "127.0.0.1:0", "log_level": "warning"},
}


@pytest.fixture
async def daemon_factory():
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
