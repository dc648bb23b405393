"""The client against the real daemon: galacticd (`daemon.server.Daemon`) on 127.0.0.1:0,
serving the embedded demo LLM (Generation, with a LoRA adapter root) and the embedded
coordination model (Coordination, Inference), through the generated stubs in
clients/python/galactic.

Where a test is about what the client put on the wire (unset fields, deadlines, Cancel
frames), it talks to the daemon through `WireTap`: a real gRPC server that forwards every
call byte for byte to the daemon and records what arrived. The daemon still answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2

from galactic.v1 import admin_pb2, coordination_pb2, generation_pb2, inference_pb2

LLM = "galactic-demo"  # the embedded LLM's default name
# A request that outlives any test: after its first token it is held (see `long_is_held`)
# until it is cancelled (a Cancel frame, the call's deadline, the client leaving).
LONG = 1900


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory) -> Path:
    """An adapter root holding `fr`: a rank-8 PEFT LoRA adapter of the embedded demo model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engines.llm.loading import EMBEDDED_DIR

    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(EMBEDDED_DIR, local_files_only=True)
    get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])).save_pretrained(
        root / "fr")
    return root


@pytest.fixture(scope="session")
async def daemon(session_daemon_factory, adapter_root):
    """One real daemon shared by the client tests; each test leaves it as it found it."""
    return await session_daemon_factory({
        "llm": {"path": "embedded", "adapters": {"root": str(adapter_root), "max_loaded": 2}},
        "coordination": {"batching": {"max_queue_delay_ms": 1.0}},
        # No metrics endpoint: its collector is process-wide, and daemons of other tests
        # (tests/client/test_client_channel.py) run beside this one.
        "telemetry": {"metrics_listen": ""},
    })


@pytest.fixture(autouse=True)
def long_is_held(monkeypatch):
    """Every LONG request is held after its first token until it is cancelled, so tests
    that cancel one, or let a deadline pass, find it still running on any machine."""
    from fault_injection import Held

    return Held(monkeypatch, where=lambda request: request.sampling.max_new_tokens == LONG, after_first_token=True)


@pytest.fixture
def target(daemon) -> str:
    return f"127.0.0.1:{daemon.port}"


@pytest.fixture
async def client(target):
    from galactic_client import AsyncClient

    async with AsyncClient(target, timeout=30.0) as c:
        yield c


# ---- the wire tap ------------------------------------------------------------------------

def _methods() -> dict[str, tuple[bool, bool, type]]:
    """'/pkg.Service/Method' -> (client streaming, server streaming, request class)."""
    out = {}
    for module in (generation_pb2, inference_pb2, admin_pb2, coordination_pb2, health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out[f"/{service.full_name}/{m.name}"] = (
                    m.client_streaming, m.server_streaming, message_factory.GetMessageClass(m.input_type))
    return out


@dataclass
class TappedCall:
    method: str
    time_remaining: float | None  # the deadline the call arrived with, as the daemon sees it
    requests: list[Any] = field(default_factory=list)  # decoded with the real stubs


class WireTap(grpc.GenericRpcHandler):
    """A real grpc.aio server on 127.0.0.1:0 forwarding every call, bytes as they are, with
    its deadline and metadata, to `upstream`; statuses and their details come back as the
    daemon sent them. Records each call and the request messages the client sent."""

    _METHODS = _methods()

    def __init__(self, upstream: str) -> None:
        self.calls: list[TappedCall] = []
        self._upstream = grpc.aio.insecure_channel(upstream, options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((self,))
        self.target = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"

    def requests(self, method: str) -> list[Any]:
        """Every request message sent to `method` (e.g. "Session"), in order."""
        return [r for c in self.calls if c.method.endswith("/" + method) for r in c.requests]

    def service(self, details: grpc.HandlerCallDetails):
        spec = self._METHODS.get(details.method)
        if spec is None:
            return None  # UNIMPLEMENTED, as the daemon would answer
        client_streaming, server_streaming, cls = spec
        name = details.method

        def begin(context) -> tuple[TappedCall, dict]:
            call = TappedCall(name, context.time_remaining())
            self.calls.append(call)
            forwarded = tuple((k, v) for k, v in context.invocation_metadata()
                              if not k.startswith((":", "grpc-")) and k not in ("user-agent", "te", "content-type"))
            return call, {"timeout": call.time_remaining, "metadata": forwarded}

        async def relay(context, err: grpc.aio.AioRpcError) -> None:
            await context.abort(err.code(), err.details() or "", err.trailing_metadata() or ())

        if not client_streaming and not server_streaming:
            async def unary(request: bytes, context):
                call, kw = begin(context)
                call.requests.append(cls.FromString(request))
                try:
                    return await self._upstream.unary_unary(name)(request, **kw)
                except grpc.aio.AioRpcError as err:
                    await relay(context, err)
            return grpc.unary_unary_rpc_method_handler(unary)

        async def streaming(request_or_iterator, context):
            call, kw = begin(context)
            if client_streaming:
                async def forward():
                    async for raw in request_or_iterator:
                        call.requests.append(cls.FromString(raw))
                        yield raw
                upstream = self._upstream.stream_stream(name)(forward(), **kw)
            else:
                call.requests.append(cls.FromString(request_or_iterator))
                upstream = self._upstream.unary_stream(name)(request_or_iterator, **kw)
            try:
                async for response in upstream:
                    yield response
            except grpc.aio.AioRpcError as err:
                await relay(context, err)
            finally:
                upstream.cancel()  # the client left: so does the daemon's call

        if client_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming)
        return grpc.unary_stream_rpc_method_handler(streaming)

    async def start(self) -> WireTap:
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop(None)
        await self._upstream.close()


@pytest.fixture
async def tap_factory():
    """tap_factory(upstream target) -> a started WireTap in front of it."""
    taps: list[WireTap] = []

    async def make(upstream: str) -> WireTap:
        taps.append(await WireTap(upstream).start())
        return taps[-1]

    yield make
    for t in taps:
        await t.stop()


@pytest.fixture
async def tap(tap_factory, target) -> WireTap:
    return await tap_factory(target)


@pytest.fixture
async def tapped_client(tap):
    from galactic_client import AsyncClient

    async with AsyncClient(tap.target, timeout=30.0) as c:
        yield c

