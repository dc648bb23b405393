"""Admin, health and coordination calls return the contract's messages and typed errors."""

import pytest
from google.protobuf import json_format

import galactic_client as gc


async def test_models_and_stats(client):
    (model,) = await client.list_models()
    assert model.name == "tiny-llm" and (await client.get_model("tiny-llm")).kind == "llm"
    with pytest.raises(gc.NotFound) as info:
        await client.get_model("missing")
    assert info.value.field == "name"
    stats = await client.stats()
    assert stats.models["tiny-llm"].values["requests_total"] == 3


async def test_adapter_lifecycle(client):
    info = await client.load_adapter("fr", "adapters/fr")
    assert (info.name, info.rank) == ("fr", 8)
    assert [a.name for a in await client.list_adapters()] == ["fr"]
    with pytest.raises(gc.PermissionDenied, match="outside the adapter root"):
        await client.load_adapter("evil", "../../etc")
    await client.unload_adapter("fr", force=True)
    assert await client.list_adapters() == []
    with pytest.raises(gc.NotFound):
        await client.unload_adapter("fr")


@pytest.mark.parametrize("service, status", [("", "SERVING"), ("galactic.v1.Generation", "SERVING")])
async def test_health(client, service, status):
    assert await client.health(service) == status


async def test_health_of_an_unknown_service_is_not_found(client):
    with pytest.raises(gc.NotFound):
        await client.health("galactic.v1.Nope")


async def test_coordinate_sends_the_message_it_is_given(client, coordination_module):
    request = json_format.ParseDict({"site": "paranal", "budget_s": 1.5}, coordination_module.CoordinateRequest())
    response = await client.coordinate(request)
    assert json_format.MessageToDict(response) == {"site": "paranal", "score": 3.0}


async def test_unreachable_daemon_is_unavailable():
    async with gc.AsyncClient("127.0.0.1:1", timeout=3.0) as client:
        with pytest.raises((gc.Unavailable, gc.DeadlineExceeded)):
            await client.health()
        with pytest.raises(gc.DeadlineExceeded, match="not serving"):
            await client.wait_ready(timeout=0.2)
