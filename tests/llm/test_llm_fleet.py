"""A fleet: daemons that share one adapters root answer a request naming an adapter the same,
whichever host serves it, with no LoadAdapter anywhere (adapters load on demand); a host
restarted on the same root serves the same answers. Daemons run the default model process."""

from __future__ import annotations

import asyncio
import json

import pytest

import galactic_client as gc
from llm_helpers import PROMPTS
from sections import merge

# No metrics endpoint: one per process would be shared by the two daemons.
FLEET = {"telemetry": {"metrics_listen": ""}}
ADAPTERS = ("alpha", "gamma")
ASKED = [(adapter, prompt) for adapter in ADAPTERS for prompt in PROMPTS[:2]]


async def ask(client, adapter: str, prompt: str) -> str:
    text, final = await client.generate_text(prompt, adapter=adapter, max_new_tokens=8, temperature=0.0)
    assert final.completion_tokens > 0
    return text


async def stats(daemon) -> dict[str, float]:
    async with gc.AsyncClient(f"127.0.0.1:{daemon.port}", timeout=30.0) as client:
        return dict((await client.stats()).models["tiny"].values)


async def rounds_until(fleet, want: dict[tuple[str, str], str], done) -> int:
    """Ask every (adapter, prompt) through the fleet, concurrently, round after round, until
    `done()`; every answer must equal the single host's. round_robin spreads the calls over
    the hosts READY now; a host that just came up joins whenever its subchannel connects,
    so the rounds end on that event, under a generous bound."""
    n = 0
    async with asyncio.timeout(240):
        while not await done():
            answers = await asyncio.gather(*(ask(fleet, a, p) for a, p in ASKED))
            assert dict(zip(ASKED, answers)) == want
            n += 1
    return n


@pytest.mark.slow
async def test_a_fleet_on_one_root_answers_the_same_on_every_host(llm_daemon_with):
    one = await llm_daemon_with(FLEET)
    two = await llm_daemon_with(FLEET)  # the same test's root: tests/llm/conftest.py copies it once
    async with gc.AsyncClient(f"127.0.0.1:{one.port}", timeout=60.0) as solo:
        want = {(a, p): await ask(solo, a, p) for a, p in ASKED}
        base, _ = await solo.generate_text(PROMPTS[0], max_new_tokens=8, temperature=0.0)
    assert want[("alpha", PROMPTS[0])] != base and want[("alpha", PROMPTS[0])] != want[("gamma", PROMPTS[0])]
    served_alone = (await stats(one))["requests_finished_total"]

    async with gc.AsyncClient(f"127.0.0.1:{one.port},127.0.0.1:{two.port}", timeout=60.0) as fleet:
        async def both_served() -> bool:  # two loaded both adapters for fleet calls; one served some
            s1, s2 = await stats(one), await stats(two)
            return s2["adapter_loads_on_demand_total"] == 2 and s1["requests_finished_total"] > served_alone

        await rounds_until(fleet, want, both_served)
        assert (await stats(one))["adapter_loads_on_demand_total"] == 2  # loaded once each, by the solo calls

        # Host two restarts: drained, then a new daemon on the same port and the same root.
        port = two.port
        await two.drain()
        answers = await asyncio.gather(*(ask(fleet, a, p) for a, p in ASKED))  # one alone meanwhile
        assert dict(zip(ASKED, answers)) == want
        again = await llm_daemon_with(merge(FLEET, {"server": {"listen": f"127.0.0.1:{port}"}}))
        assert again.port == port and (await stats(again))["adapters_loaded"] == 0  # it forgot them

        async def restarted_serves() -> bool:
            return (await stats(again))["adapter_loads_on_demand_total"] == 2

        await rounds_until(fleet, want, restarted_serves)


async def test_failed_loads_answer_with_their_status_and_listing_shows_states(llm_daemon_with, tmp_path):
    daemon = await llm_daemon_with(FLEET)
    root = tmp_path / "adapters"
    (root / "alpha" / "galactic_adapter.json").write_text(json.dumps(
        {"format": "galactic-adapter/1", "base_model_hash": "sha256:" + "0" * 64}))
    (root / "beta" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    async with gc.AsyncClient(f"127.0.0.1:{daemon.port}", timeout=60.0) as client:
        for adapter, error in [("missing", gc.NotFound), ("alpha", gc.FailedPrecondition),
                               ("beta", gc.InvalidArgument)]:
            for _ in range(2):  # the second is answered from the negative cache
                with pytest.raises(error, match="adapter"):
                    await ask(client, adapter, PROMPTS[0])
        assert (await stats(daemon))["adapter_load_failures_total"] == 3
        listing = await client.adapter_listing()
        assert (listing.model, list(listing.adapters), list(listing.resolvable)) == (
            "tiny", [], ["alpha", "beta", "delta", "gamma"])
        await ask(client, "gamma", PROMPTS[0])
        await client.load_adapter("delta", "delta")
        listing = await client.adapter_listing()
        assert {a.name: a.pinned for a in listing.adapters} == {"gamma": False, "delta": True}
        assert list(listing.resolvable) == ["alpha", "beta"]
