"""Admin, health and coordination calls against the real daemon return the contract's
messages (the generated stubs) and typed errors."""

import pytest
from google.protobuf import json_format

import galactic_client as gc
from galactic.v1 import admin_pb2, coordination_pb2

from .conftest import LLM

# A small real coordination request: two Chilean sites, dark on 2025-03-10 06:00 UTC.
COORDINATE = {
    "requestId": "c1",
    "timeUnix": 1741584600.0,
    "observatories": [
        {"siteId": "rubin", "forecast": {"seeingArcsec": 0.8, "humidityPct": 30.0}},
        {"siteId": "paranal", "forecast": {"seeingArcsec": 0.7, "humidityPct": 20.0}},
    ],
    "targets": [
        {"id": f"t{i}", "raDeg": 100.0 + 20 * i, "decDeg": -30.0 + 5 * i, "magnitude": 20.0, "band": "BAND_R",
         "exposureS": 60.0, "value": 1.0 + i}
        for i in range(4)
    ],
}


async def test_models_and_stats(client):
    models = {m.name: m for m in await client.list_models()}
    assert set(models) == {LLM, "coordination"}
    assert models[LLM].kind == "llm" and models[LLM].state == admin_pb2.READY
    model = await client.get_model("coordination")
    assert isinstance(model, admin_pb2.ModelInfo) and model.kind == "coordination"
    with pytest.raises(gc.NotFound) as info:
        await client.get_model("missing")
    assert info.value.field == "name"
    await client.generate_text("x", max_new_tokens=1)
    stats = await client.stats()
    assert stats.uptime_s > 0 and stats.models[LLM].values["requests_finished_total"] >= 1


async def test_adapter_lifecycle(client):
    info = await client.load_adapter("fr", "fr")
    assert (info.name, info.rank, info.model) == ("fr", 8, LLM)
    try:
        assert [a.name for a in await client.list_adapters()] == ["fr"]
        _, final = await client.generate_text("x", adapter="fr", max_new_tokens=2, ignore_eos=True)
        assert final.completion_tokens == 2
        with pytest.raises(gc.AlreadyExists) as err:
            await client.load_adapter("fr", "fr")
        assert err.value.field == "name"
        with pytest.raises(gc.PermissionDenied, match="outside the adapter root"):
            await client.load_adapter("evil", "../../etc")
        with pytest.raises(gc.NotFound):
            await client.load_adapter("ghost", "no-such-dir")
    finally:
        await client.unload_adapter("fr", force=True)
    assert await client.list_adapters() == []
    with pytest.raises(gc.NotFound):
        await client.unload_adapter("fr")


@pytest.mark.parametrize("service", ["", "galactic.v1.Generation", "galactic.v1.Coordination",
                                     "galactic.v1.Inference", "galactic.v1.Admin"])
async def test_health(client, service):
    assert await client.health(service) == "SERVING"


async def test_health_of_an_unknown_service_is_not_found(client):
    with pytest.raises(gc.NotFound):
        await client.health("galactic.v1.Nope")


async def test_coordinate_sends_the_message_it_is_given(client):
    request = json_format.ParseDict(COORDINATE, coordination_pb2.CoordinateRequest())
    response = await client.coordinate(request)
    assert isinstance(response, coordination_pb2.CoordinateResponse)
    assert (response.model, response.request_id) == ("coordination", "c1") and response.version
    answered = {a.target_id for a in response.assignments} | {u.target_id for u in response.unassigned}
    assert answered == {"t0", "t1", "t2", "t3"}
    assert {a.site_id for a in response.assignments} <= {"rubin", "paranal"}
    bad = json_format.ParseDict(COORDINATE, coordination_pb2.CoordinateRequest())
    bad.targets[1].dec_deg = 123.0
    with pytest.raises(gc.InvalidArgument) as info:
        await client.coordinate(bad)
    assert info.value.field == "targets[1].dec_deg"


async def test_unreachable_daemon_is_unavailable():
    async with gc.AsyncClient("127.0.0.1:1", timeout=3.0) as client:
        with pytest.raises((gc.Unavailable, gc.DeadlineExceeded)):
            await client.health()
        with pytest.raises(gc.DeadlineExceeded, match="not serving"):
            await client.wait_ready(timeout=0.2)
