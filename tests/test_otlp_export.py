"""The OTLP exporter for real: galacticd (a process) sends its RPC spans over OTLP/gRPC to
a collector endpoint this test serves, continuing the caller's traceparent."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from galactic_client import AsyncClient
from loopback import free_port


class RecordingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans = []
        self.received = asyncio.Event()

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_an_otlp_collector(tmp_path):
    collector = RecordingCollector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port = free_port()
    cfg = tmp_path / "galactic.toml"
    cfg.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[openai]
listen = "127.0.0.1:0"
[telemetry]
metrics_listen = ""
tracing = "otlp"
otlp_endpoint = "http://127.0.0.1:{otlp_port}"
[llm]
enabled = false
[coordination]
enabled = false
""")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon.main", "serve", "--config", str(cfg),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    try:
        async with AsyncClient(f"127.0.0.1:{port}", timeout=30,
                               metadata=[("traceparent", f"00-{trace_id}-b7ad6b7169203331-01")]) as client:
            await client.wait_ready(timeout=60)
            await client.stats()
        proc.send_signal(signal.SIGTERM)  # the SDK flushes its batch on shutdown
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        await asyncio.wait_for(collector.received.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
        await server.stop(0)
    stats = [s for s in collector.spans if s.name == "/galactic.v1.Admin/GetStats"]
    assert stats, [s.name for s in collector.spans]
    assert stats[0].trace_id.hex() == trace_id
