"""KServe v2 / Open Inference Protocol on the coordination model: the generated `inference`
stubs against a real daemon on port 0, answers compared with native `Inference.Infer`."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from galactic.v1 import inference_pb2, inference_pb2_grpc
from galactic_client.errors import from_rpc_error
from galactic_client.tensors import from_tensor, to_tensor
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc

N_FEATURES = 21
MODEL = "coordination"


@pytest.fixture
def stub(coord_daemon, channel_to):
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_to(coord_daemon))


def batch(rows: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, N_FEATURES)).astype(np.float32), np.arange(rows, dtype=np.int64) % 3


def raw_request(features: np.ndarray, site: np.ndarray, **kw) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=MODEL, id="r1",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=features.shape),
                pb.ModelInferRequest.InferInputTensor(name="site", datatype="INT64", shape=site.shape)],
        raw_input_contents=[features.astype("<f4").tobytes(), site.astype("<i8").tobytes()], **kw)


def typed_request(features: np.ndarray, site: np.ndarray, **kw) -> pb.ModelInferRequest:
    t = pb.ModelInferRequest.InferInputTensor
    return pb.ModelInferRequest(model_name=MODEL, id="r2", inputs=[
        t(name="features", datatype="FP32", shape=features.shape,
          contents=pb.InferTensorContents(fp32_contents=features.reshape(-1).tolist())),
        t(name="site", datatype="INT64", shape=site.shape,
          contents=pb.InferTensorContents(int64_contents=site.tolist()))], **kw)


def outputs_of(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    if resp.raw_output_contents:
        return {o.name: np.frombuffer(raw, dtypes[o.datatype]).reshape(o.shape)
                for o, raw in zip(resp.outputs, resp.raw_output_contents)}
    return {o.name: np.array(o.contents.fp32_contents, np.float32).reshape(o.shape) for o in resp.outputs}


async def native_infer(channel, features, site) -> dict[str, np.ndarray]:
    resp = await inference_pb2_grpc.InferenceStub(channel).Infer(inference_pb2.InferRequest(
        model=MODEL, inputs=[to_tensor("features", features), to_tensor("site", site)]), timeout=30)
    return {t.name: from_tensor(t) for t in resp.outputs}


async def call_error(coro):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return from_rpc_error(err.value)


async def test_health_and_server_metadata(stub, coord_daemon):
    assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)).live
    assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5)).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="no-such-model"), timeout=5)).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="nope"), timeout=5)).ready
    meta = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5)
    assert meta.name == "galactic"
    coord_daemon.admission.start_drain()  # what drain() does first: readiness follows, liveness not
    assert not (await stub.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready
    assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)).live


async def test_model_metadata_names_each_tensor(stub, coord_daemon):
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    assert meta.name == MODEL and list(meta.versions) == [coord_daemon.engines[MODEL].version]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("features", "FP32", [-1, N_FEATURES]), ("site", "INT64", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("p_success", "FP32", [-1]), ("expected_snr", "FP32", [-1])]
    err = await call_error(stub.ModelMetadata(pb.ModelMetadataRequest(name="no-such-model"), timeout=5))
    assert err.code == grpc.StatusCode.NOT_FOUND and err.field == "name"


@pytest.mark.parametrize("make", [raw_request, typed_request], ids=["raw", "typed"])
async def test_infer_equals_native_infer(stub, coord_daemon, channel_to, make):
    features, site = batch()
    resp = await stub.ModelInfer(make(features, site), timeout=30)
    assert resp.model_name == MODEL and resp.model_version == coord_daemon.engines[MODEL].version
    assert resp.id == make(features, site).id
    # Answered in the form it was asked: raw for raw, typed contents for typed.
    assert bool(resp.raw_output_contents) == (make is raw_request)
    got = outputs_of(resp)
    want = await native_infer(channel_to(coord_daemon), features, site)
    assert list(got) == ["p_success", "expected_snr"]
    for name in want:
        assert got[name].shape == (7,)
        np.testing.assert_array_equal(got[name], want[name])


async def test_outputs_selection_in_the_requested_order(stub):
    features, site = batch(4)
    out = pb.ModelInferRequest.InferRequestedOutputTensor
    resp = await stub.ModelInfer(raw_request(features, site, outputs=[out(name="expected_snr")]), timeout=30)
    assert [o.name for o in resp.outputs] == ["expected_snr"] and len(resp.raw_output_contents) == 1
    both = await stub.ModelInfer(raw_request(features, site, outputs=[out(name="expected_snr"), out(name="p_success")]),
                                 timeout=30)
    assert [o.name for o in both.outputs] == ["expected_snr", "p_success"]
    np.testing.assert_array_equal(outputs_of(both)["expected_snr"], outputs_of(resp)["expected_snr"])
    err = await call_error(stub.ModelInfer(raw_request(features, site, outputs=[out(name="nope")]), timeout=30))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field == "outputs[0].name"


def _wrong_datatype():
    req = raw_request(*batch(2))
    req.inputs[0].datatype = "FP64"
    req.raw_input_contents[0] = np.zeros((2, N_FEATURES), "<f8").tobytes()
    return req


def _short_raw():
    req = raw_request(*batch(2))
    req.raw_input_contents[1] = req.raw_input_contents[1][:-1]
    return req


def _bad_shape():
    features, site = batch(2)
    req = raw_request(features, site)
    del req.inputs[0].shape[:]
    req.inputs[0].shape.extend([2 * N_FEATURES])
    return req


def _missing_input():
    req = raw_request(*batch(2))
    del req.inputs[1]
    del req.raw_input_contents[1]
    return req


def _typed_count():
    req = typed_request(*batch(2))
    del req.inputs[1].contents.int64_contents[-1]
    return req


def _unknown_datatype():
    req = raw_request(*batch(2))
    req.inputs[1].datatype = "COMPLEX"
    return req


def _raw_count():
    req = raw_request(*batch(2))
    del req.raw_input_contents[1]
    return req


def _unknown_model():
    req = raw_request(*batch(2))
    req.model_name = "no-such-model"
    return req


def _unknown_version():
    return raw_request(*batch(2), model_version="v0")


@pytest.mark.parametrize("make, code, field", [
    (_wrong_datatype, grpc.StatusCode.INVALID_ARGUMENT, "inputs.features"),
    (_short_raw, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[1]"),
    (_bad_shape, grpc.StatusCode.INVALID_ARGUMENT, "inputs.features"),
    (_missing_input, grpc.StatusCode.INVALID_ARGUMENT, "inputs.site"),
    (_typed_count, grpc.StatusCode.INVALID_ARGUMENT, "inputs[site].contents"),
    (_unknown_datatype, grpc.StatusCode.INVALID_ARGUMENT, "inputs[site].datatype"),
    (_raw_count, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    (_unknown_model, grpc.StatusCode.NOT_FOUND, "model_name"),
    (_unknown_version, grpc.StatusCode.NOT_FOUND, "model_version"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
async def test_bad_input_names_the_field(stub, make, code, field):
    err = await call_error(stub.ModelInfer(make(), timeout=30))
    assert (err.code, err.field) == (code, field)


async def test_stream_answers_each_request_and_a_bad_one_alone(stub, channel_to, coord_daemon):
    features, site = batch(5)
    bad = _short_raw()
    bad.id = "bad"
    second = raw_request(*batch(3, seed=1))
    second.id = "r3"
    frames = [f async for f in stub.ModelStreamInfer(iter([raw_request(features, site), bad, second]), timeout=30)]
    by_id = {f.infer_response.id: f for f in frames}
    assert set(by_id) == {"r1", "bad", "r3"} and len(frames) == 3
    assert "raw_input_contents[1]" in by_id["bad"].error_message
    assert by_id["r1"].error_message == "" and by_id["r3"].error_message == ""
    want = await native_infer(channel_to(coord_daemon), features, site)
    # Batched with the others here, alone there: equal to float32 rounding.
    np.testing.assert_allclose(outputs_of(by_id["r1"].infer_response)["p_success"], want["p_success"],
                               rtol=1e-4, atol=1e-7)
    assert outputs_of(by_id["r3"].infer_response)["p_success"].shape == (3,)


async def test_visible_through_reflection(coord_daemon, channel_to):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(coord_daemon))
    [resp] = [r async for r in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)]
    services = {s.name for s in resp.list_services_response.service}
    assert "inference.GRPCInferenceService" in services
    [resp] = [r async for r in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="inference.GRPCInferenceService")]), timeout=5)]
    assert resp.file_descriptor_response.file_descriptor_proto
