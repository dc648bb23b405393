"""Bad input and abandoned calls on the Generation service: unparsable frames end a session
with INVALID_ARGUMENT after its live requests' finals; bounds are checked before the
tokenizer; a cancelled stream is counted CANCELLED and leaves no traceback in the log."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from prometheus_client import REGISTRY

from galactic.v1 import generation_pb2 as pb
from galactic.v1 import generation_pb2_grpc
from fault_injection import Held
from galactic_client import errors

TRUNCATED = b"\x0a\x05ab"


@pytest.fixture
async def llm_daemon(llm_daemon_with):
    return await llm_daemon_with({"llm": {"scheduler": {"max_waiting": 32}},
                                  "limits": {"max_prompt_chars": 200, "max_stop_strings": 2}})


def submit(rid: str, prompt: str = "def add(a, b):", n: int = 4, **stopping) -> pb.SessionRequest:
    return pb.SessionRequest(submit=pb.Submit(request_id=rid, request=pb.GenerateRequest(
        prompt=prompt, stopping=pb.StoppingParams(max_new_tokens=n, ignore_eos=True, **stopping))))


async def test_unparsable_generate_is_invalid_argument(llm_daemon, channel_to):
    call = channel_to(llm_daemon).unary_stream("/galactic.v1.Generation/Generate",
                                               response_deserializer=pb.GenerateResponse.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call(TRUNCATED, timeout=10):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unparsable_frame_ends_the_session_after_the_live_finals(llm_daemon, channel_to):
    call = channel_to(llm_daemon).stream_stream("/galactic.v1.Generation/Session",
                                                response_deserializer=pb.SessionResponse.FromString)
    frames = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for frame in call(iter([submit("a", n=8).SerializeToString(), TRUNCATED]), timeout=60):
            frames.append(frame)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    kinds = [f.WhichOneof("frame") for f in frames if f.request_id == "a"]
    assert kinds[0] == "accepted" and kinds[-1] == "final"


async def test_session_bounds_give_error_frames_and_the_session_lives(llm_daemon, channel_to):
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    frames = [f async for f in stub.Session(iter([
        submit("long", prompt="x" * 201),
        submit("stops", stop=["a", "b", "c"]),
        submit("id" * 200),
        pb.SessionRequest(cancel=pb.Cancel(request_id="c" * 1000)),
        submit("ok"),
    ]), timeout=60)]
    errs = {f.request_id: errors.from_status(f.error) for f in frames if f.WhichOneof("frame") == "error"}
    assert errs["long"].field == "submit.request.prompt"
    assert errs["long"].reason == "201 characters exceed the limit of 200"
    assert errs["stops"].field == "submit.request.stopping.stop"
    long_ids = [rid for rid in errs if rid.startswith("idid")]
    assert len(long_ids) == 1 and len(long_ids[0]) < 300 and errs[long_ids[0]].field == "submit.request_id"
    cancels = [rid for rid in errs if rid.startswith("ccc")]
    assert len(cancels) == 1 and errs[cancels[0]].field == "cancel.request_id"
    assert [f.WhichOneof("frame") for f in frames if f.request_id == "ok"][-1] == "final"


def _count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("galactic_rpc_errors_total", {"method": method, "code": code}) or 0.0


async def test_cancelled_streams_are_counted_cancelled_and_log_no_traceback(llm_daemon, channel_to, caplog,
                                                                            monkeypatch):
    """Clients that cancel mid-stream, and ones that drop the stream unread: each call is
    CANCELLED in the metrics, its span ends, and opentelemetry logs no 'Failed to detach
    context' (the old interceptor's async generator was closed in another Context)."""
    method = "/galactic.v1.Generation/Generate"
    stub = generation_pb2_grpc.GenerationStub(channel_to(llm_daemon))
    before = _count(method, "CANCELLED")
    request = pb.GenerateRequest(prompt="def add(a, b):", stopping=pb.StoppingParams(max_new_tokens=200,
                                                                                     ignore_eos=True))
    # Each is held after its first token until cancelled: none can end before its client
    # cancels, on any machine.
    Held(monkeypatch, where=lambda r: r.sampling.max_new_tokens == 200, after_first_token=True)

    async def cancel_after_first_chunk() -> None:
        call = stub.Generate(request, timeout=60)
        await call.read()
        call.cancel()

    n = 12
    with caplog.at_level(logging.WARNING):
        await asyncio.gather(*(cancel_after_first_chunk() for _ in range(n)))
        assert await llm_daemon.admission.wait_idle(30)
        # A good request after them is served in full.
        frames = [f async for f in stub.Generate(pb.GenerateRequest(
            prompt="def add(a, b):", stopping=pb.StoppingParams(max_new_tokens=3, ignore_eos=True)), timeout=60)]
    assert frames[-1].final.finish_reason == pb.LENGTH
    assert _count(method, "CANCELLED") - before == n
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
    engine = llm_daemon.engines["tiny"]
    await engine.wait_until(lambda e: e.running_count == 0 and e.waiting_count == 0, timeout=30)
