"""The dynamic batcher's contract, on a trivial handler."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engines.batching import BatchLimits, DynamicBatcher
from engines.errors import DeadlineExceeded, ResourceExhausted, Unavailable


class Recorder:
    """A handler that doubles numbers, records its batches, and can be held or made to fail."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch reaches the handler
        self.fail_on: set[int] = set()

    def __call__(self, items):
        self.entered.set()
        assert self.gate.wait(120), "the test never opened the gate"  # teardown opens it
        self.batches.append(list(items))
        if self.fail_on & set(items):
            raise ValueError("boom")
        return [ValueError(f"bad {i}") if i < 0 else 2 * i for i in items]


@pytest.fixture
async def batcher():
    rec = Recorder()
    b = DynamicBatcher("test", rec, BatchLimits(max_batch_size=8, max_queue_delay_s=0.02, max_queue=16))
    await b.start()
    yield b, rec
    rec.gate.set()
    await b.stop(1.0)


async def test_concurrent_requests_share_batches_and_get_their_own_results(batcher):
    b, rec = batcher
    rec.gate.clear()  # the worker is busy with a first request while 16 more queue
    blocker = asyncio.ensure_future(b.submit(100))
    assert await asyncio.to_thread(rec.entered.wait, 30)
    calls = asyncio.gather(*(b.submit(i) for i in range(16)))
    await asyncio.sleep(0)  # each submit queues before its first await
    assert b.stats()["queue_depth"] == 16
    rec.gate.set()
    assert await calls == [2 * i for i in range(16)] and await blocker == 200
    assert rec.batches == [[100], list(range(8)), list(range(8, 16))]  # max_batch_size 8


async def test_a_failing_batch_fails_its_requests_only(batcher):
    b, rec = batcher
    rec.fail_on = {3}
    out = await asyncio.gather(*(b.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(x, ValueError) for x in out)
    rec.fail_on = set()
    assert await b.submit(7) == 14  # the batcher lives on
    per_item = await asyncio.gather(b.submit(1), b.submit(-1), return_exceptions=True)
    assert per_item[0] == 2 and isinstance(per_item[1], ValueError)
    assert b.stats()["failed_batches_total"] == 1


async def test_full_queue_is_refused(batcher):
    b, rec = batcher
    rec.gate.clear()  # hold the worker so the queue fills
    first = asyncio.ensure_future(b.submit(0))
    assert await asyncio.to_thread(rec.entered.wait, 30)  # the first batch is in the (held) worker
    queued = [asyncio.ensure_future(b.submit(i)) for i in range(16)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted):
        await b.submit(99)
    rec.gate.set()
    assert len(await asyncio.gather(first, *queued)) == 17


async def test_expired_and_cancelled_requests_never_reach_the_step(batcher):
    b, rec = batcher
    rec.gate.clear()
    blocker = asyncio.ensure_future(b.submit(1))
    assert await asyncio.to_thread(rec.entered.wait, 30)  # the worker is busy with `blocker`
    doomed = asyncio.ensure_future(b.submit(100, deadline=time.monotonic() + 0.05))
    cancelled = asyncio.ensure_future(b.submit(200))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(DeadlineExceeded):
        await doomed
    rec.gate.set()
    assert await blocker == 2
    assert await b.submit(3) == 6
    seen = {i for batch in rec.batches for i in batch}
    assert 100 not in seen and 200 not in seen
    with pytest.raises(DeadlineExceeded):
        await b.submit(5, deadline=time.monotonic() - 1)


async def test_stop_refuses_new_work():
    b = DynamicBatcher("t", lambda items: list(items), BatchLimits())
    await b.start()
    assert await b.submit(4) == 4
    await b.stop(1.0)
    with pytest.raises(Unavailable):
        await b.submit(1)


async def test_batch_span_links_request_spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    import engines.batching as batching

    old = batching._tracer
    batching._tracer = provider.get_tracer("galactic.batching")
    try:
        # A batch leaves when it is full: the long delay only makes sure all four join it.
        b = DynamicBatcher("linked", lambda items: list(items), BatchLimits(max_batch_size=4, max_queue_delay_s=30.0))
        await b.start()

        async def call(i):
            with tracer.start_as_current_span(f"rpc{i}"):
                return await b.submit(i)

        await asyncio.gather(*(call(i) for i in range(4)))
        await b.stop(1.0)
    finally:
        batching._tracer = old
    spans = exporter.get_finished_spans()
    batch = [s for s in spans if s.name == "linked.batch"]
    rpcs = {s.context.span_id for s in spans if s.name.startswith("rpc")}
    assert len(batch) == 1 and batch[0].attributes["batch.size"] == 4
    assert {link.context.span_id for link in batch[0].links} == rpcs
    # The batch's span never leaks into the caller's context.
    assert not trace.get_current_span().get_span_context().is_valid



async def test_a_worker_fault_is_reported_and_restart_fails_what_it_held():
    """Batches failing max_failed_batches times in a row, or a step that kills the thread,
    make wait_faulted() return; restart() fails every held request (the one in the dead
    step, the one queued behind it) with Unavailable, and a fresh thread serves what follows."""
    from fault_injection import ThreadKill

    kill = threading.Event()

    def handler(items):
        if kill.is_set():
            raise ThreadKill()
        if -7 in items:
            raise ValueError("boom")
        return [2 * i for i in items]

    b = DynamicBatcher("t", handler, BatchLimits(max_batch_size=1, max_queue_delay_s=0.0, max_failed_batches=2))
    await b.start()
    try:
        failing = await asyncio.gather(b.submit(-7), b.submit(-7), return_exceptions=True)
        assert all(isinstance(x, ValueError) for x in failing)
        assert "2 steps in a row failed" in await asyncio.wait_for(b.wait_faulted(), 10)
        await b.restart()
        assert await b.submit(4) == 8

        kill.set()
        held = asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)  # one per batch
        assert "worker thread died" in await asyncio.wait_for(b.wait_faulted(), 10)
        kill.clear()
        await b.restart()
        assert [type(x) for x in await held] == [Unavailable, Unavailable]
        assert await b.submit(5) == 10
        assert b.stats()["queue_depth"] == 0
    finally:
        await b.stop(1.0)


async def test_a_request_that_reaches_the_preferred_cost_starts_a_step_without_waiting_for_company():
    # The queue delay is 60 s: without the preferred cost nothing would run within the test's
    # 30 s bound. A cheap request waits for company; the big one arriving takes it along.
    rec = Recorder()
    b = DynamicBatcher("preferred", rec, BatchLimits(max_batch_size=8, max_queue_delay_s=60.0, preferred_batch_cost=10),
                       cost=lambda item: item)
    await b.start()
    try:
        small = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0)
        assert b.stats()["queue_depth"] == 1 and not rec.entered.is_set()  # waiting for company
        assert await asyncio.wait_for(b.submit(9), 30) == 18  # 1 + 9 queued: the preferred cost
        assert await small == 2
        assert rec.batches == [[1, 9]]
        assert await asyncio.wait_for(b.submit(12), 30) == 24  # alone past the preferred cost
        assert rec.batches[-1] == [12]
    finally:
        await b.stop(1.0)
