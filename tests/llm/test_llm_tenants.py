"""Per-tenant limits from the keys file, against a real daemon: concurrency, calls per
second and LLM tokens per minute, each RESOURCE_EXHAUSTED with a retry hint past it, and
never touching another tenant."""

from __future__ import annotations

import time

import grpc
import pytest

from galactic.v1 import admin_pb2, admin_pb2_grpc
from galactic.v1 import generation_pb2 as pb
from galactic.v1 import generation_pb2_grpc
from fault_injection import Held
from galactic_client import errors

KEYS = """# token, then its limits
tok-a tenant=team-a concurrency=1 tokens_per_min=20
tok-b tenant=team-b rps=0.01
tok-c tenant=team-c tokens_per_min=60
tok-free
"""


@pytest.fixture
async def llm_daemon(llm_daemon_with, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    return await llm_daemon_with({"security": {"api_keys_file": str(keys)}})


def auth(token: str):
    return [("authorization", f"Bearer {token}")]


def request(n: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="def add(a, b):", stopping=pb.StoppingParams(max_new_tokens=n, ignore_eos=True))


async def drain(call) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


async def test_concurrency_and_token_budget_per_tenant(llm_daemon, channel_to, monkeypatch):
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    barrier = Held(monkeypatch, where=lambda r: r.sampling.max_new_tokens == 100, after_first_token=True)
    held = stub.Generate(request(100), metadata=auth("tok-a"), timeout=60)
    await held.read()  # in flight now, and it stays in flight until released
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await drain(stub.Generate(request(2), metadata=auth("tok-a"), timeout=60))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "team-a: 1 calls already in flight" in err.value.details()
    assert errors.from_rpc_error(err.value).retry_after > 0
    await drain(stub.Generate(request(2), metadata=auth("tok-free"), timeout=60))  # others unaffected
    barrier.release()
    await drain(held)  # ~100 tokens charged: far past 20 per minute
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await drain(stub.Generate(request(2), metadata=auth("tok-a"), timeout=60))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    converted = errors.from_rpc_error(err.value)
    assert "tokens per minute" in converted.details and converted.retry_after > 60  # a debt of ~100 tokens
    # The budget meters generation only: the same tenant may still list models.
    await admin_pb2_grpc.AdminStub(channel_to(llm_daemon)).ListModels(
        admin_pb2.ListModelsRequest(), metadata=auth("tok-a"), timeout=10)


async def test_calls_per_second_per_tenant(llm_daemon, channel_to):
    stub = admin_pb2_grpc.AdminStub(channel_to(llm_daemon))
    await stub.GetStats(admin_pb2.GetStatsRequest(), metadata=auth("tok-b"), timeout=10)  # the one token of the bucket
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetStats(admin_pb2.GetStatsRequest(), metadata=auth("tok-b"), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.from_rpc_error(err.value).retry_after > 10
    await stub.GetStats(admin_pb2.GetStatsRequest(), metadata=auth("tok-free"), timeout=10)


async def test_cancelling_does_not_dodge_the_token_budget(llm_daemon, channel_to):
    """Prompt tokens are charged once queued and each completion token as it is sampled,
    so streaming one token and cancelling, over and over, spends the budget like any use."""
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    frames = [f async for f in stub.Generate(request(1), metadata=auth("tok-free"), timeout=60)]
    owed = frames[-1].final.usage.prompt_tokens + 1  # the least each cancelled call below costs
    budget, refill_per_s = 60.0, 1.0  # tokens_per_min=60
    t0, admitted = time.monotonic(), 0
    while True:
        call = stub.Generate(request(400), metadata=auth("tok-c"), timeout=60)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "team-c" in err.details() and "tokens per minute" in err.details()
            break
        assert first.HasField("tokens")  # a token was sampled, so charged, before the cancel
        call.cancel()
        admitted += 1
        # Each call was admitted while the bucket was above zero, and each cost at least
        # `owed`: past this many, cancelled calls went uncharged.
        allowed = (budget + refill_per_s * (time.monotonic() - t0)) / owed + 1
        assert admitted <= allowed, f"{admitted} cancelled calls admitted; the budget allows {allowed:.1f}"
    assert admitted >= 1
    await drain(stub.Generate(request(2), metadata=auth("tok-free"), timeout=60))  # others unaffected
