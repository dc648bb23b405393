"""Bad input at the boundary, as a hostile client sends it: bytes that do not parse, fields
past their bounds, names outside the character set. Each gets INVALID_ARGUMENT naming the
field (as a google.rpc.BadRequest detail, read by the client), before any filesystem or
model work, and nothing it sent comes back or lands in the log whole.

Generation (Generate, Session) is covered in tests/llm/test_llm_bad_input.py.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import structlog
from google.rpc import error_details_pb2, status_pb2

from galactic.v1 import (admin_pb2, admin_pb2_grpc, coordination_pb2, coordination_pb2_grpc, inference_pb2,
                         inference_pb2_grpc)
from galactic_client import AsyncClient, errors
from galactic_client.tensors import to_tensor

# A length-delimited field 1 that claims 5 bytes and carries 2: no message parses from it.
TRUNCATED = b"\x0a\x05ab"
# Field 1 (a string in every request below) holding bytes that are not UTF-8.
NOT_UTF8 = b"\x0a\x02\xff\xfe"
N_FEATURES = 21


@pytest.fixture
async def client(coord_daemon):
    c = AsyncClient(f"127.0.0.1:{coord_daemon.port}", timeout=30)
    yield c
    await c.close()


def bad_request_field(err: grpc.aio.AioRpcError) -> str:
    """The field of the BadRequest detail in a failed call's trailers."""
    raw = dict(err.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return bad.field_violations[0].field


def infer_request(rid: str, rows: int = 2, dtype=np.float32) -> inference_pb2.InferRequest:
    return inference_pb2.InferRequest(model="coordination", request_id=rid, inputs=[
        to_tensor("features", np.zeros((rows, N_FEATURES), dtype)), to_tensor("site", np.zeros(rows, np.int64))])


@pytest.mark.parametrize("method, response", [
    ("/galactic.v1.Admin/GetModel", admin_pb2.ModelInfo),
    ("/galactic.v1.Admin/LoadAdapter", admin_pb2.AdapterInfo),
    ("/galactic.v1.Inference/Infer", inference_pb2.InferResponse),
    ("/galactic.v1.Coordination/Coordinate", coordination_pb2.CoordinateResponse),
])
@pytest.mark.parametrize("raw", [TRUNCATED, NOT_UTF8], ids=["truncated", "not-utf8"])
async def test_unparsable_unary_is_invalid_argument_logged_at_warning(coord_daemon, channel_to, method, response, raw):
    call = channel_to(coord_daemon).unary_unary(method, response_deserializer=response.FromString)
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
        await call(raw, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse" in err.value.details()
    levels = {e["event"]: e["log_level"] for e in logs}
    assert levels.get("unparsable message") == "warning"
    assert "rpc failed" not in levels  # no error-level traceback


async def test_unparsable_frame_ends_the_stream_after_the_other_answers(coord_daemon, channel_to):
    call = channel_to(coord_daemon).stream_stream(
        "/galactic.v1.Inference/InferStream", response_deserializer=inference_pb2.InferStreamResponse.FromString)
    stream = call(iter([infer_request("a").SerializeToString(), TRUNCATED]), timeout=30)
    frames = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for frame in stream:
            frames.append(frame)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f.request_id for f in frames] == ["a"] and frames[0].HasField("response")


async def test_unparsable_coordinate_stream_frame(coord_daemon, channel_to):
    call = channel_to(coord_daemon).stream_stream(
        "/galactic.v1.Coordination/CoordinateStream",
        response_deserializer=coordination_pb2.CoordinateStreamResponse.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call(iter([NOT_UTF8]), timeout=30):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_long_adapter_name_is_refused_before_the_filesystem(coord_daemon, channel_to):
    stub = admin_pb2_grpc.AdminStub(channel_to(coord_daemon))
    name = "a" * 100_000
    with structlog.testing.capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.LoadAdapter(admin_pb2.LoadAdapterRequest(name=name, path="x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "name: 100000 characters exceed the limit of 128"
    assert bad_request_field(err.value) == "name"
    assert all(len(str(e)) < 2000 for e in logs)


@pytest.mark.parametrize("name", ["../etc", "a b", "ünï", "-x", "a/b"])
async def test_names_outside_the_character_set(client, name):
    with pytest.raises(errors.InvalidArgument) as err:
        await client.get_model(name)
    assert err.value.field == "name"
    assert "letters, digits" in err.value.reason


async def test_echoed_strings_are_truncated(coord_daemon, channel_to):
    stub = inference_pb2_grpc.InferenceStub(channel_to(coord_daemon))
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a valid name, unknown: echoed, cut
        await stub.Infer(inference_pb2.InferRequest(model="m" * 128), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "m" * 65 not in err.value.details() and "(128 chars)" in err.value.details()
    # Inside a stream the request past its bound gets an error frame, its id cut; the next
    # request on the same stream is answered.
    frames = [f async for f in stub.InferStream(
        iter([inference_pb2.InferRequest(request_id="r" * 5000), infer_request("ok")]), timeout=30)]
    by_id = {f.request_id: f for f in frames}
    assert by_id["ok"].HasField("response")
    (long_id,) = set(by_id) - {"ok"}
    assert len(long_id) < 300 and by_id[long_id].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_tensor_errors_carry_their_field_to_the_client(client, coord_daemon, channel_to):
    with pytest.raises(errors.InvalidArgument) as err:  # the engine's check
        await client.infer("coordination", {"features": np.zeros((2, N_FEATURES), np.float64),
                                            "site": np.zeros(2, np.int64)})
    assert err.value.field == "inputs.features"
    request = infer_request("r")
    request.inputs[0].raw_data = request.inputs[0].raw_data[:-1]  # the daemon's decode check
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await inference_pb2_grpc.InferenceStub(channel_to(coord_daemon)).Infer(request, timeout=10)
    converted = errors.from_rpc_error(raw.value)
    assert isinstance(converted, errors.InvalidArgument) and converted.field == "inputs[features].raw_data"


async def test_bounds_come_from_config_and_name_the_field(daemon_factory, channel_to):
    daemon = await daemon_factory({"coordination": {"max_targets": 3}, "limits": {"max_tensors": 1, "max_id_chars": 8}})
    async with AsyncClient(f"127.0.0.1:{daemon.port}", timeout=30) as client:
        cases = [
            (coordination_pb2.CoordinateRequest(targets=[coordination_pb2.Target(id=str(i)) for i in range(4)]),
             "targets", "4 entries exceed the limit of 3"),
            (coordination_pb2.CoordinateRequest(targets=[coordination_pb2.Target(id="t" * 9)]),
             "targets[0].id", "9 characters exceed the limit of 8"),
        ]
        for request, field, reason in cases:
            with pytest.raises(errors.InvalidArgument) as err:
                await client.coordinate(request)
            assert (err.value.field, err.value.reason) == (field, reason)
        with pytest.raises(errors.InvalidArgument) as err:
            await client.infer("coordination", {"features": np.zeros((1, N_FEATURES), np.float32),
                                                "site": np.zeros(1, np.int64)})
        assert err.value.field == "inputs"
    stub = coordination_pb2_grpc.CoordinationStub(channel_to(daemon))
    frames = [f async for f in stub.CoordinateStream(iter([coordination_pb2.CoordinateStreamRequest(
        request=coordination_pb2.CoordinateRequest(request_id="s", targets=[coordination_pb2.Target()] * 4))]),
        timeout=30)]
    assert frames[0].request_id == "s"
    assert frames[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert errors.from_status(frames[0].error).field == "request.targets"


def test_bounds_name_the_offending_entry_deep_in_a_long_list():
    # 1,000 targets are checked in one pass over their ids; the error still names the entry.
    from daemon.config import LimitsConfig
    from daemon.validation import Bounds
    from engines.errors import InvalidArgument
    from galactic.v1 import coordination_pb2 as cpb

    bounds = Bounds(LimitsConfig(max_id_chars=16))
    req = cpb.CoordinateRequest(targets=[cpb.Target(id=f"t{i}") for i in range(1000)],
                                observatories=[cpb.Observatory(site_id=f"s{j}") for j in range(3)])
    bounds.check(req, "request")  # all within bounds
    req.targets[737].id = "x" * 17
    with pytest.raises(InvalidArgument) as err:
        bounds.check(req, "request")
    assert err.value.field == "request.targets[737].id" and "17 characters exceed the limit of 16" in err.value.message
    req.targets[737].id = "t737"
    req.observatories[2].site_id = "y" * 20
    with pytest.raises(InvalidArgument) as err:
        bounds.check(req)
    assert err.value.field == "observatories[2].site_id"
