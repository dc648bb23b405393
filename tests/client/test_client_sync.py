"""The blocking Client: AsyncClient on a private loop thread, against the real daemon.

The daemon runs on the test's event loop, so the blocking calls run in a worker thread
(`asyncio.to_thread`) to keep that loop serving.
"""

import asyncio
import threading

import pytest

import galactic_client as gc

from .conftest import LLM, LONG

GREEDY = {"temperature": 0.0, "ignore_eos": True}


async def test_sync_client_is_built_on_async_client(target):
    def run():
        with gc.Client(target, timeout=5.0) as client:
            assert isinstance(client.aio, gc.AsyncClient)
            assert client.aio.timeout == 5.0 and client.target == target
            items = list(client.generate("one two", max_new_tokens=4, **GREEDY))
            text, final = client.generate_text("one two", max_new_tokens=4, **GREEDY)
            return items, text, final, client.health(), client.list_models()

    items, text, final, health, models = await asyncio.to_thread(run)
    assert all(isinstance(i, gc.Chunk) for i in items[:-1]) and isinstance(items[-1], gc.Final)
    assert text == "".join(i.text for i in items[:-1])  # greedy: the same text both ways
    assert (final.finish_reason, final.completion_tokens, health) == ("LENGTH", 4, "SERVING")
    assert LLM in {m.name for m in models}


async def test_sync_session(target):
    def run():
        with gc.Client(target) as client, client.session() as session:
            first = session.submit("alpha beta", max_new_tokens=3, **GREEDY)
            failing = session.submit("x", temperature=-1.0)
            held = session.submit("held", max_new_tokens=LONG, **GREEDY)
            with pytest.raises(gc.InvalidArgument) as info:
                list(failing)
            held.cancel()
            return list(first), held.text()[1], info.value

    items, held_final, error = await asyncio.to_thread(run)
    assert items[-1].finish_reason == "LENGTH" and items[-1].completion_tokens == 3
    assert held_final.finish_reason == "CANCELLED"
    assert error.field == "sampling.temperature"


async def test_sync_errors_are_typed_and_thread_stops(target):
    def run():
        before = {t.name for t in threading.enumerate()}
        client = gc.Client(target)
        assert "galactic-client-loop" in {t.name for t in threading.enumerate()} - before
        try:
            with pytest.raises(gc.NotFound):
                client.get_model("missing")
            with pytest.raises(gc.NotFound) as info:
                list(client.generate("x", adapter="not-loaded"))
            assert info.value.field == "adapter"
        finally:
            client.close()
        client.close()  # idempotent

    await asyncio.to_thread(run)


async def test_breaking_out_of_a_sync_stream_closes_it(target, daemon):
    engine = daemon.engines[LLM]

    def run():
        with gc.Client(target) as client:
            stream = client.generate("a b c", max_new_tokens=LONG, **GREEDY)
            first = next(stream)
            stream.close()  # cancels the call on the loop
            return first, client.health()

    first, health = await asyncio.to_thread(run)
    assert isinstance(first, gc.Chunk) and health == "SERVING"
    # The daemon let the request go (its slot is free), without anyone waiting for its end.
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0, timeout=30)
