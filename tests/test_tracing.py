"""A server span per RPC that continues the caller's W3C traceparent (real SDK exporter)."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from daemon import telemetry
from daemon.config import TelemetryConfig
from galactic.v1 import admin_pb2, admin_pb2_grpc


async def test_rpc_span_continues_client_traceparent(bare_daemon, channel_to):
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing(TelemetryConfig(tracing="none"), SimpleSpanProcessor(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_span = "00f067aa0ba902b7"
    await admin_pb2_grpc.AdminStub(channel_to(bare_daemon)).GetStats(
        admin_pb2.GetStatsRequest(), timeout=5,
        metadata=[("traceparent", f"00-{trace_id}-{parent_span}-01"), ("x-request-id", "req-42")])
    spans = [s for s in exporter.get_finished_spans() if s.name == "/galactic.v1.Admin/GetStats"]
    assert spans, [s.name for s in exporter.get_finished_spans()]
    span = spans[-1]
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == parent_span
    assert span.attributes["galactic.request_id"] == "req-42"
    assert span.attributes["rpc.grpc.status_code"] == 0


async def test_log_lines_carry_trace_and_request_ids(bare_daemon, channel_to):
    import io
    import json

    import grpc
    import pytest

    stream = io.StringIO()
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing(TelemetryConfig(tracing="none"), SimpleSpanProcessor(exporter))
    telemetry.configure_logging(TelemetryConfig(log_format="json", log_level="info"), stream=stream)
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await admin_pb2_grpc.AdminStub(channel_to(bare_daemon)).GetModel(
                admin_pb2.GetModelRequest(name="missing"), timeout=5, metadata=[("x-request-id", "req-7")])
    finally:
        telemetry.configure_logging(TelemetryConfig(log_level="warning"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    rejected = [l for l in lines if l["event"] == "rpc rejected"]
    assert rejected and rejected[0]["request_id"] == "req-7"
    assert len(rejected[0]["trace_id"]) == 32 and rejected[0]["code"] == "NOT_FOUND"


def test_without_an_exporter_no_span_is_recorded_and_the_callers_trace_still_continues(tmp_path):
    # A fresh interpreter: the OTel API takes one global provider per process, and other
    # tests here install the SDK's. With tracing = "none" and no processor, nothing would
    # receive a span, so none is recorded; a real gRPC call through the tracing interceptor
    # still carries the caller's trace id into the log context.
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "probe.py"
    script.write_text('''
import asyncio, json
import grpc, structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from daemon import telemetry
from daemon.config import TelemetryConfig
from daemon.interceptors.tracing import TracingInterceptor

installed = telemetry.configure_tracing(TelemetryConfig(tracing="none"))

async def probe(request, context):
    return json.dumps({"trace_id": structlog.contextvars.get_contextvars().get("trace_id"),
                       "recording": trace.get_current_span().is_recording()}).encode()

async def main():
    server = grpc.aio.server(interceptors=[TracingInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "probe.Probe", {"Call": grpc.unary_unary_rpc_method_handler(probe)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        got = await ch.unary_unary("/probe.Probe/Call")(b"", timeout=10, metadata=[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
    await server.stop(None)
    print(json.dumps({"installed": installed is not None,
                      "sdk": isinstance(trace.get_tracer_provider(), TracerProvider), **json.loads(got)}))

asyncio.run(main())
''')
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{repo}:{repo / 'clients' / 'python'}"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"installed": False, "sdk": False, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                   "recording": False}
