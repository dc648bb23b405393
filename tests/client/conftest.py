"""Real grpc.aio servers on port 0 with small scripted servicers, for the client's tests.

The daemon is not part of this branch, so these servicers stand in for it; each behaves
the way the contract (protos/galactic/v1) says the daemon does, scripted by the prompt or
the request so a test can pick the behaviour it needs.
"""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT / "clients" / "python", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from galactic.v1 import (  # noqa: E402
    admin_pb2,
    admin_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)


class ScriptedGenerationServicer(generation_pb2_grpc.GenerationServicer):
    """Generation scripted by the prompt.

    - "abort:CODE:message" aborts the call with that status code and message;
    - "hold" (Session only) waits for the request's Cancel frame, then ends CANCELLED;
    - "error:CODE:message" (Session only) answers with an Error frame for that request;
    - anything else streams one chunk per word, then a Final (EOS).
    Records each call's remaining deadline and the Cancel frames it received.
    """

    def __init__(self) -> None:
        self.time_remaining: list[float | None] = []
        self.cancelled: list[str] = []
        self.requests: list[generation_pb2.GenerateRequest] = []  # Generate calls
        self.submitted: list[generation_pb2.Submit] = []  # Session submits
        self.frame_order: list[str] = []

    @staticmethod
    def _final(reason: int, completion: int) -> generation_pb2.Final:
        return generation_pb2.Final(
            finish_reason=reason,
            usage=generation_pb2.Usage(prompt_tokens=3, completion_tokens=completion),
            timings=generation_pb2.Timings(queue_ms=1.0, time_to_first_token_ms=2.0, total_ms=3.0),
        )

    @staticmethod
    def _chunks(prompt: str):
        for i, word in enumerate(prompt.split()):
            yield generation_pb2.TokenChunk(token_ids=[i], text=word + " ", logprobs=[-0.5])

    async def Generate(self, request, context):
        self.requests.append(request)
        self.time_remaining.append(context.time_remaining())
        if request.prompt.startswith("abort:"):
            _, code, message = request.prompt.split(":", 2)
            await context.abort(grpc.StatusCode[code], message)
        count = 0
        for chunk in self._chunks(request.prompt):
            count += 1
            yield generation_pb2.GenerateResponse(tokens=chunk)
        yield generation_pb2.GenerateResponse(final=self._final(generation_pb2.EOS, count))

    async def Session(self, request_iterator, context):
        self.time_remaining.append(context.time_remaining())
        out: asyncio.Queue = asyncio.Queue()
        held: dict[str, asyncio.Event] = {}
        accepted = asyncio.Condition()
        accepted.count = 0  # Accepted frames queued on this session

        async def run(submit: generation_pb2.Submit) -> None:
            rid, prompt = submit.request_id, submit.request.prompt
            await out.put(generation_pb2.SessionResponse(request_id=rid, accepted=generation_pb2.Accepted()))
            async with accepted:
                accepted.count += 1
                accepted.notify_all()
            if prompt.startswith("error:"):
                _, code, message = prompt.split(":", 2)
                error = status_pb2.Status(code=grpc.StatusCode[code].value[0], message=message)
                await out.put(generation_pb2.SessionResponse(request_id=rid, error=error))
                return
            if prompt == "hold":
                await held[rid].wait()
                await out.put(generation_pb2.SessionResponse(
                    request_id=rid, final=self._final(generation_pb2.CANCELLED, 0)))
                return
            # "@pair PROMPT": hold the final until the session's next request is accepted, so a
            # test sees two requests' frames interleave however the machine schedules them.
            paired = prompt.startswith("@pair ")
            prompt = prompt.removeprefix("@pair ")
            seen = accepted.count
            count = 0
            for chunk in self._chunks(prompt):
                count += 1
                await out.put(generation_pb2.SessionResponse(request_id=rid, tokens=chunk))
                await asyncio.sleep(0)  # let the other requests' frames interleave with ours
            if paired:
                async with accepted:  # another request's Accepted frame is queued before our final
                    await accepted.wait_for(lambda: accepted.count > seen)
            await out.put(generation_pb2.SessionResponse(request_id=rid, final=self._final(generation_pb2.EOS, count)))

        async def read() -> None:
            tasks = []
            async for frame in request_iterator:
                if frame.HasField("submit"):
                    self.submitted.append(frame.submit)
                    held[frame.submit.request_id] = asyncio.Event()
                    tasks.append(asyncio.create_task(run(frame.submit)))
                else:
                    self.cancelled.append(frame.cancel.request_id)
                    if frame.cancel.request_id in held:
                        held[frame.cancel.request_id].set()
            await asyncio.gather(*tasks)
            await out.put(None)

        reader = asyncio.create_task(read())
        try:
            while (frame := await out.get()) is not None:
                self.frame_order.append(frame.request_id)
                yield frame
        finally:
            reader.cancel()


class EchoInferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Returns every input tensor as an output of the same name."""

    async def Infer(self, request, context):
        return inference_pb2.InferResponse(
            model=request.model, version="1", outputs=list(request.inputs), request_id=request.request_id
        )


class InMemoryAdminServicer(admin_pb2_grpc.AdminServicer):
    """Admin over an in-memory table; ListModels can be told to fail its first attempts
    with UNAVAILABLE (as a restarting daemon would), and counts every attempt."""

    def __init__(self, name: str = "tiny-llm") -> None:
        self.name = name
        self.attempts = 0
        self.fail_first = 0
        self.adapters: dict[str, admin_pb2.AdapterInfo] = {}

    async def ListModels(self, request, context):
        self.attempts += 1
        if self.attempts <= self.fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return admin_pb2.ListModelsResponse(
            models=[admin_pb2.ModelInfo(name=self.name, kind="llm", version="abc", state=admin_pb2.READY, device="cpu")]
        )

    async def GetModel(self, request, context):
        if request.name != self.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"name: no model {request.name!r}")
        return admin_pb2.ModelInfo(name=self.name, kind="llm", state=admin_pb2.READY)

    async def LoadAdapter(self, request, context):
        if ".." in request.path:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "path: outside the adapter root")
        info = admin_pb2.AdapterInfo(name=request.name, path=request.path, rank=8, model=self.name)
        self.adapters[request.name] = info
        return info

    async def UnloadAdapter(self, request, context):
        if request.name not in self.adapters:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"name: no adapter {request.name!r}")
        del self.adapters[request.name]
        return admin_pb2.UnloadAdapterResponse()

    async def ListAdapters(self, request, context):
        return admin_pb2.ListAdaptersResponse(adapters=list(self.adapters.values()))

    async def GetStats(self, request, context):
        return admin_pb2.GetStatsResponse(
            uptime_s=12.5, in_flight=1, models={self.name: admin_pb2.ModelStats(values={"requests_total": 3})}
        )


def standin_coordination_module():
    """A `coordination_pb2` look-alike with two fields each, built in a private descriptor
    pool: the real coordination.proto is written on another branch, and the client must
    not depend on its field names."""
    file = descriptor_pb2.FileDescriptorProto(name="galactic_test/coordination_standin.proto", package="galactic.v1", syntax="proto3")
    string, double = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    request = file.message_type.add(name="CoordinateRequest")
    request.field.add(name="site", number=1, type=string, label=optional)
    request.field.add(name="budget_s", number=2, type=double, label=optional)
    response = file.message_type.add(name="CoordinateResponse")
    response.field.add(name="site", number=1, type=string, label=optional)
    response.field.add(name="score", number=2, type=double, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)

    module = types.ModuleType("galactic.v1.coordination_pb2")
    for name in ("CoordinateRequest", "CoordinateResponse"):
        setattr(module, name, message_factory.GetMessageClass(pool.FindMessageTypeByName(f"galactic.v1.{name}")))
    return module


def coordination_handler(module) -> grpc.GenericRpcHandler:
    """Coordination.Coordinate answering score = 2 * budget_s for the same site."""

    async def coordinate(request, context):
        return module.CoordinateResponse(site=request.site, score=2 * request.budget_s)

    return grpc.method_handlers_generic_handler(
        "galactic.v1.Coordination",
        {
            "Coordinate": grpc.unary_unary_rpc_method_handler(
                coordinate,
                request_deserializer=module.CoordinateRequest.FromString,
                response_serializer=module.CoordinateResponse.SerializeToString,
            )
        },
    )


class Daemon:
    """One real grpc.aio server on 127.0.0.1:<port 0> with the scripted servicers."""

    def __init__(self) -> None:
        self.generation = ScriptedGenerationServicer()
        self.inference = EchoInferenceServicer()
        self.admin = InMemoryAdminServicer()
        self.health = health.aio.HealthServicer()
        self.coordination = standin_coordination_module()
        self.server = grpc.aio.server()
        generation_pb2_grpc.add_GenerationServicer_to_server(self.generation, self.server)
        inference_pb2_grpc.add_InferenceServicer_to_server(self.inference, self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(self.admin, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.server.add_generic_rpc_handlers((coordination_handler(self.coordination),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    async def start(self) -> Daemon:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("galactic.v1.Generation", health_pb2.HealthCheckResponse.SERVING)
        return self

    async def stop(self) -> None:
        await self.server.stop(grace=None)


@pytest.fixture
async def daemon():
    server = await Daemon().start()
    yield server
    await server.stop()


@pytest.fixture
async def second_daemon():
    server = await Daemon().start()
    yield server
    await server.stop()


@pytest.fixture
async def client(daemon):
    from galactic_client import AsyncClient

    async with AsyncClient(daemon.target, timeout=10.0) as c:
        yield c


@pytest.fixture
def coordination_module(daemon, monkeypatch):
    """Make `galactic.v1.coordination_pb2` resolve to the daemon's stand-in for this test."""
    monkeypatch.setitem(sys.modules, "galactic.v1.coordination_pb2", daemon.coordination)
    return daemon.coordination
