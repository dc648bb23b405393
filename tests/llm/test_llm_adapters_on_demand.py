"""Adapters loaded on demand: a request naming `root/<name>` loads it once (single flight),
a failed load answers with its error and is remembered (negative cache), on-demand loads
evict only unpinned adapters, and a deadline bounds the wait for a load."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import pytest

from engines.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from engines.llm.adapters import OnDemandLoads
from engines.llm.types import GenerationRequest, SamplingParams
from llm_helpers import PROMPTS, _collect as collect_stream, collect, make_config


@pytest.fixture
def root(adapters_root, tmp_path):
    """A per-test copy of the adapters root (tests break adapters in it)."""
    out = tmp_path / "adapters"
    shutil.copytree(adapters_root, out)
    return out


@pytest.fixture
async def make_engine(tiny_dir):
    from engines.llm.engine import LLMEngine

    engines = []

    async def make(root, **adapters):
        eng = LLMEngine(make_config(tiny_dir, root, llm={"adapters": {"root": str(root), "max_loaded": 3, **adapters}}))
        eng.load(lambda msg: None)
        await eng.start(asyncio.get_running_loop())
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        await eng.stop(5)


def req(rid: str, adapter: str | None, prompt: str = PROMPTS[0], **kw) -> GenerationRequest:
    return GenerationRequest(rid, prompt=prompt, adapter=adapter, sampling=SamplingParams(max_new_tokens=8), **kw)


def names(engine) -> dict[str, bool]:
    return {a.name: a.pinned for a in engine.list_adapters()}


async def test_concurrent_first_requests_share_one_load(make_engine, root):
    from prometheus_client import REGISTRY

    def loads_metric() -> float:  # every engine of the tests is "tiny": compare before and after
        return REGISTRY.get_sample_value("galactic_llm_adapter_loads_on_demand_total", {"model": "tiny"}) or 0.0

    engine = await make_engine(root)
    assert await engine.resolvable_adapters() == ["alpha", "beta", "delta", "gamma"]
    metric_before = loads_metric()
    # generate() is synchronous: the six requests have all joined the load before the
    # event loop can run it, so a second load could only come from a broken single flight.
    streams = [engine.generate(req(f"r{i}", "alpha")) for i in range(6)]
    results = await asyncio.gather(*(collect_stream(s) for s in streams))
    stats = engine.stats()
    assert stats["adapter_loads_on_demand_total"] == 1
    assert stats["adapter_load_failures_total"] == 0
    assert loads_metric() - metric_before == 1
    assert names(engine) == {"alpha": False}
    assert "alpha" not in await engine.resolvable_adapters()
    base, _, _ = await collect(engine, req("base", None))
    assert {tuple(ids) for ids, _, _ in results} != {tuple(base)}, "the adapter should change the output"
    assert len({tuple(ids) for ids, _, _ in results}) == 1
    # The same answer as an explicit load of the same dir; LoadAdapter pins what traffic loaded.
    info = await engine.load_adapter("alpha", "alpha")
    assert info.pinned and names(engine) == {"alpha": True}
    await engine.unload_adapter("alpha")
    await engine.load_adapter("alpha", "alpha")
    explicit, _, _ = await collect(engine, req("explicit", "alpha"))
    assert explicit == results[0][0]
    assert engine.stats()["adapter_loads_on_demand_total"] == 1


def break_base(root):
    (root / "alpha" / "galactic_adapter.json").write_text(json.dumps(
        {"format": "galactic-adapter/1", "base_model_hash": "sha256:" + "0" * 64}))


def break_file(root):
    (root / "beta" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")


@pytest.mark.parametrize("adapter, breaks, error", [
    ("missing", None, NotFound),
    ("alpha", break_base, FailedPrecondition),
    ("beta", break_file, InvalidArgument),
])
async def test_a_failed_load_answers_every_waiter_and_is_remembered(make_engine, root, adapters_root,
                                                                    adapter, breaks, error):
    if breaks is not None:
        breaks(root)
    engine = await make_engine(root, negative_cache_s=3600.0)

    def first_item(rid):  # a name with no directory fails in generate(), a failing load in the stream
        return engine.generate(req(rid, adapter)).__anext__()

    waiting = [first_item(f"w{i}") for i in range(3)] if error is not NotFound else []
    for pending in waiting:
        with pytest.raises(error) as exc:
            await pending
        assert exc.value.field == "adapter"
    with pytest.raises(error) as exc:
        await first_item("after")  # remembered: raised at once
    assert exc.value.field == "adapter"
    assert engine.stats()["adapter_load_failures_total"] == 1  # one load for them all
    assert engine.list_adapters() == []
    # Mended on disk, but within negative_cache_s: the error again, at once, no new load.
    shutil.rmtree(root / adapter, ignore_errors=True)
    shutil.copytree(adapters_root / ("alpha" if adapter == "missing" else adapter), root / adapter)
    with pytest.raises(error):
        engine.generate(req("again", adapter))
    assert engine.stats()["adapter_load_failures_total"] == 1
    # An explicit LoadAdapter forgets the failure; the base model still serves meanwhile.
    await collect(engine, req("base", None))
    assert (await engine.load_adapter(adapter, adapter)).pinned


async def test_negative_cache_expires():
    """OnDemandLoads on a clock the test moves: a lasting failure is answered from the
    cache until negative_cache_s has passed, then the load is tried again."""
    now = [0.0]
    calls = []

    async def load(name):
        calls.append(name)
        if len(calls) == 1:
            raise NotFound("no adapter dir", field="adapter")

    loads = OnDemandLoads(load, negative_cache_s=10.0, clock=lambda: now[0])
    with pytest.raises(NotFound):
        await loads.start("a")
    now[0] = 9.0
    with pytest.raises(NotFound):
        loads.start("a")
    assert calls == ["a"]
    now[0] = 10.0
    await loads.start("a")
    assert calls == ["a", "a"]


async def test_transient_failures_are_not_remembered():
    calls = []

    async def load(name):
        calls.append(name)
        if len(calls) == 1:
            raise ResourceExhausted("every slot is in use")

    loads = OnDemandLoads(load, negative_cache_s=3600.0, clock=lambda: 0.0)
    with pytest.raises(ResourceExhausted):
        await loads.start("a")
    await loads.start("a")
    assert calls == ["a", "a"]


async def test_on_demand_loads_evict_only_unpinned_adapters(make_engine, root):
    engine = await make_engine(root)  # max_loaded = 3
    await engine.load_adapter("alpha", "alpha")  # pinned
    await collect(engine, req("b", "beta"))
    await collect(engine, req("g", "gamma"))
    await collect(engine, req("b2", "beta"))  # gamma is now the unpinned adapter idle longest
    assert names(engine) == {"alpha": True, "beta": False, "gamma": False}
    await collect(engine, req("d", "delta"))
    assert names(engine) == {"alpha": True, "beta": False, "delta": False}
    assert engine.stats()["adapter_evictions_total"] == 1
    assert "gamma" in await engine.resolvable_adapters()
    # Pinned alone: an on-demand load finds no slot it may take, and says so; not remembered.
    for name in ("beta", "delta"):
        await engine.unload_adapter(name)
    await engine.load_adapter("beta", "beta")
    await engine.load_adapter("delta", "delta")
    with pytest.raises(ResourceExhausted):
        await collect(engine, req("g2", "gamma"))
    assert names(engine) == {"alpha": True, "beta": True, "delta": True}
    await engine.unload_adapter("delta")
    await collect(engine, req("g3", "gamma"))
    assert names(engine) == {"alpha": True, "beta": True, "gamma": False}


async def test_the_deadline_bounds_the_wait_for_a_load(make_engine, root):
    engine = await make_engine(root)
    late = engine.generate(req("late", "alpha", deadline=time.monotonic() - 1))
    on_time = engine.generate(req("on-time", "alpha"))
    with pytest.raises(DeadlineExceeded):
        await late.__anext__()
    ids, _, final = await collect_stream(on_time)  # the load went on for the request that waits
    assert final.completion_tokens == len(ids) > 0
    assert names(engine) == {"alpha": False}


async def test_off_by_config_a_request_needs_a_loaded_adapter(make_engine, root):
    engine = await make_engine(root, on_demand=False)
    with pytest.raises(NotFound):
        engine.generate(req("x", "alpha"))
    assert await engine.resolvable_adapters() == []


async def test_a_request_waiting_for_its_adapter_can_be_cancelled(make_engine, root):
    from engines.errors import AlreadyExists
    from engines.llm.types import FinishReason

    engine = await make_engine(root)
    waiting = engine.generate(req("c", "alpha"))
    with pytest.raises(AlreadyExists):  # its id is taken while it waits, as once queued
        engine.generate(req("c", "alpha"))
    other = engine.generate(req("d", "alpha"))
    assert engine.cancel("c")
    ids, _, final = await collect_stream(waiting)
    assert (ids, final.finish_reason, final.completion_tokens) == ([], FinishReason.CANCELLED, 0)
    assert not engine.cancel("c")
    ids, _, final = await collect_stream(other)  # the load went on for the other request
    assert final.finish_reason is not FinishReason.CANCELLED and len(ids) == final.completion_tokens > 0
    assert names(engine) == {"alpha": False}


async def test_a_cancel_ends_a_wait_for_a_held_load_at_once(make_engine, root, monkeypatch):
    """Cancelled while its adapter's load is held inside its read, a request ends CANCELLED
    at once, not when the load ends; the one load (single flight) still completes for the
    request that waits with it."""
    import threading

    from engines.llm import adapters
    from engines.llm.types import FinishReason

    reading, release = threading.Event(), threading.Event()
    read = adapters.read_adapter

    def held_read(path, root=None):
        reading.set()
        assert release.wait(120), "the held load was never released"
        return read(path, root)

    monkeypatch.setattr(adapters, "read_adapter", held_read)
    engine = await make_engine(root)
    cancelled, other = engine.generate(req("c", "alpha")), engine.generate(req("o", "alpha"))
    first = asyncio.create_task(cancelled.__anext__())  # waiting inside the stream, as a Session's task does
    later = asyncio.create_task(other.__anext__())
    try:
        await asyncio.to_thread(reading.wait, 120)
        assert engine.cancel("c")
        final = await first  # while the load is still held: `release` is not set yet
        assert (final.finish_reason, final.completion_tokens) == (FinishReason.CANCELLED, 0)
        assert not release.is_set() and not later.done()
        with pytest.raises(StopAsyncIteration):
            await cancelled.__anext__()
    finally:
        release.set()
    ids, _, final = await collect_stream(other, [await later])
    assert final.finish_reason is not FinishReason.CANCELLED and len(ids) == final.completion_tokens > 0
    assert engine.stats()["adapter_loads_on_demand_total"] == 1 and names(engine) == {"alpha": False}


async def test_a_load_in_progress_does_not_stall_the_running_batch(make_engine, root, monkeypatch):
    """The adapter's files are read off the event loop and off the model lock: a request on
    the base model runs to its end while the load is held inside its read."""
    import threading

    from engines.llm import adapters

    reading, release = threading.Event(), threading.Event()
    read = adapters.read_adapter

    def held_read(path, root=None):
        reading.set()
        release.wait(120)
        return read(path, root)

    monkeypatch.setattr(adapters, "read_adapter", held_read)
    engine = await make_engine(root)
    waiting = engine.generate(req("w", "alpha"))
    first = asyncio.create_task(waiting.__anext__())
    try:
        await asyncio.to_thread(reading.wait, 120)
        ids, _, final = await collect(engine, GenerationRequest(
            "base", prompt=PROMPTS[1], sampling=SamplingParams(max_new_tokens=16, ignore_eos=True)))
        assert final.completion_tokens == len(ids) == 16
        assert not first.done()  # still waiting for its adapter
    finally:
        release.set()
    ids, _, final = await collect_stream(waiting, [await first])
    assert final.completion_tokens == len(ids) > 0 and names(engine) == {"alpha": False}


async def test_a_drain_serves_a_request_that_waits_for_its_adapter(make_engine, root, monkeypatch):
    import threading

    from engines.llm import adapters
    from engines.llm.types import FinishReason

    reading, release = threading.Event(), threading.Event()
    read = adapters.read_adapter

    def held_read(path, root=None):
        reading.set()
        release.wait(120)
        return read(path, root)

    monkeypatch.setattr(adapters, "read_adapter", held_read)
    engine = await make_engine(root)
    waiting = engine.generate(GenerationRequest("w", prompt=PROMPTS[0], adapter="alpha",
                                                sampling=SamplingParams(max_new_tokens=6, ignore_eos=True)))
    first = asyncio.create_task(waiting.__anext__())
    try:
        await asyncio.to_thread(reading.wait, 120)
        stop = asyncio.create_task(engine.stop(120))
        await asyncio.sleep(0)  # one turn of the loop: stop() has begun the drain
        assert engine.state == "draining" and not stop.done()
    finally:
        release.set()
    ids, _, final = await collect_stream(waiting, [await first])
    assert (final.finish_reason, final.completion_tokens, len(ids)) == (FinishReason.LENGTH, 6, 6)
    await stop
    assert engine.state == "stopped"
