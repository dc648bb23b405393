"""Coordination and Inference end to end: galactic_client -> galacticd -> CoordinationEngine
(the shipped embedded checkpoint), over gRPC on loopback."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from galactic_client import AsyncClient, errors

from .test_coord_servicer import request_pb


@pytest.fixture
async def client(coord_daemon):
    c = AsyncClient(f"127.0.0.1:{coord_daemon.port}", timeout=30)
    yield c
    await c.close()


async def test_health_per_service(coord_daemon, channel_to):
    stub = health_pb2_grpc.HealthStub(channel_to(coord_daemon))
    for service in ("galactic.v1.Coordination", "galactic.v1.Inference"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:  # no LLM configured: not a served service
        await stub.Check(health_pb2.HealthCheckRequest(service="galactic.v1.Generation"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_coordinate_assigns_every_target_or_says_why(client, request_factory):
    req = request_factory(60)
    resp = await client.coordinate(request_pb(req))
    assigned = {a.target_id for a in resp.assignments}
    unassigned = {u.target_id for u in resp.unassigned}
    assert assigned | unassigned == {t.id for t in req.targets} and not assigned & unassigned
    assert all(0.0 <= a.p_success <= 1.0 for a in resp.assignments)
    # Deterministic for a given input.
    assert await client.coordinate(request_pb(req)) == resp


async def test_coordinate_bad_target_names_the_field(client, request_factory):
    bad = request_pb(request_factory(5))
    bad.targets[2].dec_deg = 123.0
    with pytest.raises(errors.InvalidArgument) as err:
        await client.coordinate(bad)
    assert err.value.field == "targets[2].dec_deg"


async def test_infer_scores_feature_tensors(client):
    model = (await client.get_model("coordination"))
    spec = {s.name: list(s.shape) for s in model.inputs}
    n_features = spec["features"][1]
    rng = np.random.default_rng(0)
    out = await client.infer("coordination", {
        "features": rng.normal(size=(7, n_features)).astype(np.float32),
        "site": np.arange(7, dtype=np.int64) % 3})
    assert out["p_success"].shape == (7,) and out["p_success"].dtype == np.float32
    assert np.all((out["p_success"] >= 0) & (out["p_success"] <= 1))
    with pytest.raises(errors.InvalidArgument) as err:
        await client.infer("coordination", {"features": np.zeros((2, n_features), np.float64),
                                            "site": np.zeros(2, np.int64)})
    assert "features" in (err.value.field or "")
    with pytest.raises(errors.NotFound):
        await client.infer("no-such-model", {"features": np.zeros((1, n_features), np.float32)})


async def test_cli_coordinate_prints_an_assignment(coord_daemon):
    import asyncio
    import json
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "training" / "data" / "example_request.json"
    # The daemon runs on this test's event loop, so the CLI runs as a non-blocking subprocess.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "galactic_client.cli", "--target", f"127.0.0.1:{coord_daemon.port}",
        "coordinate", str(example), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    response = json.loads(out)
    targets = {t["id"] for t in json.loads(example.read_text())["targets"]}
    assigned = {a["target_id"] for a in response.get("assignments", [])}
    unassigned = {u["target_id"] for u in response.get("unassigned", [])}
    assert assigned and assigned | unassigned == targets


async def test_infer_stream_answers_each_request_and_errors_alone(coord_daemon, channel_to):
    from galactic.v1 import inference_pb2, inference_pb2_grpc
    from galactic_client.tensors import to_tensor

    stub = inference_pb2_grpc.InferenceStub(channel_to(coord_daemon))
    n_features = 21

    def request(rid: str, rows: int, dtype=np.float32):
        return inference_pb2.InferRequest(model="coordination", request_id=rid, inputs=[
            to_tensor("features", np.zeros((rows, n_features), dtype)),
            to_tensor("site", np.zeros(rows, np.int64))])

    frames = [f async for f in stub.InferStream(
        iter([request("a", 3), request("bad", 2, np.float64), request("b", 5)]), timeout=30)]
    by_id = {f.request_id: f for f in frames}
    assert set(by_id) == {"a", "bad", "b"}
    assert list(by_id["a"].response.outputs[0].shape) == [3]
    assert list(by_id["b"].response.outputs[0].shape) == [5]
    assert by_id["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "features" in by_id["bad"].error.message


async def test_request_beyond_one_batch_budget_is_refused(daemon_factory, request_factory):
    daemon = await daemon_factory({"coordination": {"batching": {"max_batch_pairs": 100}}})
    async with AsyncClient(f"127.0.0.1:{daemon.port}", timeout=30) as client:
        with pytest.raises(errors.InvalidArgument) as err:
            await client.coordinate(request_pb(request_factory(20)))  # 20 targets x 7 sites = 140 pairs
        assert err.value.field == "targets"
        small = await client.coordinate(request_pb(request_factory(10)))  # 70 pairs: served
        assert len(small.assignments) + len(small.unassigned) == 10


async def test_client_infer_stream_wrappers_async_and_sync(client, coord_daemon):
    import asyncio

    from galactic_client import Client

    x, site = np.zeros((3, 21), np.float32), np.zeros(3, np.int64)
    async with client.infer_stream() as stream:
        futures = [await stream.submit("coordination", {"features": x, "site": site}) for _ in range(4)]
        bad = await stream.submit("coordination", {"features": x.astype(np.float64), "site": site})
        outs = await asyncio.gather(*futures)
        assert all(o["p_success"].shape == (3,) for o in outs)
        with pytest.raises(errors.InvalidArgument):  # the typed error, for that request alone
            await bad
        assert (await stream.infer("coordination", {"features": x, "site": site}))["expected_snr"].shape == (3,)

    def blocking() -> tuple[int, type]:  # the daemon needs this loop: the sync client runs on a thread
        with Client(f"127.0.0.1:{coord_daemon.port}") as c, c.infer_stream() as s:
            ok = s.submit("coordination", {"features": x, "site": site}).result(30)
            try:
                s.infer("no-such-model", {"features": x, "site": site})
            except errors.GalacticError as exc:
                return ok["p_success"].shape[0], type(exc)
        return 0, type(None)

    assert await asyncio.to_thread(blocking) == (3, errors.NotFound)


async def test_cli_coordinate_follow_prints_a_plan_per_change(coord_daemon):
    import asyncio
    import json
    import sys
    from pathlib import Path

    example = json.loads((Path(__file__).resolve().parents[2] / "training/data/example_request.json").read_text())
    first = example["targets"][0]["id"]
    events = [
        {"open": {k: example[k] for k in ("timeUnix", "observatories", "targets")}},
        {"event_id": "alert-1", "upsert": {"targets": [{"id": "sn-x", "ra_deg": 150.0, "dec_deg": -20.0,
                                                        "magnitude": 18.0, "band": "BAND_R", "exposure_s": 60.0,
                                                        "value": 50.0, "time_critical": True}]}},
        {"event_id": "bad", "upsert": {"targets": [{"id": "sn-y", "ra_deg": 999.0}]}},
        {"event_id": "gone", "retract": {"target_ids": [first]}},
        {"event_id": "full", "plan": {}},
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "galactic_client.cli", "--target", f"127.0.0.1:{coord_daemon.port}",
        "coordinate", "--follow", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate("\n".join(json.dumps(e) for e in events).encode()), 60)
    assert proc.returncode == 0, err.decode()
    frames = [json.loads(line) for line in out.decode().splitlines()]
    errors_ = [f for f in frames if "error" in f]
    assert [f["event_ids"] for f in errors_] == [["bad"]] and "ra_deg" in errors_[0]["error"]["message"]
    updates = [f for f in frames if "update" in f]
    answered = [i for f in updates for i in f["event_ids"]]
    assert {"alert-1", "gone", "full"} <= set(answered)  # coalescing may merge some into one plan
    assert "full" in updates[-1]["update"]
