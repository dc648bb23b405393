"""The coordination worker is supervised like the LLM's: batches that keep failing, or a
step that kills the worker thread, turn health NOT_SERVING (Coordination and Inference:
the services that engine backs), fail what the worker held with UNAVAILABLE, restart it,
pass a canary through a real model step, and serve again (SERVING), answering as before;
an LLM served beside it stays SERVING throughout.

Faults are injected where a real one would arise, in the model's forward
(`CoordNet.predict`, patched on the class), against a real daemon on loopback.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engines.coordination.model import CoordNet
from fault_injection import Injected, ThreadKill
from galactic.v1 import coordination_pb2_grpc

from .conftest import make_request
from .test_coord_servicer import request_pb

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
REQUEST = request_pb(make_request(12, seed=3))


# One request per batch, so that N requests are N steps (as max_running = 1 in the LLM test).
COORDINATION = {"coordination": {"batching": {"max_batch_size": 1, "max_queue_delay_ms": 0.0}}}


@pytest.fixture
async def coord_daemon(daemon_factory):
    return await daemon_factory(COORDINATION)


async def coordinate(stub) -> tuple[grpc.StatusCode, object]:
    try:
        return grpc.StatusCode.OK, await stub.Coordinate(REQUEST, timeout=60)
    except grpc.aio.AioRpcError as err:
        return err.code(), None


async def test_repeatedly_failing_batches_restart_the_worker(daemon_factory, channel_to, watch_health, monkeypatch):
    # With the embedded demo LLM beside it: its service must stay SERVING throughout.
    coord_daemon = await daemon_factory({**COORDINATION, "llm": {"path": "embedded"}})
    ch = channel_to(coord_daemon)
    stub = coordination_pb2_grpc.CoordinationStub(ch)
    watches = [watch_health(ch, service) for service in ("galactic.v1.Coordination", "galactic.v1.Inference")]
    for watch in watches:
        await watch.until(SERVING)
    code, before = await coordinate(stub)
    assert code == grpc.StatusCode.OK

    fault = Injected(monkeypatch, CoordNet, "predict", RuntimeError("injected forward failure"), repeat=True)
    # Three failing batches in a row give the worker up; the fourth request is held then
    # (queued or dispatched to the dead worker) and gets UNAVAILABLE.
    results = await asyncio.gather(*(coordinate(stub) for _ in range(4)))
    for watch in watches:
        await watch.until(NOT_SERVING)
    assert sorted(code.name for code, _ in results) == ["INTERNAL", "INTERNAL", "INTERNAL", "UNAVAILABLE"]
    # Down until heal(): every canary fails meanwhile. The fault stays with its engine.
    health = health_pb2_grpc.HealthStub(ch)
    for service, status in [("galactic.v1.Generation", SERVING), ("", NOT_SERVING),
                            ("galactic.v1.Coordination", NOT_SERVING)]:
        assert (await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status == status
    fault.heal()  # the next restart's canary passes
    for watch in watches:
        await watch.until(SERVING)
    assert await coordinate(stub) == (grpc.StatusCode.OK, before)  # the same answer as before the fault
    stats = coord_daemon.engines["coordination"].stats()
    assert stats["queue_depth"] == 0 and stats["failed_batches_total"] >= 3  # more if a canary ran before heal()


async def test_dead_worker_thread_is_restarted(coord_daemon, channel_to, watch_health, monkeypatch):
    ch = channel_to(coord_daemon)
    stub = coordination_pb2_grpc.CoordinationStub(ch)
    watch = watch_health(ch, "galactic.v1.Coordination")
    await watch.until(SERVING)
    Injected(monkeypatch, CoordNet, "predict", ThreadKill())
    assert (await coordinate(stub))[0] == grpc.StatusCode.UNAVAILABLE  # held by the dead worker
    await watch.until(NOT_SERVING)
    await watch.until(SERVING)
    # Served again, several requests at once (one per batch) all answered alike.
    results = await asyncio.gather(*(coordinate(stub) for _ in range(3)))
    assert [code for code, _ in results] == [grpc.StatusCode.OK] * 3
    assert results[0][1] == results[1][1] == results[2][1]


async def test_a_failing_canary_keeps_the_service_down_until_it_passes(coord_daemon, channel_to, watch_health,
                                                                       monkeypatch):
    ch = channel_to(coord_daemon)
    stub = coordination_pb2_grpc.CoordinationStub(ch)
    watch = watch_health(ch, "galactic.v1.Coordination")
    await watch.until(SERVING)
    # The killing step, then two canaries that fail (the supervisor retries the restart
    # with a back-off), then a canary that passes.
    fault = Injected(monkeypatch, CoordNet, "predict", ThreadKill(),
                     RuntimeError("injected canary failure 1"), RuntimeError("injected canary failure 2"))
    assert (await coordinate(stub))[0] == grpc.StatusCode.UNAVAILABLE
    await watch.until(NOT_SERVING)
    await watch.until(SERVING)
    assert fault.pending == []  # both failing canaries ran before health said SERVING
    assert (await coordinate(stub))[0] == grpc.StatusCode.OK
