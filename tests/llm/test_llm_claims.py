"""Claims of the README that had no test: safetensors only, adapter directories confined to
the root even through a symlinked directory, a session request's own timeout, and the
drain's grace period running out on a live stream."""

from __future__ import annotations

import asyncio
import shutil

import grpc
import pytest
import torch

from galactic.v1 import generation_pb2 as pb
from galactic.v1 import generation_pb2_grpc
from fault_injection import Held
from galactic_client import AsyncClient, errors


@pytest.fixture
async def llm_daemon(llm_daemon_with):
    return await llm_daemon_with({"server": {"grace_period_s": 0.5}})


def test_pickled_weights_are_refused(tiny_dir, tmp_path):
    """A model directory with only pytorch_model.bin (a pickle: code) does not load."""
    from transformers import AutoModelForCausalLM

    from engines.config import from_mapping
    from engines.llm.config import LLMConfig
    from engines.llm.engine import LLMEngine

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the legacy pickle format
    assert (pickled / "pytorch_model.bin").exists() and not list(pickled.glob("*.safetensors"))
    engine = LLMEngine(from_mapping(LLMConfig, {"name": "p", "path": str(pickled), "device": "cpu"}, "llm"))
    with pytest.raises(Exception, match="safetensors"):
        engine.load(lambda msg: None)
    assert engine.info().state == "failed"


async def test_symlinked_adapter_directory_outside_the_root_is_refused(llm_daemon, adapters_root, tmp_path):
    root = llm_daemon.engines["tiny"].config.adapters.resolved_root()
    outside = tmp_path / "outside-alpha"
    shutil.copytree(adapters_root / "alpha", outside)  # a valid adapter, just not under the root
    (root / "link").symlink_to(outside, target_is_directory=True)
    async with AsyncClient(f"127.0.0.1:{llm_daemon.port}", timeout=30) as client:
        with pytest.raises(errors.PermissionDenied) as err:
            await client.load_adapter("link", "link")
        assert err.value.field == "path"
        assert [a.name for a in await client.list_adapters()] == []


async def test_a_session_requests_own_timeout(llm_daemon, channel_to, monkeypatch):
    """A Submit's timeout_ms (from the daemon's receipt) ends that request alone, DEADLINE."""
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    held = Held(monkeypatch)  # neither can finish before "short"'s deadline has passed

    def submit(rid: str, timeout_ms: int) -> pb.SessionRequest:
        return pb.SessionRequest(submit=pb.Submit(request_id=rid, timeout_ms=timeout_ms, request=pb.GenerateRequest(
            prompt="def add(a, b):", stopping=pb.StoppingParams(max_new_tokens=200, ignore_eos=True))))

    call = stub.Session(iter([submit("short", 1), submit("free", 0)]), timeout=120)
    try:
        await held.reached()
        await asyncio.sleep(0.01)  # the clock past the 1 ms deadline: what this test is about
    finally:
        held.release()
    frames = [f async for f in call]
    finals = {f.request_id: f.final for f in frames if f.WhichOneof("frame") == "final"}
    assert finals["short"].finish_reason == pb.DEADLINE
    assert finals["free"].finish_reason == pb.LENGTH and finals["free"].usage.completion_tokens == 200


async def test_drain_cancels_a_stream_that_outlives_the_grace(llm_daemon, channel_to, monkeypatch):
    """A stream still running when the grace ends is cancelled. Its step is held at a
    barrier until cancelled, so it cannot finish within the grace on any machine."""
    engine = llm_daemon.engines["tiny"]
    held = Held(monkeypatch)  # until the drain cancels it, once the grace is over

    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    call = stub.Generate(pb.GenerateRequest(prompt="def add(a, b):", stopping=pb.StoppingParams(
        max_new_tokens=480, ignore_eos=True)), timeout=120)
    try:
        await held.reached()  # its first step is in the model, and stays there
        drain = asyncio.create_task(llm_daemon.drain())
        frames = []
        try:
            while (frame := await call.read()) is not grpc.aio.EOF:
                frames.append(frame)
            assert frames[-1].final.finish_reason == pb.CANCELLED  # the engine cancelled it
            assert frames[-1].final.usage.completion_tokens <= 1  # the held step's token at most
        except grpc.aio.AioRpcError as err:  # or the server cancelled the call itself
            assert err.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        await asyncio.wait_for(drain, 60)
    finally:
        held.release()
    assert engine.info().state == "stopped"
