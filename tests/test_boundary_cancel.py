"""The boundary interceptor and calls a client abandons: a stream cancelled while the server
is sending is counted CANCELLED, its span ends, its admission is released, and the log
holds no 'Failed to detach context' traceback (nor any other plain-text line).

The servicer here never awaits between responses, so when the client cancels, the
handler's task is suspended in gRPC's send of a response, the place where an async
generator wrapper was left half-run and finalised later in another Context.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from daemon import telemetry
from daemon.config import TelemetryConfig
from daemon.interceptors import Admission, chain
from galactic.v1 import generation_pb2 as pb
from galactic.v1 import generation_pb2_grpc

METHOD = "/galactic.v1.Generation/Generate"


class Flood(generation_pb2_grpc.GenerationServicer):
    async def Generate(self, request, context):
        while True:
            yield pb.GenerateResponse(tokens=pb.TokenChunk(text="x" * 1024))


@pytest.fixture
async def flood_server():
    admission = Admission()
    admission.ready = True
    server = grpc.aio.server(interceptors=chain(admission))
    generation_pb2_grpc.add_GenerationServicer_to_server(Flood(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield admission, port
    await server.stop(0)


def _errors(code: str) -> float:
    return REGISTRY.get_sample_value("galactic_rpc_errors_total", {"method": METHOD, "code": code}) or 0.0


async def test_cancel_while_sending_counts_cancelled_and_detaches_cleanly(flood_server, caplog):
    admission, port = flood_server
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing(TelemetryConfig(), SimpleSpanProcessor(exporter))
    before = _errors("CANCELLED")
    n = 8
    with caplog.at_level(logging.DEBUG, logger="opentelemetry"):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)

            async def cancel_after_first() -> None:
                call = stub.Generate(pb.GenerateRequest(prompt="p"), timeout=30)
                await call.read()
                call.cancel()

            await asyncio.gather(*(cancel_after_first() for _ in range(n)))
            # Each call releases its admission when it ends, not when a finaliser runs.
            assert await admission.wait_idle(10)
        gc.collect()
        await asyncio.sleep(0)  # let any async-generator finaliser the GC queued run now
    assert _errors("CANCELLED") - before == n
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
    spans = [s for s in exporter.get_finished_spans() if s.name == METHOD]
    assert len(spans) == n
    assert all(s.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0] for s in spans)


def test_stdlib_log_lines_are_json(capsys):
    """Libraries' own log lines (opentelemetry's, grpc's) come out as JSON like ours."""
    import io
    import json

    stream = io.StringIO()
    try:
        telemetry.configure_logging(TelemetryConfig(log_format="json"), stream=stream)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("opentelemetry.context").exception("Failed to detach context")
        lines = stream.getvalue().splitlines()
        assert lines and all(json.loads(line) for line in lines)
        record = json.loads(lines[0])
        assert record["event"] == "Failed to detach context" and record["level"] == "error"
        assert "ValueError: boom" in record["exception"]
    finally:
        logging.basicConfig(force=True)
