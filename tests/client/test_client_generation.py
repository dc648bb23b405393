"""Generate streams and multiplexed Sessions against a real server."""

import asyncio

import pytest

import galactic_client as gc


async def test_generate_streams_chunks_then_one_final(client):
    items = [item async for item in client.generate("the quick fox", max_new_tokens=8, seed=1)]
    chunks, final = items[:-1], items[-1]
    assert all(isinstance(c, gc.Chunk) for c in chunks)
    assert [c.text for c in chunks] == ["the ", "quick ", "fox "]
    assert chunks[0].token_ids == (0,) and chunks[0].logprobs == (-0.5,)
    assert final == gc.Final("EOS", prompt_tokens=3, completion_tokens=3, queue_ms=1.0, ttft_ms=2.0, total_ms=3.0)


async def test_generate_text(client):
    text, final = await client.generate_text("hello world")
    assert text == "hello world " and final.finish_reason == "EOS"


async def test_unset_parameters_stay_unset(client, daemon):
    await client.generate_text(messages=[{"role": "user", "content": "hi there"}], temperature=0.0, stop=["\n"])
    async with client.session() as session:
        await (await session.submit("x", top_p=0.9, adapter="fr")).text()
    request = daemon.generation.submitted[-1].request
    assert request.sampling.HasField("top_p") and not request.sampling.HasField("temperature")
    assert request.adapter == "fr" and not request.stopping.HasField("max_new_tokens")


@pytest.mark.parametrize("timeout", [None, 2.5])
async def test_deadline_reaches_the_server(daemon, timeout):
    async with gc.AsyncClient(daemon.target, timeout=7.0) as client:
        await client.generate_text("hi", timeout=timeout)
        await client.health()
    remaining = daemon.generation.time_remaining[-1]
    expected = 7.0 if timeout is None else timeout
    # The wire format rounds the deadline up a little; the point is that it arrives at all.
    assert remaining is not None and expected - 2 < remaining < expected + 0.5


async def test_session_multiplexes_interleaved_requests(client, daemon):
    async with client.session() as session:
        first = await session.submit("@pair a b c d e")
        second = await session.submit("v w x y z", request_id="mine")
        (text1, final1), (text2, final2) = await asyncio.gather(first.text(), second.text())
    assert (text1, text2) == ("a b c d e ", "v w x y z ")
    assert final1.completion_tokens == final2.completion_tokens == 5
    assert second.request_id == "mine" and first.queue_position == 0
    order = daemon.generation.frame_order
    # The server really interleaved them, so the routing by request_id was exercised.
    assert order.index("mine") < len(order) - 1 - order[::-1].index(first.request_id)
    assert daemon.generation.submitted[0].timeout_ms == 10_000  # client default, per request


async def test_session_error_frame_fails_only_its_request(client):
    async with client.session() as session:
        bad = await session.submit("error:RESOURCE_EXHAUSTED:queue: full")
        good = await session.submit("still fine")
        with pytest.raises(gc.ResourceExhausted) as info:
            async for _ in bad:
                pass
        assert info.value.request_id == bad.request_id and info.value.field == "queue"
        text, final = await good.text()
    assert text == "still fine " and final.finish_reason == "EOS"


async def test_session_cancel_sends_a_cancel_frame(client, daemon):
    async with client.session() as session:
        held = await session.submit("hold")
        other = await session.submit("keeps going")
        await held.cancel()
        _, final = await held.text()
        assert final.finish_reason == "CANCELLED"
        assert (await other.text())[0] == "keeps going "
    assert daemon.generation.cancelled == [held.request_id]


async def test_session_rejects_a_live_duplicate_id(client):
    async with client.session() as session:
        request = await session.submit("hold", request_id="dup")
        with pytest.raises(ValueError, match="dup"):
            await session.submit("again", request_id="dup")
        await request.cancel()
        await request.text()


async def test_leaving_a_session_with_live_requests_ends_them(client):
    async with client.session() as session:
        held = await session.submit("hold")
    with pytest.raises(gc.Cancelled):
        await held.text()


async def test_chat_messages(client, daemon):
    await client.generate_text(messages=[("system", "be brief"), {"role": "user", "content": "hi"}])
    async with client.session() as session:
        await (await session.submit(messages=[("user", "hello")])).text()
    turns = daemon.generation.submitted[-1].request.messages.messages
    assert [(t.role, t.content) for t in turns] == [("user", "hello")]
    with pytest.raises(ValueError, match="exactly one"):
        await client.generate_text("both", messages=[("user", "hi")])


async def test_submit_after_the_session_ended_raises(client):
    session = client.session()
    async with session:
        await (await session.submit("one")).text()
    with pytest.raises(gc.Cancelled, match="closed"):
        await session.submit("two")
