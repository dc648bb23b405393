"""The channel's service config: retries of UNAVAILABLE and round_robin over a fleet."""

import json

import pytest

import galactic_client as gc
from galactic_client.aio import service_config


async def test_unavailable_is_retried_by_the_service_config(client, daemon):
    daemon.admin.fail_first = 1
    models = await client.list_models()
    assert [m.name for m in models] == ["tiny-llm"]
    assert daemon.admin.attempts == 2


async def test_retries_give_up_after_max_attempts(client, daemon):
    daemon.admin.fail_first = 100
    with pytest.raises(gc.Unavailable, match="draining"):
        await client.list_models()
    assert daemon.admin.attempts == json.loads(service_config())["methodConfig"][0]["retryPolicy"]["maxAttempts"]


async def test_round_robin_spreads_calls_over_the_fleet(daemon, second_daemon):
    daemon.admin.name, second_daemon.admin.name = "one", "two"
    async with gc.AsyncClient(f"{daemon.target},{second_daemon.target}", timeout=5.0) as client:
        assert client.target == f"ipv4:{daemon.target},{second_daemon.target}"
        await client.wait_ready()
        # round_robin picks among READY subchannels; the second may connect a moment later,
        # so allow a few calls before both have answered.
        seen = set()
        for _ in range(40):
            seen.update(m.name for m in await client.list_models())
            if seen == {"one", "two"}:
                break
    assert seen == {"one", "two"}
    assert daemon.admin.attempts > 0 and second_daemon.admin.attempts > 0


@pytest.mark.parametrize(
    "target, resolved",
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("galactic.internal:50051", "galactic.internal:50051"),
        ("dns:///galactic.internal:50051", "dns:///galactic.internal:50051"),
        ("10.0.0.1:1, 10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        ("[::1]:1,[fe80::2]:2", "ipv6:[::1]:1,[fe80::2]:2"),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
    ],
)
def test_resolve_target(target, resolved):
    assert gc.resolve_target(target) == resolved


@pytest.mark.parametrize("target", ["a.example:1,b.example:2", "10.0.0.1:1,[::1]:2", "10.0.0.1,10.0.0.2:2"])
def test_resolve_target_rejects_unexpressible_lists(target):
    with pytest.raises(ValueError):
        gc.resolve_target(target)


def test_service_config_covers_every_service():
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    services = {n["service"] for n in config["methodConfig"][0]["name"]}
    assert {"galactic.v1.Generation", "galactic.v1.Inference", "galactic.v1.Admin", "galactic.v1.Coordination"} <= services
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
