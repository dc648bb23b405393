"""Property-based, for KServe v2: ModelInfer and ModelStreamInfer driven with requests built
from the protocol's own vocabulary (the models' input names, every datatype, small shapes,
typed and raw contents of any length, vLLM sampling parameters of any type), so that most
get past the first check and reach the deeper ones. Every answer is OK, INVALID_ARGUMENT or
NOT_FOUND (RESOURCE_EXHAUSTED for a full queue); never INTERNAL or UNKNOWN, and inside a
stream never an internal error response. The daemon runs on the test's event loop;
hypothesis drives a synchronous client from a worker thread, derandomized."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc

pytestmark = pytest.mark.slow

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16",
             "FP32", "FP64", "BYTES", "", "fp32"]
NUMPY = {"BOOL": "?", "INT64": "<i8", "FP32": "<f4"}
TYPED = {"BOOL": "bool_contents", "INT64": "int64_contents", "FP32": "fp32_contents", "BYTES": "bytes_contents"}
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
VALUES = st.one_of(st.integers(-3, 40), st.floats(allow_nan=True), st.booleans(), st.text(max_size=6), st.none(),
                   st.lists(st.text(max_size=3), max_size=2), st.sampled_from(["0.5", "-1", "1e9", "true"]))
SAMPLING = st.fixed_dictionaries({"max_tokens": st.one_of(st.integers(1, 8), st.integers(1, 8), VALUES)}, optional={
    key: VALUES for key in ["temperature", "top_p", "top_k", "seed", "stop", "n", "ignore_eos", "lora_name",
                            "repetition_penalty", "best_of", "x"]})
MUTATIONS = [None, None, None, None, "datatype", "shape", "name", "drop", "duplicate", "raw_length", "typed_length"]


@st.composite
def specs(draw, model: str) -> list[list]:
    """[name, datatype, shape, elements] of a request that is right before its mutation."""
    if model == "coordination":
        n = draw(st.integers(0, 3))
        features = draw(st.lists(st.floats(width=32, allow_nan=True), min_size=21 * n, max_size=21 * n))
        site = draw(st.lists(st.integers(-1, 12), min_size=n, max_size=n))
        return [["features", "FP32", [n, 21], features], ["site", "INT64", [n], site]]
    out = [["text_input", "BYTES", [1], [draw(st.sampled_from(["def add(a, b):", "", "hi", "é" * 300])).encode()]]]
    if draw(st.booleans()):
        out.append(["stream", "BOOL", [1], [draw(st.booleans())]])
    if draw(st.integers(0, 4)):
        out.append(["sampling_parameters", "BYTES", [1], [json.dumps(draw(SAMPLING)).encode()]])
    if draw(st.booleans()):
        out.append([draw(st.sampled_from(["exclude_input_in_output", "return_finish_reason",
                                          "return_num_input_tokens", "return_num_output_tokens"])),
                    "BOOL", [1], [draw(st.booleans())]])
    return out


def encode(datatype: str, elements: list) -> bytes:
    if datatype == "BYTES":
        return b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    return np.asarray(elements, dtype=NUMPY[datatype]).tobytes()


@st.composite
def requests(draw):
    model = draw(st.sampled_from(["tiny", "tiny", "coordination", "coordination", "nope", ""]))
    parts = [[*part, part[1]] for part in draw(specs("coordination" if model != "tiny" else "tiny"))]
    mutation = draw(st.sampled_from(MUTATIONS))
    victim = draw(st.integers(0, len(parts) - 1))
    raw = draw(st.booleans())
    if mutation == "datatype":
        parts[victim][1] = draw(st.sampled_from(DATATYPES))
    elif mutation == "shape":
        parts[victim][2] = draw(st.lists(st.sampled_from([0, 1, 2, 21, -1, 2**40]), max_size=3))
    elif mutation == "name":
        parts[victim][0] = draw(st.sampled_from(["features", "site", "text_input", "stream", "image", "", "x" * 200]))
    elif mutation == "drop":
        del parts[victim]
    elif mutation == "duplicate":
        parts.append(list(parts[victim]))
    req = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "", "", "v9"])),
                               id=draw(st.text(max_size=4)))
    for i, (name, datatype, shape, elements, written) in enumerate(parts):
        # Declared as `datatype` (perhaps mutated), written as the elements really are.
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            blob = encode(written, elements)
            if mutation == "raw_length" and i == victim:
                blob = blob[:-1] if blob else b"\x00"
            req.raw_input_contents.append(blob)
        else:
            values = list(elements) + ([elements[0]] if mutation == "typed_length" and i == victim and elements else [])
            getattr(t.contents, TYPED[written]).extend(values)
    for name in draw(st.lists(st.sampled_from(["p_success", "text_output", "finish_reason", "nope"]), max_size=2)):
        req.outputs.add(name=name)
    if draw(st.integers(0, 5)) == 0:
        req.parameters["max_tokens"].int64_param = draw(st.integers(-1, 6))
    return req


@pytest.fixture
async def both_daemon(llm_daemon_with):
    return await llm_daemon_with({
        "llm": {"scheduler": {"max_waiting": 64, "max_prompt_tokens": 128, "max_new_tokens_limit": 8}},
        "coordination": {"batching": {"max_queue_delay_ms": 1.0}},
    })


def fuzz(port: int) -> int:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    common = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
    seen = {"ok": 0}

    @common
    @given(req=requests())
    def unary(req):
        try:
            stub.ModelInfer(req, timeout=30)
            seen["ok"] += 1
        except grpc.RpcError as err:
            assert err.code() in ALLOWED, f"{err.code().name}: {err.details()} for {req}"

    @common
    @given(reqs=st.lists(requests(), max_size=3))
    def stream(reqs):
        for frame in stub.ModelStreamInfer(iter(reqs), timeout=30):
            assert not frame.error_message.startswith("internal error"), f"{frame.error_message} for {reqs}"

    try:
        unary()
        stream()
    finally:
        channel.close()
    return seen["ok"]


async def test_kserve_answers_only_documented_statuses(both_daemon):
    await asyncio.to_thread(fuzz, both_daemon.port)
