"""The OpenAI-compatible API over raw HTTP, for what the SDK never sends: malformed JSON, a
wrong content type, an oversize body, a client that vanishes mid-stream; and drain, tracing
and metrics at the HTTP boundary."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from daemon import telemetry
from daemon.config import TelemetryConfig
from fault_injection import Held, Injected

MAX_BODY = 4096
LLM = {"name": "tiny", "device": "cpu", "runner": "thread",
       "scheduler": {"max_running": 8, "max_batch_tokens": 2048, "max_waiting": 16, "prefill_chunk_tokens": 16,
                     "max_prompt_tokens": 256}}


@pytest.fixture(scope="session")
async def http_daemon(session_daemon_factory, tiny_dir):
    # No /metrics endpoint: its registration is process-wide, and this daemon outlives the
    # tests that start their own (the counters read below are process-wide anyway).
    return await session_daemon_factory({"llm": {**LLM, "path": str(tiny_dir)},
                                         "openai": {"max_body_bytes": MAX_BODY, "body_timeout_s": 1.0},
                                         "telemetry": {"metrics_listen": ""}})


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def url(daemon, path: str) -> str:
    return f"http://127.0.0.1:{daemon.openai_port}{path}"


def body(**extra) -> dict:
    return {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0, **extra}


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_malformed_json_is_400(http_daemon, http):
    async with http.post(url(http_daemon, "/v1/completions"), data=b'{"model": "tiny", "prompt": ',
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert "not valid JSON" in error["message"] and error["code"] == "invalid_argument"
    async with http.post(url(http_daemon, "/v1/completions"), json=["a list"]) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["param"] == "model"


async def test_wrong_content_type_is_415(http_daemon, http):
    async with http.post(url(http_daemon, "/v1/completions"), data=json.dumps(body()),
                         headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
        assert "application/json" in (await resp.json())["error"]["message"]


async def test_oversize_body_is_413_and_others_are_served_on(http_daemon, http):
    big = json.dumps(body(prompt="x" * MAX_BODY))
    async with http.post(url(http_daemon, "/v1/completions"), data=big,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["type"] == "invalid_request_error"

    async def chunks():  # no Content-Length: the bound applies as the body arrives
        yield big.encode()
    async with http.post(url(http_daemon, "/v1/completions"), data=chunks(),
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413
    async with http.post(url(http_daemon, "/v1/completions"), json=body()) as resp:
        assert resp.status == 200 and (await resp.json())["usage"]["completion_tokens"] >= 1


async def test_stalled_body_is_408_and_others_are_served_meanwhile(http_daemon, http):
    reader, writer = await asyncio.open_connection("127.0.0.1", http_daemon.openai_port)
    try:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\": ")  # and then nothing more
        await writer.drain()
        async with http.post(url(http_daemon, "/v1/completions"), json=body()) as resp:
            assert resp.status == 200  # the stalled client holds up no one
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 408"), status
    finally:
        writer.close()


async def test_unknown_route_and_method_are_json_errors(http_daemon, http):
    async with http.get(url(http_daemon, "/v1/nothing")) as resp:
        assert resp.status == 404 and "error" in await resp.json()
    async with http.get(url(http_daemon, "/v1/completions")) as resp:
        assert resp.status == 405 and "POST" in resp.headers["Allow"]


async def test_sse_wire_format(http_daemon, http):
    async with http.post(url(http_daemon, "/v1/completions"),
                         json=body(stream=True, stream_options={"include_usage": True})) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        events = [line for line in (await resp.text()).split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    # Each event is its object as json.dumps writes it compactly, key order included.
    assert all(e[6:] == json.dumps(json.loads(e[6:]), separators=(",", ":")) for e in events[:-1])
    assert all(json.loads(e[6:])["usage"] is None for e in events[:-2])
    usage = json.loads(events[-2][6:])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == sum(usage["usage"][k] for k in (
        "prompt_tokens", "completion_tokens"))


async def test_failure_after_the_200_is_an_error_event_and_counted(http_daemon, http, monkeypatch):
    from engines.llm.runner import ModelRunner

    real, steps = ModelRunner.submit, []

    def second_step_fails(self, *args, **kwargs):  # the first step (prefill) samples the first token
        steps.append(1)
        if len(steps) == 2:
            raise RuntimeError("injected step failure")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ModelRunner, "submit", second_step_fails)
    errors = counter("galactic_rpc_errors_total", method="POST /v1/completions", code="INTERNAL")
    async with http.post(url(http_daemon, "/v1/completions"), json=body(stream=True, ignore_eos=True)) as resp:
        assert resp.status == 200  # sent with the first token, before the second step failed
        events = [e for e in (await resp.text()).split("\n\n") if e]
    assert json.loads(events[0][6:])["choices"][0]["text"]  # the first token arrived
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "internal" and "injected" not in error["message"]  # never leaks the text
    assert events[-1] == "data: [DONE]"
    assert counter("galactic_rpc_errors_total", method="POST /v1/completions", code="INTERNAL") == errors + 1


async def test_a_failure_before_the_first_token_gets_its_status_not_an_error_event(daemon_factory, tiny_dir,
                                                                                  adapters_root, tmp_path, http,
                                                                                  monkeypatch):
    """stream=true: the 200 waits for the first output, so an adapter that fails to load on
    demand answers 400 / 412 as it would without streaming, and a step failing before any
    token answers 500, each as OpenAI's error object the SDK maps to its exception."""
    import shutil

    from engines.llm.runner import ModelRunner

    root = tmp_path / "adapters"
    shutil.copytree(adapters_root, root)
    (root / "beta" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    daemon = await daemon_factory({"llm": {**LLM, "path": str(tiny_dir), "adapters": {"root": str(root)}},
                                   "telemetry": {"metrics_listen": ""}})
    async with http.post(url(daemon, "/v1/completions"), json=body(model="beta", stream=True)) as resp:
        assert (resp.status, resp.content_type) == (400, "application/json")
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    Injected(monkeypatch, ModelRunner, "submit", RuntimeError("injected step failure"))
    async with http.post(url(daemon, "/v1/completions"), json=body(stream=True)) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (500, "internal")
    async with http.post(url(daemon, "/v1/completions"), json=body(stream=True)) as resp:  # served on
        assert resp.status == 200 and (await resp.text()).endswith("data: [DONE]\n\n")


async def test_disconnect_mid_stream_cancels_the_request(http_daemon, http, monkeypatch):
    Held(monkeypatch, after_first_token=True)  # still running when the client leaves, on any machine
    engine = http_daemon.engines["tiny"]
    cancelled = counter("galactic_llm_requests_finished_total", model="tiny", reason="cancelled")
    errors = counter("galactic_rpc_errors_total", method="POST /v1/completions", code="CANCELLED")
    resp = await http.post(url(http_daemon, "/v1/completions"),
                           json=body(max_tokens=400, stream=True, ignore_eos=True))
    assert resp.status == 200
    assert (await resp.content.readline()).startswith(b"data: {")  # generating now
    resp.close()  # the connection goes with it
    # The scheduler lets go, then the runner: wait for both, re-checked after every step.
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0 and e.stats()["kv_cache_tokens"] == 0,
                            timeout=60)
    assert counter("galactic_llm_requests_finished_total", model="tiny", reason="cancelled") == cancelled + 1
    assert counter("galactic_rpc_errors_total", method="POST /v1/completions", code="CANCELLED") == errors + 1


async def test_span_continues_traceparent(http_daemon, http):
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing(TelemetryConfig(tracing="none"), SimpleSpanProcessor(exporter))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with http.post(url(http_daemon, "/v1/completions"), json=body(), headers={
            "traceparent": f"00-{trace_id}-{parent}-01", "x-request-id": "req-oa"}) as resp:
        assert resp.status == 200
    spans = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/completions"]
    assert spans, [s.name for s in exporter.get_finished_spans()]
    span = spans[-1]
    assert format(span.context.trace_id, "032x") == trace_id and format(span.parent.span_id, "016x") == parent
    assert span.attributes["galactic.request_id"] == "req-oa"
    assert span.attributes["http.response.status_code"] == 200
    # The engine's request span is a child of it: one trace from the client to the step.
    engine_spans = [s for s in exporter.get_finished_spans() if s.name == "llm.request"]
    assert engine_spans and engine_spans[-1].parent.span_id == span.context.span_id


async def test_drain_refuses_new_calls_and_lets_live_streams_finish(daemon_factory, tiny_dir, http, monkeypatch):
    # A second daemon in this process: no /metrics endpoint (its registry is process-wide).
    d = await daemon_factory({"llm": {**LLM, "path": str(tiny_dir)}, "server": {"grace_period_s": 120.0},
                              "telemetry": {"metrics_listen": ""}})
    held = Held(monkeypatch, after_first_token=True)  # live through the drain, on any machine
    live = await http.post(url(d, "/v1/completions"), json=body(max_tokens=40, stream=True, ignore_eos=True))
    assert (await live.content.readline()).startswith(b"data: {")
    drain = asyncio.create_task(d.drain())
    await d.admission.drain_started.wait()
    async with http.post(url(d, "/v1/completions"), json=body()) as resp:
        assert resp.status == 503
        assert "draining" in (await resp.json())["error"]["message"]
    async with http.get(url(d, "/v1/models")) as resp:
        assert resp.status == 503
    assert not drain.done()  # waiting for the live stream
    held.release()
    rest = (await live.text()).split("\n\n")
    events = [json.loads(e[6:]) for e in rest if e.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"  # finished whole, not cut
    assert "data: [DONE]" in rest
    await drain
