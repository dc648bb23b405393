"""The Generation service end to end: galactic_client -> gRPC on loopback -> galacticd ->
LLMEngine on a tiny local Llama. Greedy output is compared with `model.generate`."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from galactic.v1 import generation_pb2, generation_pb2_grpc
from galactic_client import AsyncClient, errors
from galactic_client.generation import Chunk, Final
from fault_injection import Held, request_id_ends
from llm_helpers import PROMPTS, drain_idle_results, greedy_reference


@pytest.fixture
async def client(llm_daemon):
    c = AsyncClient(f"127.0.0.1:{llm_daemon.port}", timeout=60)
    yield c
    await c.close()


def engine_of(daemon):
    return daemon.engines["tiny"]


async def test_health_per_service(llm_daemon, channel_to):
    stub = health_pb2_grpc.HealthStub(channel_to(llm_daemon))
    for service in ("", "galactic.v1.Generation", "galactic.v1.Admin"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_concurrent_greedy_streams_equal_generate(client, reference):
    n = 12

    async def one(prompt):
        ids, text, final = [], "", None
        async for item in client.generate(prompt, max_new_tokens=n):
            if isinstance(item, Chunk):
                ids.extend(item.token_ids)
                text += item.text
            else:
                final = item
        return ids, text, final

    results = await asyncio.gather(*(one(p) for p in PROMPTS))
    for prompt, (ids, text, final) in zip(PROMPTS, results):
        want = greedy_reference(reference, prompt, n)
        # EOS may end a stream early; everything produced must match the reference.
        assert ids == want[:len(ids)], prompt
        assert final.finish_reason in ("LENGTH", "EOS")
        assert final.completion_tokens == len(ids)
        assert final.prompt_tokens > 0
        assert 0 <= final.queue_ms <= final.ttft_ms <= final.total_ms


@pytest.mark.parametrize("params, code, field", [
    ({"top_p": 2.0}, grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p"),
    ({"temperature": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature"),
    ({"adapter": "nope"}, grpc.StatusCode.NOT_FOUND, "adapter"),
    ({"model": "other"}, grpc.StatusCode.NOT_FOUND, "model"),
])
async def test_bad_input_names_the_field(client, params, code, field):
    with pytest.raises(errors.GalacticError) as err:
        await client.generate_text("hello", max_new_tokens=4, **params)
    assert err.value.code == code
    assert err.value.field == field


async def test_chat_messages_go_through_the_chat_template(client, tiny_dir):
    """Messages are rendered by the model's chat template: the prompt the engine counts is
    the template's rendering, not the bare content."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    messages = [{"role": "user", "content": "hi"}]
    rendered = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    text, final = await client.generate_text(messages=messages, max_new_tokens=3, ignore_eos=True)
    assert final.prompt_tokens == len(rendered) > len(tok("hi")["input_ids"])
    assert final.completion_tokens == 3


async def test_session_multiplexes_cancels_one_and_reports_errors(client, llm_daemon, reference, monkeypatch):
    engine = engine_of(llm_daemon)
    # After its first token, "drop" is held until the Cancel reaches the engine: it is still
    # running when cancelled, on any machine.
    Held(monkeypatch, where=request_id_ends("drop"), after_first_token=True)
    async with client.session() as s:
        keep = await s.submit(PROMPTS[0], request_id="keep", max_new_tokens=10)
        drop = await s.submit(PROMPTS[1], request_id="drop", max_new_tokens=200)
        bad = await s.submit(PROMPTS[2], request_id="bad", max_new_tokens=4, top_k=-3)
        with pytest.raises(errors.InvalidArgument) as err:
            async for _ in bad:
                pass
        assert err.value.field == "sampling.top_k"
        await drop.__anext__()  # wait until it is producing, then cancel it alone
        await s.cancel("drop")
        tail = [item async for item in drop]
        final = tail[-1]
        assert isinstance(final, Final) and final.finish_reason == "CANCELLED"
        ids = []
        async for item in keep:
            if isinstance(item, Chunk):
                ids.extend(item.token_ids)
            else:
                assert item.finish_reason in ("LENGTH", "EOS")
        want = greedy_reference(reference, PROMPTS[0], 10)
        assert ids == want[:len(ids)]
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0, timeout=30)


async def test_same_request_id_in_two_sessions(client):
    async with client.session() as a, client.session() as b:
        ra = await a.submit("The quick", request_id="r1", max_new_tokens=3)
        rb = await b.submit("The quick", request_id="r1", max_new_tokens=3)
        ta, fa = await ra.text()
        tb, fb = await rb.text()
    assert ta == tb and fa.completion_tokens == fb.completion_tokens


def finished(reason: str) -> float:
    return REGISTRY.get_sample_value("galactic_llm_requests_finished_total", {"model": "tiny", "reason": reason}) or 0.0


async def test_deadline_frees_the_slot(llm_daemon, channel_to, monkeypatch):
    """A deadline that passes while the request runs ends it DEADLINE inside the scheduler,
    frees its reservation and cache, and the slot serves again. The request's step is held
    until its deadline has passed, so no machine is fast enough to finish it first."""
    engine = engine_of(llm_daemon)
    ended_before = finished("deadline")
    held = Held(monkeypatch)
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    # A session's timeout_ms counts from the daemon's receipt of the Submit (a call's gRPC
    # deadline would count from the client's send, and could pass before it arrives).
    late = generation_pb2.SessionRequest(submit=generation_pb2.Submit(request_id="late", timeout_ms=50, request=(
        generation_pb2.GenerateRequest(prompt="galactic", stopping=generation_pb2.StoppingParams(
            max_new_tokens=480, ignore_eos=True)))))
    call = stub.Session(iter([late]), timeout=60)
    try:
        await held.reached()  # received, admitted, and in a step that cannot end yet
        await asyncio.sleep(0.06)  # the clock past the 50 ms deadline: what this test is about
    finally:
        held.release()
    finals = [f.final for f in [f async for f in call] if f.WhichOneof("frame") == "final"]
    assert [f.finish_reason for f in finals] == [generation_pb2.DEADLINE]
    assert finals[0].usage.completion_tokens <= 1  # the held step's token at most
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0 and e.stats()["kv_cache_tokens"] == 0,
                            timeout=30)
    assert finished("deadline") - ended_before == 1
    assert engine.stats()["reserved_tokens"] == 0
    frames = [f async for f in stub.Generate(generation_pb2.GenerateRequest(
        prompt=PROMPTS[0], stopping=generation_pb2.StoppingParams(max_new_tokens=2, ignore_eos=True)), timeout=60)]
    assert frames[-1].final.usage.completion_tokens == 2  # the freed slot serves again


async def test_client_leaving_early_cancels_on_the_daemon(client, llm_daemon, monkeypatch):
    engine = engine_of(llm_daemon)
    cancelled_before = finished("cancelled")
    Held(monkeypatch, after_first_token=True)  # still running when the cancel arrives, on any machine
    async for item in client.generate(PROMPTS[3], max_new_tokens=400):
        assert isinstance(item, Chunk)  # it was running: a token came out
        break  # the client's generator cancels the call
    # The scheduler lets go first, then the runner (in the model process, a pipe call
    # later): wait for both, re-checked after every step; a slot never freed times out.
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0 and e.stats()["kv_cache_tokens"] == 0,
                            timeout=30)
    assert finished("cancelled") - cancelled_before == 1  # ended CANCELLED, not run to length
    assert engine.stats()["reserved_tokens"] == 0
    monkeypatch.undo()  # the steps of the next request run freely
    _, final = await client.generate_text(PROMPTS[0], max_new_tokens=2)  # the freed slot serves again
    assert final.completion_tokens == 2


async def test_adapters_hot_load_generate_unload(client, llm_daemon, tmp_path):
    info = await client.load_adapter("alpha", "alpha")
    assert info.rank == 4 and info.model == "tiny"
    names = [a.name for a in await client.list_adapters()]
    assert "alpha" in names
    with_adapter, _ = await client.generate_text(PROMPTS[0], adapter="alpha", max_new_tokens=8)
    base, _ = await client.generate_text(PROMPTS[0], max_new_tokens=8)
    assert with_adapter != base  # the fixture's adapters change greedy picks
    with pytest.raises(errors.PermissionDenied):
        await client.load_adapter("evil", str(tmp_path))
    with pytest.raises(errors.NotFound):
        await client.unload_adapter("never-loaded")
    await client.unload_adapter("alpha")
    assert [a.name for a in await client.list_adapters()] == []
    # Unloaded, a request naming it loads root/alpha again on demand (adapters.on_demand).
    again, _ = await client.generate_text(PROMPTS[0], adapter="alpha", max_new_tokens=8)
    assert again == with_adapter
    with pytest.raises(errors.NotFound):
        await client.generate_text(PROMPTS[0], adapter="not-under-the-root", max_new_tokens=2)


async def test_admin_and_metrics_describe_the_model(client, llm_daemon):
    models = await client.list_models()
    assert [m.name for m in models] == ["tiny"]
    assert models[0].kind == "llm" and models[0].parameters > 0
    assert "galactic.v1.Generation" in models[0].services
    await client.generate_text("hello", max_new_tokens=2)
    text = urllib.request.urlopen(f"http://127.0.0.1:{llm_daemon.metrics_port}/metrics", timeout=5).read().decode()
    assert 'galactic_engine_running_requests{model="tiny"}' in text
    assert "galactic_rpc_requests_total" in text


async def test_drain_lets_inflight_stream_finish_and_refuses_new_calls(llm_daemon, channel_to):
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    call = stub.Generate(generation_pb2.GenerateRequest(
        prompt=PROMPTS[0], stopping=generation_pb2.StoppingParams(max_new_tokens=40, ignore_eos=True)), timeout=60)
    first = await call.read()  # the stream is in flight
    assert first.HasField("tokens")
    drain = asyncio.create_task(llm_daemon.drain())
    await llm_daemon.admission.drain_started.wait()  # drain() has begun refusing new calls
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(generation_pb2.GenerateRequest(prompt="late"), timeout=10).read()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    frames = [first]
    while (frame := await call.read()) is not grpc.aio.EOF:
        frames.append(frame)
    assert frames[-1].HasField("final")
    assert frames[-1].final.finish_reason == generation_pb2.LENGTH
    assert sum(len(f.tokens.token_ids) for f in frames if f.HasField("tokens")) == 40
    await drain


async def test_drain_ends_sessions_after_their_requests_and_refuses_new_submits(llm_daemon, client, monkeypatch):
    idle_in_grace = drain_idle_results(monkeypatch, llm_daemon)
    async with client.session() as s:
        running = await s.submit(PROMPTS[0], request_id="running", max_new_tokens=30)
        first = await running.__anext__()  # the request is producing
        assert isinstance(first, Chunk)
        drain = asyncio.create_task(llm_daemon.drain())
        await llm_daemon.admission.drain_started.wait()
        late = await s.submit(PROMPTS[1], request_id="late", max_new_tokens=5)
        with pytest.raises(errors.Unavailable):
            async for _ in late:
                pass
        rest = [item async for item in running]
        assert isinstance(rest[-1], Final) and rest[-1].finish_reason in ("LENGTH", "EOS")
    await drain
    # The open (idle) session did not hold the drain until the grace ran out.
    assert idle_in_grace == [True]


async def test_oversized_prompt_is_refused_before_tokenizing(client):
    with pytest.raises(errors.InvalidArgument) as err:
        await client.generate_text("x" * 2_000_000, max_new_tokens=2)
    assert err.value.field == "prompt"


async def test_malformed_or_escaping_adapters_get_clear_statuses(client, llm_daemon, tmp_path):
    root = llm_daemon.engines["tiny"].config.adapters.resolved_root()
    broken = root / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(errors.InvalidArgument) as err:
        await client.load_adapter("broken", "broken")
    assert err.value.field == "path"
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    sneaky = root / "sneaky"
    sneaky.mkdir()
    (sneaky / "adapter_config.json").symlink_to(outside)
    (sneaky / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(errors.PermissionDenied):
        await client.load_adapter("sneaky", "sneaky")
