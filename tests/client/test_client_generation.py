"""Generate streams and multiplexed Sessions against the real daemon (the embedded demo LLM)."""

import time

import pytest

import galactic_client as gc

from .conftest import LONG

GREEDY = {"temperature": 0.0, "ignore_eos": True}


async def test_generate_streams_chunks_then_one_final(client):
    items = [item async for item in client.generate("The quick fox", max_new_tokens=8, logprobs=True, **GREEDY)]
    chunks, final = items[:-1], items[-1]
    assert chunks and all(isinstance(c, gc.Chunk) for c in chunks)
    assert isinstance(final, gc.Final) and final.finish_reason == "LENGTH"
    ids = [i for c in chunks for i in c.token_ids]
    assert final.completion_tokens == len(ids) == 8 and final.prompt_tokens > 0
    assert all(len(c.logprobs) == len(c.token_ids) and all(lp <= 0.0 for lp in c.logprobs) for c in chunks)
    assert 0.0 <= final.queue_ms <= final.total_ms and 0.0 < final.ttft_ms <= final.total_ms
    # Greedy is deterministic: the same request streams the same text again.
    text, again = await client.generate_text("The quick fox", max_new_tokens=8, **GREEDY)
    assert text == "".join(c.text for c in chunks) and again.completion_tokens == 8


async def test_unset_parameters_stay_unset(tapped_client, tap):
    await tapped_client.generate_text(messages=[{"role": "user", "content": "hi there"}], temperature=0.0,
                                      stop=["\n"], max_new_tokens=2)
    async with tapped_client.session() as session:
        with pytest.raises(gc.NotFound, match="adapter"):  # the daemon got the adapter's name
            await (await session.submit("x", top_p=0.9, adapter="nope", max_new_tokens=2)).text()
    (generate,) = tap.requests("Generate")
    assert generate.sampling.HasField("temperature") and not generate.sampling.HasField("top_p")
    assert list(generate.stopping.stop) == ["\n"] and not generate.HasField("adapter")
    request = tap.requests("Session")[0].submit.request
    assert request.sampling.HasField("top_p") and not request.sampling.HasField("temperature")
    assert request.adapter == "nope" and request.stopping.max_new_tokens == 2


@pytest.mark.parametrize("timeout", [None, 2.5])
async def test_deadline_reaches_the_server(tap, timeout):
    async with gc.AsyncClient(tap.target, timeout=7.0) as client:
        t0 = time.monotonic()
        await client.generate_text("hi", timeout=timeout, max_new_tokens=1)
        t1 = time.monotonic()
        await client.health()
        t2 = time.monotonic()
    remaining = [c.time_remaining for c in tap.calls]
    expected = 7.0 if timeout is None else timeout
    # What is left on arrival is the deadline less the time on the way, which is at most
    # the call's whole duration; the wire format rounds the deadline up a little.
    assert remaining[0] is not None and expected - (t1 - t0) - 0.05 < remaining[0] < expected + 0.5
    assert remaining[1] is not None and 7.0 - (t2 - t1) - 0.05 < remaining[1] < 7.5  # health: the default


async def test_session_multiplexes_interleaved_requests(tapped_client, tap):
    """Two requests on one session, their frames interleaved by the protocol's order, not by
    timing: the second is submitted after the first has streamed a token, and finishes (3
    tokens) while the first (LONG tokens) still runs; the first then ends only by its Cancel.
    The first is held after its first token except in steps that serve the second too, so
    the second's 3 tokens end long before the first's LONG, on any machine."""
    async with tapped_client.session() as session:
        first = await session.submit("The quick fox", max_new_tokens=LONG, **GREEDY)
        head = await first.__anext__()
        assert isinstance(head, gc.Chunk) and first.queue_position == 0
        second = await session.submit("Lorem ipsum", request_id="mine", max_new_tokens=3, **GREEDY)
        text2, final2 = await second.text()
        await first.cancel()
        text1, final1 = await first.text()
    assert second.request_id == "mine" and final2.finish_reason == "LENGTH" and final2.completion_tokens == 3
    # Only the first's own frames reached it: it was still running when the second finished.
    assert final1.finish_reason == "CANCELLED" and 1 <= final1.completion_tokens < LONG
    alone, _ = await tapped_client.generate_text("Lorem ipsum", max_new_tokens=3, **GREEDY)
    assert text2 == alone
    frames = tap.requests("Session")
    assert [f.WhichOneof("frame") for f in frames] == ["submit", "submit", "cancel"]
    assert frames[0].submit.timeout_ms == 30_000  # the client's default deadline, per request
    assert frames[2].cancel.request_id == first.request_id


async def test_session_error_frame_fails_only_its_request(client):
    async with client.session() as session:
        bad = await session.submit("x", top_p=1.5)
        good = await session.submit("still fine", max_new_tokens=2, **GREEDY)
        with pytest.raises(gc.InvalidArgument) as info:
            async for _ in bad:
                pass
        assert info.value.request_id == bad.request_id and info.value.field == "sampling.top_p"
        text, final = await good.text()
    assert final.finish_reason == "LENGTH" and final.completion_tokens == 2


async def test_session_cancel_sends_a_cancel_frame(tapped_client, tap):
    async with tapped_client.session() as session:
        held = await session.submit("held", max_new_tokens=LONG, **GREEDY)
        other = await session.submit("keeps going", max_new_tokens=3, **GREEDY)
        await held.cancel()
        _, final = await held.text()
        assert final.finish_reason == "CANCELLED"
        assert (await other.text())[1].completion_tokens == 3
    cancels = [f.cancel.request_id for f in tap.requests("Session") if f.HasField("cancel")]
    assert cancels == [held.request_id]


async def test_session_rejects_a_live_duplicate_id(client):
    async with client.session() as session:
        request = await session.submit("held", request_id="dup", max_new_tokens=LONG, **GREEDY)
        with pytest.raises(ValueError, match="dup"):
            await session.submit("again", request_id="dup")
        await request.cancel()
        assert (await request.text())[1].finish_reason == "CANCELLED"


async def test_leaving_a_session_with_live_requests_ends_them(client):
    async with client.session() as session:
        held = await session.submit("held", max_new_tokens=LONG, **GREEDY)
    with pytest.raises(gc.Cancelled):
        await held.text()


async def test_chat_messages(tapped_client, tap):
    await tapped_client.generate_text(messages=[("system", "be brief"), {"role": "user", "content": "hi"}],
                                      max_new_tokens=1)
    async with tapped_client.session() as session:
        _, final = await (await session.submit(messages=[("user", "hello")], max_new_tokens=1)).text()
    assert final.prompt_tokens > 0  # the daemon applied the chat template
    turns = tap.requests("Session")[0].submit.request.messages.messages
    assert [(t.role, t.content) for t in turns] == [("user", "hello")]
    turns = tap.requests("Generate")[0].messages.messages
    assert [(t.role, t.content) for t in turns] == [("system", "be brief"), ("user", "hi")]
    with pytest.raises(ValueError, match="exactly one"):
        await tapped_client.generate_text("both", messages=[("user", "hi")])


async def test_submit_after_the_session_ended_raises(client):
    session = client.session()
    async with session:
        await (await session.submit("one", max_new_tokens=1)).text()
    with pytest.raises(gc.Cancelled, match="closed"):
        await session.submit("two")
