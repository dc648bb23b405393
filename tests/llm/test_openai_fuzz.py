"""Property-based: the OpenAI-compatible routes driven with generated JSON bodies and raw
bytes. Every answer is a documented status with OpenAI's error object (never a 500), and a
good request on another connection comes back exactly as before the fuzzing.

The daemon runs on the test's event loop; hypothesis drives a synchronous HTTP client from
a worker thread. Examples are derandomized and bounded, as in test_fuzz_every_rpc.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

# What a client's input may get: never 500 (a bug) nor 503 (the daemon fell over).
DOCUMENTED = {200, 400, 404, 413, 415, 429}
PARAMS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "stop", "seed", "n", "stream", "stream_options", "logprobs", "top_logprobs", "presence_penalty",
          "frequency_penalty", "repetition_penalty", "ignore_eos", "user", "logit_bias", "echo", "best_of",
          "tools", "response_format", "metadata", "suffix", "frobnicate"]
LLM = {"name": "tiny", "device": "cpu", "runner": "thread",
       "scheduler": {"max_running": 8, "max_batch_tokens": 2048, "max_waiting": 16, "prefill_chunk_tokens": 16,
                     "max_prompt_tokens": 256}}


def scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([2**31, 2**64, -2**63, 10**30]),
        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -0.0, 0.5, 2.0]),
        st.text(max_size=8), st.sampled_from(["tiny", "nope", "", "x" * 300, "\ud800", "{{ raise }}", "system"]))


def values() -> st.SearchStrategy:
    message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "assistant", ""]),
                                                       scalars()),
                                     "content": st.one_of(scalars(), st.lists(st.fixed_dictionaries(
                                         {"type": st.sampled_from(["text", "image_url"]), "text": scalars()}),
                                         max_size=2))})
    return st.one_of(scalars(), st.lists(scalars(), max_size=3), st.lists(message, max_size=3),
                     st.dictionaries(st.sampled_from(["include_usage", "type", "x"]), scalars(), max_size=2))


def bodies() -> st.SearchStrategy[dict]:
    base = st.fixed_dictionaries({"model": st.sampled_from(["tiny", "tiny", "nope"]),
                                  "max_tokens": st.integers(-1, 6)})
    extra = st.dictionaries(st.sampled_from(PARAMS), values(), max_size=5)
    return st.builds(lambda b, e: {**b, **e}, base, extra)


def post(port: int, path: str, data: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=data, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check(status: int, payload: bytes, stream: bool) -> None:
    assert status in DOCUMENTED, (status, payload[:300])
    if status != 200:
        error = json.loads(payload)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] != "internal"
    elif stream:
        events = payload.decode().split("\n\n")
        assert "data: [DONE]" in events
        assert not any('"error"' in e and '"internal"' in e for e in events)


@pytest.fixture(scope="module")
async def fuzz_daemon(session_daemon_factory, tiny_dir):
    return await session_daemon_factory({"llm": {**LLM, "path": str(tiny_dir)},
                                         "telemetry": {"metrics_listen": ""}})


async def test_generated_bodies_get_documented_statuses(fuzz_daemon):
    port = fuzz_daemon.openai_port
    good = json.dumps({"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 6, "temperature": 0}).encode()
    before = await asyncio.to_thread(post, port, "/v1/completions", good)

    @settings(max_examples=150, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies(), path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    def run(body, path):
        data = json.dumps(body).encode()
        status, payload = post(port, path, data)
        check(status, payload, stream=body.get("stream") is True)

    @settings(max_examples=40, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.one_of(st.binary(max_size=64), st.sampled_from([b"[" * 100_000, b'"\\ud800"', b"\xff\xfe",
                                                                   b'{"model": "tiny", "prompt": "\\ud83d"}'])),
           content_type=st.sampled_from(["application/json", "text/plain", ""]))
    def raw(data, content_type):
        status, payload = post(port, "/v1/completions", data, content_type)
        check(status, payload, stream=False)

    await asyncio.to_thread(run)
    await asyncio.to_thread(raw)
    engine = fuzz_daemon.engines["tiny"]
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0, timeout=60)
    assert engine.state == "ready"
    after = await asyncio.to_thread(post, port, "/v1/completions", good)
    assert after[0] == 200 and json.loads(after[1])["choices"] == json.loads(before[1])["choices"]
