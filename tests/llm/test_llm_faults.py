"""Faults stay local: an out-of-memory step fails only its requests (RESOURCE_EXHAUSTED);
a worker that keeps failing or dies turns health NOT_SERVING, fails what it held with
UNAVAILABLE, restarts, passes a canary and serves again (health SERVING).

Faults are injected where a real one would arise, in the model runner's step
(`ModelRunner.execute`, patched on the class), against a real daemon on loopback.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engines.llm.runner import ModelRunner
from fault_injection import Injected, ThreadKill
from galactic.v1 import generation_pb2 as pb
from galactic.v1 import generation_pb2_grpc

SERVICE = "galactic.v1.Generation"


@pytest.fixture
async def llm_daemon(llm_daemon_with):
    # The worker-thread runner: faults are patched into this process's ModelRunner (a
    # dying model process is test_llm_process.py's).
    return await llm_daemon_with({"llm": {"runner": "thread", "scheduler": {"max_running": 1,
                                                                           "prefill_chunk_tokens": 64}}})


async def generate(stub, n: int = 3) -> grpc.StatusCode:
    try:
        frames = [f async for f in stub.Generate(pb.GenerateRequest(
            prompt="def add(a, b):", stopping=pb.StoppingParams(max_new_tokens=n, ignore_eos=True)), timeout=60)]
    except grpc.aio.AioRpcError as err:
        return err.code()
    assert frames[-1].final.finish_reason == pb.LENGTH
    return grpc.StatusCode.OK


async def test_out_of_memory_fails_that_step_only(llm_daemon, channel_to, monkeypatch):
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    Injected(monkeypatch, ModelRunner, "execute", torch.OutOfMemoryError("CUDA out of memory (injected)"))
    assert await generate(stub) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await generate(stub) == grpc.StatusCode.OK  # serving continues, same worker
    health = await health_pb2_grpc.HealthStub(channel_to(llm_daemon)).Check(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    engine = llm_daemon.engines["tiny"]
    assert engine.running_count == 0 and engine.stats()["reserved_tokens"] == 0


async def test_repeatedly_failing_step_restarts_the_worker(llm_daemon, channel_to, watch_health, monkeypatch):
    ch = channel_to(llm_daemon)
    stub = generation_pb2_grpc.GenerationStub(ch)
    watch = watch_health(ch, SERVICE)
    await watch.until(health_pb2.HealthCheckResponse.SERVING)
    fault = Injected(monkeypatch, ModelRunner, "execute", RuntimeError("injected step failure"), repeat=True)
    # max_running = 1: one request per step. Three failing steps in a row give the
    # worker up; the fourth request is still held then, and gets UNAVAILABLE.
    codes = await asyncio.gather(*(generate(stub) for _ in range(4)))
    await watch.until(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert sorted(c.name for c in codes) == ["INTERNAL", "INTERNAL", "INTERNAL", "UNAVAILABLE"]
    fault.heal()  # the next restart's canary passes
    await watch.until(health_pb2.HealthCheckResponse.SERVING)
    assert await generate(stub) == grpc.StatusCode.OK


async def test_dead_worker_thread_is_restarted(llm_daemon, channel_to, watch_health, monkeypatch):
    ch = channel_to(llm_daemon)
    stub = generation_pb2_grpc.GenerationStub(ch)
    watch = watch_health(ch, SERVICE)
    await watch.until(health_pb2.HealthCheckResponse.SERVING)
    Injected(monkeypatch, ModelRunner, "execute", ThreadKill())
    assert await generate(stub) == grpc.StatusCode.UNAVAILABLE  # held by the dead worker
    await watch.until(health_pb2.HealthCheckResponse.NOT_SERVING)
    await watch.until(health_pb2.HealthCheckResponse.SERVING)
    assert await generate(stub) == grpc.StatusCode.OK
