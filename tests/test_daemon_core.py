"""The daemon's network surface with no engines: health, reflection, metrics, auth, errors."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from galactic.v1 import admin_pb2, admin_pb2_grpc


async def test_health_overall_and_admin_serving(bare_daemon, channel_to):
    stub = health_pb2_grpc.HealthStub(channel_to(bare_daemon))
    for service in ("", "galactic.v1.Admin"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="galactic.v1.Nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_services(bare_daemon, channel_to):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(bare_daemon))
    names = []
    async for resp in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5):
        names = [s.name for s in resp.list_services_response.service]
    assert "galactic.v1.Admin" in names
    assert "grpc.health.v1.Health" in names


async def test_not_found_names_the_field(bare_daemon, channel_to):
    stub = admin_pb2_grpc.AdminStub(channel_to(bare_daemon))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModel(admin_pb2.GetModelRequest(name="missing"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("name:")


async def test_metrics_endpoint_counts_rpcs_and_errors(bare_daemon, channel_to):
    stub = admin_pb2_grpc.AdminStub(channel_to(bare_daemon))
    await stub.GetStats(admin_pb2.GetStatsRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetModel(admin_pb2.GetModelRequest(name="missing"), timeout=5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{bare_daemon.metrics_port}/metrics", timeout=5).read().decode()
    assert 'galactic_rpc_requests_total{method="/galactic.v1.Admin/GetStats"}' in text
    assert 'galactic_rpc_errors_total{code="NOT_FOUND",method="/galactic.v1.Admin/GetModel"}' in text
    assert "galactic_rpc_latency_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text


async def test_bearer_tokens_required_except_for_health(daemon_factory, channel_to, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# ops\ns3cret\n")
    daemon = await daemon_factory({"security": {"api_keys_file": str(keys)}})
    ch = channel_to(daemon)
    admin = admin_pb2_grpc.AdminStub(ch)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.GetStats(admin_pb2.GetStatsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.GetStats(admin_pb2.GetStatsRequest(), timeout=5, metadata=[("authorization", "Bearer nope")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = await admin.GetStats(admin_pb2.GetStatsRequest(), timeout=5, metadata=[("authorization", "Bearer s3cret")])
    assert ok.uptime_s >= 0
    health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_port_in_use_fails_loudly(bare_daemon, daemon_factory):
    with pytest.raises((RuntimeError, OSError)):
        await daemon_factory({"server": {"listen": f"127.0.0.1:{bare_daemon.port}"}})


async def test_drain_refuses_new_calls_and_reports_not_serving(bare_daemon, channel_to):
    ch = channel_to(bare_daemon)
    bare_daemon.admission.start_drain()  # the first step of drain(), observed mid-way
    await bare_daemon.health.enter_graceful_shutdown()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin_pb2_grpc.AdminStub(ch).GetStats(admin_pb2.GetStatsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_calls_before_models_load_are_unavailable(bare_daemon, channel_to):
    bare_daemon.admission.ready = False  # the state between bind and the end of loading
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin_pb2_grpc.AdminStub(channel_to(bare_daemon)).GetStats(admin_pb2.GetStatsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "loading" in err.value.details()


async def test_client_wait_ready_follows_health_to_serving(bare_daemon):
    import asyncio

    from galactic_client import AsyncClient

    await bare_daemon.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    async with AsyncClient(f"127.0.0.1:{bare_daemon.port}") as client:
        waiter = asyncio.create_task(client.wait_ready(timeout=30))

        async def watching() -> None:  # the daemon holds the client's Watch (and answered NOT_SERVING)
            while not bare_daemon.health._watcher_count_by_service.get(""):
                await asyncio.sleep(0.005)

        await asyncio.wait_for(watching(), 30)
        assert not waiter.done()  # still NOT_SERVING
        await bare_daemon.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await waiter


async def test_cli_sends_its_token(daemon_factory, tmp_path):
    import asyncio
    import sys

    keys = tmp_path / "keys"
    keys.write_text("s3cret\n")
    daemon = await daemon_factory({"security": {"api_keys_file": str(keys)}})

    async def cli(*extra):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "galactic_client.cli", "--target", f"127.0.0.1:{daemon.port}", *extra, "stats",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err.decode()

    code, err = await cli()
    assert code == 10 + grpc.StatusCode.UNAUTHENTICATED.value[0], err
    code, err = await cli("--token", "s3cret")
    assert code == 0, err


async def test_admin_mutations_need_an_admin_token(daemon_factory, channel_to, tmp_path):
    keys, admin = tmp_path / "keys", tmp_path / "admin"
    keys.write_text("user-token\n")
    admin.write_text("ops-token\n")
    daemon = await daemon_factory({"security": {"api_keys_file": str(keys), "admin_keys_file": str(admin)}})
    stub = admin_pb2_grpc.AdminStub(channel_to(daemon))
    user = [("authorization", "Bearer user-token")]
    ops = [("authorization", "Bearer ops-token")]
    await stub.GetStats(admin_pb2.GetStatsRequest(), timeout=5, metadata=user)  # reads: any token
    await stub.GetStats(admin_pb2.GetStatsRequest(), timeout=5, metadata=ops)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.LoadAdapter(admin_pb2.LoadAdapterRequest(name="a", path="a"), timeout=5, metadata=user)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:  # past auth; no LLM here, so NOT_FOUND
        await stub.LoadAdapter(admin_pb2.LoadAdapterRequest(name="a", path="a"), timeout=5, metadata=ops)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_start_freezes_what_was_loaded_out_of_the_collectors_reach(daemon_factory):
    # A full collection would otherwise walk every object the models and modules made, a
    # pause of every thread measured at 200-300 ms: the tail of every request's latency.
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    await daemon_factory()
    assert gc.get_freeze_count() > 10_000
