"""The OpenAI-compatible API through the official `openai` SDK, sync and async, against a real
daemon on port 0: the same engine, tokens and tenants as gRPC, and each error as the SDK's
own exception."""

from __future__ import annotations

import asyncio

import grpc
import openai
import pytest

from fault_injection import Held
from galactic.v1 import generation_pb2 as pb
from galactic.v1 import generation_pb2_grpc

KEYS = """tok-free tenant=free
tok-one tenant=one concurrency=1
"""
PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}]


@pytest.fixture(scope="session")
async def oa_daemon(session_daemon_factory, tiny_dir, adapters_root, tmp_path_factory):
    keys = tmp_path_factory.mktemp("openai-keys") / "keys"
    keys.write_text(KEYS)
    return await session_daemon_factory({
        "llm": {"name": "tiny", "path": str(tiny_dir), "device": "cpu", "runner": "thread",
                "scheduler": {"max_running": 8, "max_batch_tokens": 2048, "max_waiting": 16,
                              "prefill_chunk_tokens": 16, "max_prompt_tokens": 256},
                "adapters": {"root": str(adapters_root), "max_loaded": 3, "preload": {"alpha": "alpha"}}},
        "security": {"api_keys_file": str(keys)},
        # No /metrics endpoint: its registration is process-wide, and this daemon outlives
        # the tests that start their own.
        "telemetry": {"metrics_listen": ""},
    })


def base_url(daemon) -> str:
    return f"http://127.0.0.1:{daemon.openai_port}/v1"


@pytest.fixture
def client(oa_daemon):
    with openai.OpenAI(base_url=base_url(oa_daemon), api_key="tok-free", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(oa_daemon):
    async with openai.AsyncOpenAI(base_url=base_url(oa_daemon), api_key="tok-free", max_retries=0) as c:
        yield c


async def native(daemon, channel_to, request: pb.GenerateRequest) -> tuple[list[int], str, list[float], pb.Final]:
    stub = generation_pb2_grpc.GenerationStub(channel_to(daemon))
    ids, text, logprobs, final = [], "", [], None
    async for resp in stub.Generate(request, metadata=[("authorization", "Bearer tok-free")], timeout=60):
        if resp.HasField("tokens"):
            ids.extend(resp.tokens.token_ids)
            text += resp.tokens.text
            logprobs.extend(resp.tokens.logprobs)
        else:
            final = resp.final
    return ids, text, logprobs, final


def greedy(n: int, **fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(sampling=pb.SamplingParams(temperature=0.0),
                              stopping=pb.StoppingParams(max_new_tokens=n, ignore_eos=True), logprobs=True, **fields)


async def test_models_list_base_and_adapters(client, oa_daemon, adapters_root):
    """The base model, its loaded adapter (alpha) and those a request would load on demand
    (the other directories under adapters.root), each adapter with `parent` naming the base."""
    models = {m.id: m for m in (await asyncio.to_thread(client.models.list)).data}
    assert set(models) == {"tiny", "alpha", "beta", "gamma", "delta"}
    assert models["tiny"].model_extra["parent"] is None
    assert {name: models[name].model_extra["parent"] for name in ("alpha", "beta", "gamma", "delta")} == dict.fromkeys(
        ("alpha", "beta", "gamma", "delta"), "tiny")
    assert models["beta"].model_extra["root"] == str((adapters_root / "beta").resolve())
    assert (await asyncio.to_thread(client.models.retrieve, "alpha")).id == "alpha"
    assert (await asyncio.to_thread(client.models.retrieve, "delta")).model_extra["parent"] == "tiny"


async def test_completion_greedy_tokens_equal_native_generate(client, oa_daemon, channel_to):
    """Sync SDK, not streaming: the same tokens (by their text and log-probability) as the
    native Generate of the same prompt."""
    ids, text, logprobs, final = await native(oa_daemon, channel_to, greedy(12, prompt=PROMPT))
    out = await asyncio.to_thread(client.completions.create, model="tiny", prompt=PROMPT, max_tokens=12,
                                  temperature=0, logprobs=0, extra_body={"ignore_eos": True})
    choice = out.choices[0]
    assert choice.text == text and choice.finish_reason == "length"
    tok = oa_daemon.engines["tiny"].tokenizer
    assert choice.logprobs.tokens == [tok.decode([i]) for i in ids]
    assert choice.logprobs.token_logprobs == pytest.approx(logprobs, abs=1e-4)
    assert out.usage.completion_tokens == final.usage.completion_tokens == 12
    assert out.usage.prompt_tokens == final.usage.prompt_tokens


async def test_chat_stream_and_whole_equal_native_messages(aclient, oa_daemon, channel_to):
    """Async SDK: a chat through the chat template, streamed and whole, equals Generate with
    the same messages."""
    msgs = pb.ChatMessages(messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES])
    _, text, _, final = await native(oa_daemon, channel_to, greedy(10, messages=msgs))
    whole = await aclient.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=10,
                                                  temperature=0, extra_body={"ignore_eos": True})
    assert whole.choices[0].message.content == text and whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == final.usage.prompt_tokens
    stream = await aclient.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0,
                                                   stream=True, stream_options={"include_usage": True},
                                                   extra_body={"ignore_eos": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])


async def test_completion_stream_sync(client, oa_daemon, channel_to):
    _, text, _, _ = await native(oa_daemon, channel_to, greedy(8, prompt=PROMPT))

    def run() -> list:
        return list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0,
                                              stream=True, extra_body={"ignore_eos": True}))
    chunks = await asyncio.to_thread(run)
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_adapter_by_name_equals_native_adapter(aclient, oa_daemon, channel_to):
    _, base_text, _, _ = await native(oa_daemon, channel_to, greedy(12, prompt=PROMPT))
    _, text, _, _ = await native(oa_daemon, channel_to, greedy(12, prompt=PROMPT, adapter="alpha"))
    assert text != base_text  # the adapter changes greedy picks, so the test can tell them apart
    out = await aclient.completions.create(model="alpha", prompt=PROMPT, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert out.choices[0].text == text and out.model == "alpha"


async def test_n_choices_seeded_and_stop(aclient):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=16, temperature=1.0, seed=7, n=3,
                  extra_body={"ignore_eos": True})
    first = await aclient.completions.create(**kwargs)
    again = await aclient.completions.create(**kwargs)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(first.choices, key=lambda c: c.index)] == [0, 1, 2]
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]  # seeded: reproducible
    assert len(set(texts)) > 1  # each choice its own sample
    assert first.usage.completion_tokens == 48
    # A stop string cuts the text before it and ends the choice with "stop".
    stop = texts[0][4:6]
    cut = await aclient.completions.create(**{**kwargs, "n": 1, "stop": [stop]})
    assert cut.choices[0].text == texts[0][:texts[0].index(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kwargs, param", [
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ({"top_p": 0.0}, "top_p"),
    ({"temperature": -1.0}, "temperature"),
    ({"max_tokens": 100000}, "max_tokens"),
    ({"logprobs": 2}, "logprobs"),
    ({"extra_body": {"logit_bias": {"5": 10}}}, "logit_bias"),
    ({"extra_body": {"best_of": 3}}, "best_of"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ({"stop": [""]}, "stop"),
    ({"n": 100}, "n"),
])
async def test_completion_bad_parameter_is_400_naming_it(aclient, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        await aclient.completions.create(**{"model": "tiny", "prompt": PROMPT, **kwargs})
    assert err.value.status_code == 400 and err.value.param == param
    assert err.value.code == "invalid_argument"


@pytest.mark.parametrize("kwargs, param", [
    ({"max_completion_tokens": 100000}, "max_completion_tokens"),
    ({"top_logprobs": 3, "logprobs": True}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}},
     "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": []}, "messages"),
])
async def test_chat_bad_parameter_is_400_naming_it(aclient, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        await aclient.chat.completions.create(**{"model": "tiny", "messages": MESSAGES, **kwargs})
    assert err.value.param == param


async def test_ignored_parameters_leave_the_answer(aclient):
    plain = await aclient.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
    marked = await aclient.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0,
                                              user="someone", presence_penalty=0, extra_body={"metadata": {"a": "b"}})
    assert marked.choices[0].text == plain.choices[0].text


async def test_errors_arrive_as_the_sdks_exceptions(oa_daemon, aclient):
    async with openai.AsyncOpenAI(base_url=base_url(oa_daemon), api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()
    with pytest.raises(openai.NotFoundError) as err:
        await aclient.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    assert err.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        await aclient.models.retrieve("no-such-model")


async def test_tenant_limit_is_429_with_retry_after(oa_daemon, monkeypatch):
    held_step = Held(monkeypatch, where=lambda request: request.tenant == "one", after_first_token=True)
    async with openai.AsyncOpenAI(base_url=base_url(oa_daemon), api_key="tok-one", max_retries=0) as one:
        # Greedy: its first token has text (a sampled one may be half a character, held
        # back, and no event would come before the held step).
        held = await one.completions.create(model="tiny", prompt=PROMPT, max_tokens=200, stream=True,
                                            temperature=0, extra_body={"ignore_eos": True})
        await held.__anext__()  # the tenant's one call is in flight now
        try:
            with pytest.raises(openai.RateLimitError) as err:
                await one.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
        finally:
            await held.close()
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert "1 calls already in flight" in err.value.message
    engine = oa_daemon.engines["tiny"]
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0)
    # The slot is free again once the held stream ended.
    held_step.release()
    async with openai.AsyncOpenAI(base_url=base_url(oa_daemon), api_key="tok-one", max_retries=0) as one:
        out = await one.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    assert out.usage.completion_tokens >= 1


async def test_chat_logprobs_equal_native(aclient, oa_daemon, channel_to):
    msgs = pb.ChatMessages(messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES])
    ids, _, logprobs, _ = await native(oa_daemon, channel_to, greedy(6, messages=msgs))
    out = await aclient.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0,
                                                logprobs=True, top_logprobs=0, extra_body={"ignore_eos": True})
    content = out.choices[0].logprobs.content
    tok = oa_daemon.engines["tiny"].tokenizer
    assert [c.token for c in content] == [tok.decode([i]) for i in ids]
    assert [c.logprob for c in content] == pytest.approx(logprobs, abs=1e-4)
    assert all(c.top_logprobs == [] for c in content)


async def test_streamed_choices_each_end_once(aclient):
    stream = await aclient.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, n=2, seed=3,
                                                   stream=True, extra_body={"ignore_eos": True})
    ends: dict[int, list[str]] = {0: [], 1: []}
    roles: dict[int, int] = {0: 0, 1: 0}
    async for chunk in stream:
        choice = chunk.choices[0]
        roles[choice.index] += choice.delta.role == "assistant"
        if choice.finish_reason:
            ends[choice.index].append(choice.finish_reason)
    assert ends == {0: ["length"], 1: ["length"]} and roles == {0: 1, 1: 1}


async def test_model_not_serving_is_503(oa_daemon, aclient, monkeypatch):
    # What an engine that is restarting its worker says (the daemon's health is NOT_SERVING).
    monkeypatch.setattr(oa_daemon.engines["tiny"], "state", "restarting")
    with pytest.raises(openai.InternalServerError) as err:
        await aclient.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    assert err.value.status_code == 503 and err.value.code == "unavailable"


async def test_an_adapter_not_loaded_is_loaded_on_demand_by_name(aclient, oa_daemon, channel_to):
    """`model` naming a directory under the adapters root: loaded by the call itself."""
    from galactic.v1 import admin_pb2, admin_pb2_grpc

    admin = admin_pb2_grpc.AdminStub(channel_to(oa_daemon))
    auth = [("authorization", "Bearer tok-free")]
    listed = await admin.ListAdapters(admin_pb2.ListAdaptersRequest(), metadata=auth, timeout=60)
    assert "gamma" in listed.resolvable and "gamma" not in [a.name for a in listed.adapters]
    out = await aclient.completions.create(model="gamma", prompt=PROMPT, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
    try:
        _, text, _, _ = await native(oa_daemon, channel_to, greedy(12, prompt=PROMPT, adapter="gamma"))
        assert out.choices[0].text == text and out.model == "gamma"
        listed = await admin.ListAdapters(admin_pb2.ListAdaptersRequest(), metadata=auth, timeout=60)
        assert {a.name: a.pinned for a in listed.adapters} == {"alpha": True, "gamma": False}
        cards = [m.id for m in (await aclient.models.list()).data]
        assert cards.count("gamma") == 1  # listed once, now as loaded
    finally:  # the daemon is the session's: leave it as found
        await admin.UnloadAdapter(admin_pb2.UnloadAdapterRequest(name="gamma"), metadata=auth, timeout=60)


async def test_chat_response_format_json_schema_validates(aclient):
    """response_format maps onto the engine's constraint: an answer that stopped is the schema's JSON."""
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                              "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}
    for fmt, check in [({"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}},
                        lambda v: jsonschema.validate(v, schema)),
                       ({"type": "json_object"}, lambda v: isinstance(v, dict) or pytest.fail(repr(v)))]:
        out = await aclient.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=120, seed=3,
                                                    response_format=fmt)
        choice = out.choices[0]
        assert choice.finish_reason in ("stop", "length")
        if choice.finish_reason == "stop":
            check(json.loads(choice.message.content))
