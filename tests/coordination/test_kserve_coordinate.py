"""KServe v2 model `coordination-coordinate`: a whole Coordinate step as columnar tensors,
against a real daemon on port 0, answers compared with native `Coordination.Coordinate`."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from galactic.v1 import coordination_pb2 as cpb
from galactic.v1 import coordination_pb2_grpc

from galactic_client.errors import from_rpc_error
from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc

from .conftest import make_request
from .test_coord_servicer import _deadline_pb, _with_deadlines

MODEL = "coordination-coordinate"
RAW = {"FP64": "<f8", "FP32": "<f4", "INT32": "<i4", "INT64": "<i8", "BOOL": "?"}
TYPED = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT32": "int_contents", "INT64": "int64_contents",
         "BOOL": "bool_contents", "BYTES": "bytes_contents"}


@pytest.fixture
def stub(coord_daemon, channel_to):
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel_to(coord_daemon))


def native_request(n: int = 60, seed: int = 0) -> cpb.CoordinateRequest:
    return _deadline_pb(_with_deadlines(make_request(n, seed=seed)))


def columns(m: cpb.CoordinateRequest) -> list[tuple[str, str, list]]:
    """The request's fields as (input, datatype, values), one value per row."""
    obs, ts = m.observatories, m.targets
    return [
        ("time_unix", "FP64", [m.time_unix]),
        ("site_id", "BYTES", [o.site_id.encode() for o in obs]),
        ("seeing_arcsec", "FP64", [o.forecast.seeing_arcsec for o in obs]),
        ("cloud_extinction_mag", "FP64", [o.forecast.cloud_extinction_mag for o in obs]),
        ("humidity_pct", "FP64", [o.forecast.humidity_pct for o in obs]),
        ("open", "BOOL", [o.open if o.HasField("open") else True for o in obs]),
        ("capacity", "INT64", [o.capacity if o.HasField("capacity") else -1 for o in obs]),
        ("target_id", "BYTES", [t.id.encode() for t in ts]),
        ("ra_deg", "FP64", [t.ra_deg for t in ts]),
        ("dec_deg", "FP64", [t.dec_deg for t in ts]),
        ("magnitude", "FP64", [t.magnitude for t in ts]),
        ("band", "INT32", [t.band for t in ts]),
        ("exposure_s", "FP64", [t.exposure_s for t in ts]),
        ("value", "FP64", [t.value for t in ts]),
        ("deadline_unix", "FP64", [t.deadline_unix if t.HasField("deadline_unix") else float("nan") for t in ts]),
        ("time_critical", "BOOL", [t.time_critical for t in ts]),
    ]


def infer_request(cols: list[tuple[str, str, list]], raw: bool, **kw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=MODEL, id="c1", **kw)
    for name, datatype, values in cols:
        t = req.inputs.add(name=name, datatype=datatype, shape=[len(values)])
        if not raw:
            getattr(t.contents, TYPED[datatype]).extend(values)
        elif datatype == "BYTES":
            req.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in values))
        else:
            req.raw_input_contents.append(np.asarray(values, dtype=RAW[datatype]).tobytes())
    return req


def outputs_of(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    if resp.raw_output_contents:
        return {o.name: np.frombuffer(raw, RAW[o.datatype]).reshape(o.shape)
                for o, raw in zip(resp.outputs, resp.raw_output_contents)}
    return {o.name: np.array(getattr(o.contents, TYPED[o.datatype])).reshape(o.shape) for o in resp.outputs}


async def call_error(coro):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return from_rpc_error(err.value)


async def test_metadata_describes_the_columns(stub, coord_daemon):
    assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5)).ready
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    assert meta.name == MODEL and list(meta.versions) == [coord_daemon.engines["coordination"].version]
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs["time_unix"] == ("FP64", [1]) and inputs["target_id"] == ("BYTES", [-1])
    assert inputs["band"] == ("INT32", [-1]) and inputs["capacity"] == ("INT64", [-1])
    assert set(inputs) == {name for name, _, _ in columns(native_request(3))} | {"window_s", "snr_required"}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    assert outputs["assignment_target_index"] == ("INT32", [-1]) and outputs["p_success"] == ("FP64", [-1])
    assert outputs["unassigned_reason"] == ("INT32", [-1]) and outputs["total_expected_value"] == ("FP64", [1])


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
async def test_coordinate_through_model_infer_equals_native(stub, coord_daemon, channel_to, raw):
    m = native_request(300, seed=4)
    native = await coordination_pb2_grpc.CoordinationStub(channel_to(coord_daemon)).Coordinate(m, timeout=30)
    resp = await stub.ModelInfer(infer_request(columns(m), raw), timeout=30)
    assert resp.model_name == MODEL and resp.id == "c1"
    assert resp.model_version == coord_daemon.engines["coordination"].version == native.version
    assert bool(resp.raw_output_contents) == raw  # answered the way it was asked
    out = outputs_of(resp)
    ids = [t.id for t in m.targets]
    sites = [o.site_id for o in m.observatories]
    assert [(ids[i], sites[j]) for i, j in zip(out["assignment_target_index"], out["assignment_site_index"])] == [
        (a.target_id, a.site_id) for a in native.assignments]
    for name in ("expected_value", "p_success", "expected_snr"):
        np.testing.assert_array_equal(out[name], [getattr(a, name) for a in native.assignments], err_msg=name)
    assert [(ids[i], r) for i, r in zip(out["unassigned_target_index"], out["unassigned_reason"])] == [
        (u.target_id, u.reason) for u in native.unassigned]
    assert cpb.Unassigned.REASON_EXPIRED in out["unassigned_reason"]
    assert out["total_expected_value"].tolist() == [native.total_expected_value]


async def test_optional_inputs_default_as_unset_fields(stub, coord_daemon, channel_to):
    # Without open, capacity, deadline_unix and time_critical: as a Coordinate that sets none.
    m = native_request(40, seed=2)
    for o in m.observatories:
        o.ClearField("open")
        o.ClearField("capacity")
    for t in m.targets:
        t.ClearField("deadline_unix")
        t.time_critical = False
    m.window_s = 1800.0
    native = await coordination_pb2_grpc.CoordinationStub(channel_to(coord_daemon)).Coordinate(m, timeout=30)
    cols = [c for c in columns(m) if c[0] not in ("open", "capacity", "deadline_unix", "time_critical")]
    out = outputs_of(await stub.ModelInfer(infer_request([*cols, ("window_s", "FP64", [1800.0])], raw=True),
                                           timeout=30))
    assert out["assignment_target_index"].tolist() == [int(a.target_id[1:]) for a in native.assignments]
    assert out["total_expected_value"].tolist() == [native.total_expected_value]


async def test_outputs_selection(stub):
    want = pb.ModelInferRequest.InferRequestedOutputTensor
    resp = await stub.ModelInfer(infer_request(columns(native_request(20)), raw=True, outputs=[
        want(name="total_expected_value"), want(name="assignment_target_index")]), timeout=30)
    assert [o.name for o in resp.outputs] == ["total_expected_value", "assignment_target_index"]
    err = await call_error(stub.ModelInfer(infer_request(columns(native_request(20)), raw=True,
                                                         outputs=[want(name="features")]), timeout=30))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field == "outputs[0].name"


def _edit(name: str, fn):
    """A 45-target request whose input `name` (datatype, values) is rewritten by fn."""
    def make(raw: bool) -> pb.ModelInferRequest:
        cols = []
        for n, d, v in columns(native_request(45)):
            if n == name:
                got = fn(d, list(v))
                if got is None:
                    continue
                d, v = got
            cols.append((n, d, v))
        return infer_request(cols, raw)
    return make


def _set(row: int, value):
    def fn(d, v):
        v[row] = value
        return d, v
    return fn


def _short_raw(raw: bool) -> pb.ModelInferRequest:
    req = infer_request(columns(native_request(45)), raw=True)
    req.raw_input_contents[8] = req.raw_input_contents[8][:-3]  # ra_deg
    return req


def _typed_count(raw: bool) -> pb.ModelInferRequest:
    req = infer_request(columns(native_request(45)), raw=False)
    del req.inputs[9].contents.fp64_contents[-1]  # dec_deg
    return req


def _rank(raw: bool) -> pb.ModelInferRequest:
    req = infer_request(columns(native_request(45)), raw)
    req.inputs[10].shape[:] = [45, 1]  # magnitude
    return req


@pytest.mark.parametrize("make, field", [
    (_edit("ra_deg", lambda d, v: ("FP32", v)), "inputs[ra_deg].datatype"),
    (_rank, "inputs[magnitude].shape"),
    (_edit("dec_deg", lambda d, v: (d, v[:-1])), "inputs[dec_deg].shape"),
    (_edit("capacity", lambda d, v: (d, v[:-1])), "inputs[capacity].shape"),
    (_edit("magnitude", lambda d, v: None), "inputs[magnitude]"),
    (_edit("time_unix", lambda d, v: None), "inputs[time_unix]"),
    (_edit("time_unix", lambda d, v: (d, [v[0], v[0]])), "inputs[time_unix].shape"),
    (_edit("ra_deg", _set(3, float("nan"))), "inputs[ra_deg][3]"),
    (_edit("ra_deg", _set(40, 400.0)), "inputs[ra_deg][40]"),
    (_edit("target_id", _set(7, b"t2")), "inputs[target_id][7]"),
    (_edit("target_id", _set(1, b"\xff")), "inputs[target_id][1]"),
    (_edit("band", _set(2, 0)), "inputs[band][2]"),
    (_edit("exposure_s", _set(44, -1.0)), "inputs[exposure_s][44]"),
    (_edit("deadline_unix", _set(5, float("inf"))), "inputs[deadline_unix][5]"),
    (_edit("site_id", _set(0, b"atlantis")), "inputs[site_id][0]"),
    (_edit("site_id", _set(1, b"rubin")), "inputs[site_id][1]"),
    (_edit("humidity_pct", _set(2, 101.0)), "inputs[humidity_pct][2]"),
    (_edit("capacity", _set(0, -5)), "inputs[capacity][0]"),
    (_edit("time_unix", lambda d, v: (d, [-1.0])), "inputs[time_unix]"),
], ids=lambda v: None)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
async def test_bad_input_names_the_input(stub, make, field, raw):
    err = await call_error(stub.ModelInfer(make(raw), timeout=30))
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)


@pytest.mark.parametrize("make, field", [(_short_raw, "raw_input_contents[8]"),
                                         (_typed_count, "inputs[dec_deg].contents")])
async def test_bad_contents_name_the_input(stub, make, field):
    err = await call_error(stub.ModelInfer(make(True), timeout=30))
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)


async def test_unknown_input_is_refused(stub):
    req = infer_request([*columns(native_request(5)), ("colour", "FP64", [0.1] * 5)], raw=True)
    err = await call_error(stub.ModelInfer(req, timeout=30))
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "inputs[colour]")


async def test_stream_infer_answers_each_request_and_a_bad_one_alone(stub):
    good = infer_request(columns(native_request(30, seed=1)), raw=True)
    bad = _edit("ra_deg", _set(3, float("nan")))(True)
    bad.id = "bad"
    frames = [f async for f in stub.ModelStreamInfer(iter([good, bad]), timeout=30)]
    by_id = {f.infer_response.id: f for f in frames}
    assert set(by_id) == {"c1", "bad"}
    assert "inputs[ra_deg][3]" in by_id["bad"].error_message
    assert by_id["c1"].error_message == ""
    out = outputs_of(by_id["c1"].infer_response)
    assert len(out["assignment_target_index"]) + len(out["unassigned_target_index"]) == 30
