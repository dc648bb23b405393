"""The blocking Client: AsyncClient on a private loop thread.

The servers run on the test's event loop, so the blocking calls run in a worker thread
(`asyncio.to_thread`) to keep that loop serving.
"""

import asyncio
import threading

import pytest

import galactic_client as gc


async def test_sync_client_is_built_on_async_client(daemon):
    def run():
        with gc.Client(daemon.target, timeout=5.0) as client:
            assert isinstance(client.aio, gc.AsyncClient)
            assert client.aio.timeout == 5.0 and client.target == daemon.target
            items = list(client.generate("one two", max_new_tokens=4))
            text, final = client.generate_text("three four")
            return items, text, final, client.health(), client.list_models()

    items, text, final, health, models = await asyncio.to_thread(run)
    assert [i.text for i in items[:-1]] == ["one ", "two "] and isinstance(items[-1], gc.Final)
    assert (text, final.finish_reason, health) == ("three four ", "EOS", "SERVING")
    assert models[0].name == "tiny-llm"


async def test_sync_session(daemon):
    def run():
        with gc.Client(daemon.target) as client, client.session() as session:
            first = session.submit("alpha beta")
            failing = session.submit("error:INVALID_ARGUMENT:sampling.temperature: must be >= 0")
            held = session.submit("hold")
            with pytest.raises(gc.InvalidArgument) as info:
                list(failing)
            held.cancel()
            return list(first), held.text()[1], info.value

    items, held_final, error = await asyncio.to_thread(run)
    assert [c.text for c in items[:-1]] == ["alpha ", "beta "] and items[-1].finish_reason == "EOS"
    assert held_final.finish_reason == "CANCELLED"
    assert error.field == "sampling.temperature"
    assert daemon.generation.cancelled


async def test_sync_errors_are_typed_and_thread_stops(daemon):
    def run():
        before = {t.name for t in threading.enumerate()}
        client = gc.Client(daemon.target)
        assert "galactic-client-loop" in {t.name for t in threading.enumerate()} - before
        try:
            with pytest.raises(gc.NotFound):
                client.get_model("missing")
            with pytest.raises(gc.FailedPrecondition):
                list(client.generate("abort:FAILED_PRECONDITION:adapter: in use"))
        finally:
            client.close()
        client.close()  # idempotent

    await asyncio.to_thread(run)


async def test_breaking_out_of_a_sync_stream_closes_it(daemon):
    def run():
        with gc.Client(daemon.target) as client:
            stream = client.generate("a b c d e f")
            first = next(stream)
            stream.close()  # cancels the call on the loop
            return first, client.health()

    first, health = await asyncio.to_thread(run)
    assert first.text == "a " and health == "SERVING"
