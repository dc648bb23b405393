"""The channel's service config: retries of UNAVAILABLE and round_robin over a fleet."""

import asyncio
import json

import pytest

import galactic_client as gc
from galactic_client.aio import service_config


# Daemons of their own (the coordination model loads in milliseconds), named apart; no
# metrics endpoint (one per process: the shared client-test daemon runs beside them).
def coordination(name: str) -> dict:
    return {"coordination": {"name": name}, "telemetry": {"metrics_listen": ""}}


async def refusing(daemon_factory, name: str):
    """A real daemon in its drain's first state: every new call is answered UNAVAILABLE
    ("draining; retry on another host"), as a daemon says between SIGTERM and exit."""
    d = await daemon_factory(coordination(name))
    d.admission.start_drain()
    return d


async def test_unavailable_is_retried_on_another_daemon(daemon_factory, tap_factory):
    refusing_tap = await tap_factory(f"127.0.0.1:{(await refusing(daemon_factory, 'one')).port}")
    serving = await daemon_factory(coordination("two"))
    async with gc.AsyncClient(f"{refusing_tap.target},127.0.0.1:{serving.port}", timeout=5.0) as client:
        # round_robin spreads first attempts over both; every call lands on "two" in the
        # end. Calls go on until one was refused first (the refusing daemon's subchannel may
        # connect any time after the other: the bound is generous, the loop ends on the event).
        async with asyncio.timeout(60):
            while not refusing_tap.calls:
                assert [m.name for m in await client.list_models()] == ["two"]
    assert refusing_tap.calls  # a first attempt was refused with UNAVAILABLE and retried


async def test_retries_give_up_after_max_attempts(daemon_factory, tap_factory):
    tap = await tap_factory(f"127.0.0.1:{(await refusing(daemon_factory, 'one')).port}")
    async with gc.AsyncClient(tap.target, timeout=5.0) as client:
        with pytest.raises(gc.Unavailable, match="draining"):
            await client.list_models()
    assert len(tap.calls) == json.loads(service_config())["methodConfig"][0]["retryPolicy"]["maxAttempts"]


async def test_round_robin_spreads_calls_over_the_fleet(daemon_factory):
    one, two = await daemon_factory(coordination("one")), await daemon_factory(coordination("two"))
    async with gc.AsyncClient(f"127.0.0.1:{one.port},127.0.0.1:{two.port}", timeout=5.0) as client:
        assert client.target == f"ipv4:127.0.0.1:{one.port},127.0.0.1:{two.port}"
        await client.wait_ready()
        # round_robin picks among READY subchannels; the second may connect any time later,
        # so calls go on until both have answered (a generous bound; it ends on the event).
        seen = set()
        async with asyncio.timeout(60):
            while seen != {"one", "two"}:
                seen.update(m.name for m in await client.list_models())
    assert seen == {"one", "two"}


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
