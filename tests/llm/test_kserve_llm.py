"""The LLM through KServe v2 / Open Inference Protocol, as Triton's vLLM backend exposes it:
the generated `inference` stubs against a real daemon on port 0 (tiny local Llama), the text
compared with native `Generate`'s greedy stream."""

from __future__ import annotations

import asyncio
import json
import struct

import grpc
import pytest
from prometheus_client import REGISTRY

from galactic.v1 import generation_pb2, generation_pb2_grpc
from fault_injection import Held
from llm_helpers import drain_idle_results
from galactic_client.errors import from_rpc_error
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc

MODEL = "tiny"
PROMPT = "The quick brown fox"
FINAL = "triton_final_response"


@pytest.fixture
def stub(llm_daemon, channel_to):
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_to(llm_daemon))


def serialize(*items: bytes) -> bytes:
    """BYTES elements in their raw form (what tritonclient sends): length-prefixed."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def llm_request(prompt: str = PROMPT, stream: bool | None = None, sampling: dict | None = None, rid: str = "q1",
                exclude: bool | None = None, typed: bool = False) -> pb.ModelInferRequest:
    """A request as the vLLM backend's clients build it: raw contents, or typed ones."""
    tensor = pb.ModelInferRequest.InferInputTensor
    req = pb.ModelInferRequest(model_name=MODEL, id=rid)
    values = [("text_input", "BYTES", prompt.encode())]
    if stream is not None:
        values.append(("stream", "BOOL", stream))
    if sampling is not None:
        values.append(("sampling_parameters", "BYTES", json.dumps(sampling).encode()))
    if exclude is not None:
        values.append(("exclude_input_in_output", "BOOL", exclude))
    for name, datatype, value in values:
        t = req.inputs.add(name=name, datatype=datatype, shape=[1])
        if typed:
            if datatype == "BYTES":
                t.contents.bytes_contents.append(value)
            else:
                t.contents.bool_contents.append(value)
        else:
            req.raw_input_contents.append(serialize(value) if datatype == "BYTES" else bytes([value]))
    return req


def text_of(resp: pb.ModelInferResponse) -> str:
    [i] = [i for i, o in enumerate(resp.outputs) if o.name == "text_output"]
    if resp.raw_output_contents:
        raw = resp.raw_output_contents[i]
        (n,) = struct.unpack_from("<I", raw)
        assert len(raw) == 4 + n  # one element
        return raw[4:].decode()
    [value] = resp.outputs[i].contents.bytes_contents
    return value.decode()


async def native(channel, n: int, prompt: str = PROMPT) -> list[str]:
    """The chunks' texts of native Generate, greedy, `n` tokens (EOS ignored)."""
    stub = generation_pb2_grpc.GenerationStub(channel)
    frames = [f async for f in stub.Generate(generation_pb2.GenerateRequest(
        model=MODEL, prompt=prompt, stopping=generation_pb2.StoppingParams(max_new_tokens=n, ignore_eos=True)),
        timeout=60)]
    assert frames[-1].HasField("final")
    return [f.tokens.text for f in frames if f.HasField("tokens")]


def finished(reason: str) -> float:
    return REGISTRY.get_sample_value("galactic_llm_requests_finished_total", {"model": MODEL, "reason": reason}) or 0.0


SAMPLING = {"max_tokens": 10, "ignore_eos": True, "temperature": "0"}  # a string, as vLLM clients send


async def test_metadata_names_the_vllm_backend_tensors(stub):
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs["text_input"] == ("BYTES", [1])
    assert inputs["stream"] == ("BOOL", [1]) and inputs["sampling_parameters"] == ("BYTES", [1])
    assert {t.name: t.datatype for t in meta.outputs}["text_output"] == "BYTES"
    assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5)).ready


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
async def test_stream_sends_each_chunk_then_a_final_response(stub, llm_daemon, channel_to, typed):
    want = await native(channel_to(llm_daemon), 10)
    frames = [f async for f in stub.ModelStreamInfer(iter([llm_request(stream=True, sampling=SAMPLING, typed=typed)]),
                                                     timeout=60)]
    assert all(f.error_message == "" for f in frames)
    responses = [f.infer_response for f in frames]
    assert all(bool(r.raw_output_contents) != typed for r in responses)  # answered the way it was asked
    assert all(r.id == "q1" and r.model_name == MODEL for r in responses)
    assert [r.parameters[FINAL].bool_param for r in responses] == [False] * len(want) + [True]
    assert [text_of(r) for r in responses[:-1]] == want
    assert text_of(responses[-1]) == ""


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
async def test_model_infer_answers_the_whole_text(stub, llm_daemon, channel_to, typed):
    want = "".join(await native(channel_to(llm_daemon), 10))
    whole = await stub.ModelInfer(llm_request(sampling=SAMPLING, typed=typed), timeout=60)
    assert bool(whole.raw_output_contents) != typed  # answered the way it was asked
    assert text_of(whole) == PROMPT + want  # the vLLM backend prepends the prompt by default
    only = await stub.ModelInfer(llm_request(sampling=SAMPLING, exclude=True, typed=typed), timeout=60)
    assert text_of(only) == want


async def test_stream_false_inside_the_stream_answers_once(stub, llm_daemon, channel_to):
    want = "".join(await native(channel_to(llm_daemon), 10))
    [frame] = [f async for f in stub.ModelStreamInfer(iter([llm_request(stream=False, sampling=SAMPLING)]),
                                                      timeout=60)]
    assert text_of(frame.infer_response) == PROMPT + want
    assert frame.infer_response.parameters[FINAL].bool_param


async def test_sampling_from_the_request_parameters(stub, llm_daemon, channel_to):
    # The vLLM backend's other way to send them; Triton's own (priority) are passed over.
    want = "".join(await native(channel_to(llm_daemon), 10))
    req = llm_request(exclude=True)
    req.parameters["max_tokens"].int64_param = 10
    req.parameters["ignore_eos"].bool_param = True
    req.parameters["priority"].int64_param = 1
    assert text_of(await stub.ModelInfer(req, timeout=60)) == want
    req.parameters["best_of"].int64_param = 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(req, timeout=60)
    assert from_rpc_error(err.value).field == "sampling_parameters.best_of"


def _wrong_datatype():
    req = llm_request(stream=True, sampling=SAMPLING)
    req.inputs[1].datatype = "INT32"
    req.raw_input_contents[1] = struct.pack("<i", 1)
    return req


def _missing_text():
    req = llm_request(stream=True, sampling=SAMPLING)
    del req.inputs[0]
    del req.raw_input_contents[0]
    return req


def _bad_length():
    req = llm_request(stream=True, sampling=SAMPLING)
    req.raw_input_contents[0] = struct.pack("<I", 100) + b"short"
    return req


@pytest.mark.parametrize("make, field", [
    (_wrong_datatype, "inputs[stream].datatype"),
    (_missing_text, "inputs[text_input]"),
    (_bad_length, "raw_input_contents[0]"),
    (lambda: llm_request(stream=True, sampling={"best_of": 3}), "sampling_parameters.best_of"),
    (lambda: llm_request(stream=True, sampling={"top_p": 2.0}), "sampling_parameters.top_p"),
    (lambda: llm_request(stream=True, sampling={"max_tokens": "many"}), "sampling_parameters.max_tokens"),
    (lambda: llm_request(stream=True, exclude=False), "inputs[exclude_input_in_output]"),
], ids=["datatype", "missing", "byte-length", "unsupported", "engine-check", "type", "exclude"])
async def test_a_bad_request_gets_an_error_response_and_the_stream_lives_on(stub, make, field):
    bad = make()
    bad.id = "bad"
    frames = [f async for f in stub.ModelStreamInfer(
        iter([bad, llm_request(stream=True, sampling=SAMPLING, rid="good")]), timeout=60)]
    errors = [f for f in frames if f.error_message]
    assert len(errors) == 1 and errors[0].infer_response.id == "bad"
    assert errors[0].error_message.startswith(field + ":"), errors[0].error_message
    good = [f.infer_response for f in frames if not f.error_message]
    assert good and all(r.id == "good" for r in good) and good[-1].parameters[FINAL].bool_param


def _unknown_output() -> pb.ModelInferRequest:
    req = llm_request(sampling=SAMPLING)
    req.outputs.add(name="nope")
    return req


@pytest.mark.parametrize("req, code, field", [
    (llm_request(stream=True, sampling=SAMPLING), grpc.StatusCode.INVALID_ARGUMENT, "inputs[stream]"),
    (llm_request(sampling={"nope": 1}), grpc.StatusCode.INVALID_ARGUMENT,
     "sampling_parameters.nope"),
    (llm_request(sampling={"lora_name": "no-such-adapter"}), grpc.StatusCode.NOT_FOUND,
     "sampling_parameters.lora_name"),
    (llm_request(sampling={"max_tokens": float("inf")}), grpc.StatusCode.INVALID_ARGUMENT,
     "sampling_parameters.max_tokens"),
    (llm_request(sampling={"max_tokens": "1.5"}), grpc.StatusCode.INVALID_ARGUMENT, "sampling_parameters.max_tokens"),
    (_unknown_output(), grpc.StatusCode.INVALID_ARGUMENT, "outputs[0].name"),
], ids=["stream-needs-streaming", "unknown-parameter", "unknown-adapter", "infinite", "fraction", "output"])
async def test_model_infer_errors_name_the_field(stub, req, code, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(req, timeout=60)
    error = from_rpc_error(err.value)
    assert (error.code, error.field) == (code, field)


async def test_a_client_leaving_the_stream_cancels_its_request(stub, llm_daemon, monkeypatch):
    engine = llm_daemon.engines[MODEL]
    cancelled_before = finished("cancelled")
    Held(monkeypatch, after_first_token=True)  # still running when the client leaves, on any machine
    call = stub.ModelStreamInfer(iter([llm_request(stream=True, sampling={"max_tokens": 200, "ignore_eos": True})]),
                                 timeout=60)
    first = await call.read()
    assert not first.error_message and not first.infer_response.parameters[FINAL].bool_param
    call.cancel()
    # Freed by the scheduler, then by the runner: re-checked after every step; a slot never
    # freed times out.
    await engine.wait_until(lambda e: e.running_count + e.waiting_count == 0 and e.stats()["kv_cache_tokens"] == 0,
                            timeout=30)
    assert finished("cancelled") - cancelled_before == 1  # ended CANCELLED, not run to its length
    monkeypatch.undo()
    whole = await stub.ModelInfer(llm_request(sampling={"max_tokens": 2, "ignore_eos": True}, exclude=True),
                                  timeout=60)
    assert text_of(whole)  # the freed slot serves again


async def test_drain_finishes_the_stream_s_requests_refuses_new_ones_and_ends_it(stub, llm_daemon, monkeypatch):
    held = Held(monkeypatch, after_first_token=True)  # "running" outlives "late" on any machine
    idle_in_grace = drain_idle_results(monkeypatch, llm_daemon)
    requests: asyncio.Queue = asyncio.Queue()

    async def frames():  # the client keeps its stream open: it never half-closes
        while True:
            yield await requests.get()

    requests.put_nowait(llm_request(stream=True, sampling={"max_tokens": 30, "ignore_eos": True}, rid="running"))
    call = stub.ModelStreamInfer(frames(), timeout=120)
    first = await call.read()
    assert first.infer_response.id == "running" and not first.error_message
    drain = asyncio.create_task(llm_daemon.drain())
    await llm_daemon.admission.drain_started.wait()
    requests.put_nowait(llm_request(stream=True, sampling=SAMPLING, rid="late"))
    late = await call.read()  # "running" is held: nothing else can come first
    assert late.infer_response.id == "late" and "draining" in late.error_message
    held.release()
    rest = []
    while (frame := await call.read()) is not grpc.aio.EOF:
        rest.append(frame.infer_response)
    assert all(r.id == "running" for r in rest)
    assert rest[-1].parameters[FINAL].bool_param and len(rest) == 30  # 29 more chunks, then the final
    assert await call.code() == grpc.StatusCode.OK
    await drain
    assert idle_in_grace == [True]  # the open stream did not hold the drain until the grace ran out


async def test_tokens_are_charged_to_the_tenant(llm_daemon_with, tmp_path, channel_to):
    # One KServe generation of 200 tokens puts a 20-tokens-a-minute tenant in debt for
    # minutes: its next LLM calls, on either protocol, are refused; another tenant's are
    # not, and neither are its own calls on a tensor model (they use no tokens).
    from sections import COORDINATION

    keys = tmp_path / "keys"
    keys.write_text("tok-a tenant=team-a tokens_per_min=20\ntok-free\n")
    daemon = await llm_daemon_with({"security": {"api_keys_file": str(keys)}, **COORDINATION})
    channel = channel_to(daemon)
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    a = [("authorization", "Bearer tok-a")]
    long = llm_request(sampling={"max_tokens": 200, "ignore_eos": True}, exclude=True)
    await stub.ModelInfer(long, metadata=a, timeout=120)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(llm_request(sampling=SAMPLING), metadata=a, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "team-a" in err.value.details()
    native_stub = generation_pb2_grpc.GenerationStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await native_stub.Generate(generation_pb2.GenerateRequest(prompt=PROMPT), metadata=a, timeout=60).read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    free = await stub.ModelInfer(llm_request(sampling=SAMPLING), metadata=[("authorization", "Bearer tok-free")],
                                 timeout=60)
    assert text_of(free).startswith(PROMPT)
    tensor = pb.ModelInferRequest.InferInputTensor
    scores = await stub.ModelInfer(pb.ModelInferRequest(model_name="coordination", inputs=[
        tensor(name="features", datatype="FP32", shape=[2, 21], contents=pb.InferTensorContents(fp32_contents=[0.1] * 42)),
        tensor(name="site", datatype="INT64", shape=[2], contents=pb.InferTensorContents(int64_contents=[0, 1]))]),
        metadata=a, timeout=60)
    assert [o.name for o in scores.outputs] and len(scores.outputs[0].contents.fp32_contents) == 2


async def test_guided_decoding_constrains_the_answer(stub):
    """vLLM's guided_decoding sampling parameter maps onto the engine's constraint."""
    import re

    req = llm_request(sampling={"guided_decoding": {"regex": "(yes|no)"}, "max_tokens": 16, "temperature": 1.0},
                      exclude=True)
    assert re.fullmatch("(yes|no)", text_of(await stub.ModelInfer(req, timeout=60)))
    bad = llm_request(sampling={"guided_decoding": {"json": {"type": "frobnicate"}}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(bad, timeout=60)
    assert from_rpc_error(err.value).field == "sampling_parameters.guided_decoding"
