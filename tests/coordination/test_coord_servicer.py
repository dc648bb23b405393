"""The servicer over a real grpc.aio server on port 0, with just the coordination service."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest
from galactic.v1 import coordination_pb2 as pb
from galactic.v1 import coordination_pb2_grpc

from daemon.servicers.coordination import CoordinationServicer, build_coordinate_request, to_pb
from daemon.interceptors import Admission, chain
from engines.coordination.problem import target_columns

BAND = {"g": pb.BAND_G, "r": pb.BAND_R, "i": pb.BAND_I}


def request_pb(req) -> pb.CoordinateRequest:
    return pb.CoordinateRequest(
        request_id=req.request_id, time_unix=req.time_unix,
        observatories=[pb.Observatory(site_id=o.site_id, forecast=pb.Conditions(
            seeing_arcsec=o.forecast.seeing_arcsec, cloud_extinction_mag=o.forecast.cloud_extinction_mag,
            humidity_pct=o.forecast.humidity_pct)) for o in req.observatories],
        targets=[pb.Target(id=t.id, ra_deg=t.ra_deg, dec_deg=t.dec_deg, magnitude=t.magnitude, band=BAND[t.band],
                           exposure_s=t.exposure_s, value=t.value, time_critical=t.time_critical)
                 for t in req.targets])


@pytest.fixture
async def stub(engine):
    admission = Admission()
    admission.ready = True
    server = grpc.aio.server(interceptors=chain(admission))  # the daemon's own boundary
    coordination_pb2_grpc.add_CoordinationServicer_to_server(CoordinationServicer(engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield coordination_pb2_grpc.CoordinationStub(channel)
    await server.stop(0)


def assert_same_columns(got, want):
    assert list(got.id) == list(want.id)
    for f in dataclasses.fields(want):
        if f.name not in ("id", "deadline_unix"):
            np.testing.assert_array_equal(getattr(got, f.name), getattr(want, f.name), err_msg=f.name)
    due = np.asarray(want.has_deadline)
    np.testing.assert_array_equal(np.asarray(got.deadline_unix)[due], np.asarray(want.deadline_unix)[due])


def test_round_trip_helpers(request_factory):
    req = request_factory(5)
    back = build_coordinate_request(request_pb(req))
    # The protobuf is read straight into the columns the dataclasses would make.
    assert_same_columns(back.targets, target_columns(req.targets))
    assert dataclasses.replace(back, targets=req.targets) == req
    m = request_pb(req)
    m.observatories[0].open = False
    m.observatories[0].capacity = 0
    m.targets[0].deadline_unix = 123.0
    back = build_coordinate_request(m)
    assert back.observatories[0].open is False and back.observatories[0].capacity == 0
    assert back.targets.deadline_unix[0] == 123.0 and back.observatories[1].capacity is None
    assert back.targets.has_deadline.tolist() == [True, False, False, False, False]
    m.targets[1].deadline_unix = 0.0  # set to 0 (long past) is not unset, nor is -0
    m.targets[3].deadline_unix = -0.0
    assert build_coordinate_request(m).targets.has_deadline.tolist() == [True, True, False, True, False]


async def test_coordinate_unary(stub, engine, request_factory):
    req = request_factory(30)
    resp = await stub.Coordinate(request_pb(req))
    direct = await engine.coordinate(req)
    assert resp == to_pb(direct, engine.info().name, engine.info().version)
    assert resp.request_id == "r" and len(resp.assignments) + len(resp.unassigned) == 30
    bad = request_pb(req)
    bad.targets[3].ra_deg = -5
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Coordinate(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "targets[3].ra_deg" in err.value.details()


async def test_stream_survives_a_bad_request(stub, request_factory):
    good = [request_pb(request_factory(8, seed=i, request_id=f"s{i}")) for i in range(4)]
    bad = request_pb(request_factory(8, request_id="bad"))
    bad.targets[1].band = pb.BAND_UNSPECIFIED
    msgs = [pb.CoordinateStreamRequest(request=m) for m in (good[0], bad, *good[1:])]
    frames = [f async for f in stub.CoordinateStream(iter(msgs))]
    by_id = {f.request_id: f for f in frames}
    assert set(by_id) == {"s0", "s1", "s2", "s3", "bad"}
    assert by_id["bad"].WhichOneof("frame") == "error"
    assert by_id["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "targets[1].band" in by_id["bad"].error.message
    assert all(by_id[f"s{i}"].WhichOneof("frame") == "response" for i in range(4))


def _with_deadlines(req):
    """req with every kind of deadline and urgency the columns carry."""
    ts = list(req.targets)
    for i, t in enumerate(ts):
        if i % 7 == 1:
            ts[i] = dataclasses.replace(t, deadline_unix=req.time_unix + 600.0 * (i % 5 - 1))  # past, in, after window
        elif i % 11 == 2:
            ts[i] = dataclasses.replace(t, deadline_unix=0.0)  # set, and long past
    obs = (dataclasses.replace(req.observatories[0], capacity=2),
           dataclasses.replace(req.observatories[1], open=False), *req.observatories[2:])
    return dataclasses.replace(req, targets=tuple(ts), observatories=obs)


def _deadline_pb(req) -> pb.CoordinateRequest:
    m = request_pb(req)
    for t, mt in zip(req.targets, m.targets):
        if t.deadline_unix is not None:
            mt.deadline_unix = t.deadline_unix
    m.observatories[0].capacity = req.observatories[0].capacity
    m.observatories[1].open = req.observatories[1].open
    return m


@pytest.mark.parametrize("n", [5, 300])
async def test_columnar_path_answers_as_the_dataclass_path(stub, engine, n):
    # The servicer reads protobuf into columns; Python callers hand the engine Target
    # dataclasses. Same request, same answer, to the bit.
    from .conftest import make_request

    req = _with_deadlines(make_request(n, seed=n))
    resp = await stub.Coordinate(_deadline_pb(req))
    direct = await engine.coordinate(req)
    assert resp == to_pb(direct, engine.info().name, engine.info().version)
    assert [(a.target_id, a.site_id) for a in resp.assignments] == [(a.target_id, a.site_id) for a in direct.assignments]
    assert {u.target_id: u.reason for u in resp.unassigned} == {u.target_id: int(u.reason) for u in direct.unassigned}
    if n > 5:
        assert pb.Unassigned.REASON_EXPIRED in {u.reason for u in resp.unassigned}


def _bad(field: str, value):
    def make(m: pb.CoordinateRequest) -> None:
        i, name = field.removeprefix("targets[").split("].")
        t = m.targets[int(i)]
        if name == "band":
            t.ClearField("band")
        elif name == "id":
            t.id = value
        else:
            setattr(t, name, value)
    return make


@pytest.mark.parametrize("field, value, words", [
    ("targets[3].ra_deg", float("nan"), "finite"),
    ("targets[40].ra_deg", 360.5, "within"),  # past the scalar-check length: the vectorised check names it too
    ("targets[39].dec_deg", -90.5, "within"),
    ("targets[2].magnitude", float("inf"), "finite"),
    ("targets[41].band", None, "one of"),
    ("targets[7].exposure_s", 0.0, "positive"),
    ("targets[35].value", -1.0, "positive"),
    ("targets[38].deadline_unix", float("nan"), "finite"),
    ("targets[36].id", "t2", "duplicate"),
    ("targets[4].id", "", "empty"),
])
async def test_bad_target_column_names_the_field(stub, field, value, words):
    from galactic_client.errors import from_rpc_error

    from .conftest import make_request

    m = request_pb(make_request(45))
    _bad(field, value)(m)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Coordinate(m)
    e = from_rpc_error(err.value)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.field == field and words in e.details


@pytest.mark.parametrize("field, value, words", [
    ("targets[2].ra_deg", float("nan"), "finite"),  # a short request: the scalar check
    ("targets[1].value", 0.0, "positive"),
    ("observatories[1].forecast.seeing_arcsec", -0.5, "positive"),
    ("observatories[0].forecast.humidity_pct", 100.5, "within"),
    ("observatories[2].forecast.cloud_extinction_mag", float("inf"), "finite"),
])
async def test_a_short_request_names_its_bad_scalar(stub, field, value, words):
    from galactic_client.errors import from_rpc_error

    from .conftest import make_request

    m = request_pb(make_request(4))
    if field.startswith("targets"):
        _bad(field, value)(m)
    else:
        j, rest = field.removeprefix("observatories[").split("].forecast.")
        setattr(m.observatories[int(j)].forecast, rest, value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Coordinate(m)
    e = from_rpc_error(err.value)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.field == field and words in e.details


def test_cached_sites_and_observatories_answer_as_fresh_ones_and_follow_a_change(sites):
    """The observatories are translated once per distinct wire content and checked once per
    distinct value (`problem.check_sites`): a cached answer equals a fresh one, a changed
    forecast is translated and checked anew (a bad one is refused even after the good one
    was cached), and the shared arrays are read-only."""
    from daemon.servicers import coordination as sc
    from engines.coordination import problem
    from engines.errors import InvalidArgument

    from .conftest import make_request

    m = request_pb(make_request(5))
    fresh = tuple(sc.observatory(o) for o in m.observatories)
    assert sc.observatories(m.observatories) == fresh and sc.observatories(m.observatories) == fresh
    problem._check_sites.cache_clear()
    first, again = problem.check_sites(fresh, sites), problem.check_sites(list(fresh), sites)
    assert problem._check_sites.cache_info().hits == 1 and again is first
    uncached = problem._check_sites.__wrapped__(fresh, sites)
    assert all(np.array_equal(getattr(first, f.name), getattr(uncached, f.name)) for f in dataclasses.fields(first))
    assert not first.seeing.flags.writeable and not first.capacity.flags.writeable

    m.observatories[1].forecast.seeing_arcsec = 1.7
    changed = sc.observatories(m.observatories)
    assert changed[1].forecast.seeing_arcsec == 1.7 and changed[0] == fresh[0]
    assert problem.check_sites(changed, sites).seeing[1] == 1.7
    # A value that equals a cached one but is refused by the check (True == 1) is refused.
    with pytest.raises(InvalidArgument) as bad:
        problem.check_sites((dataclasses.replace(fresh[0], capacity=True), *fresh[1:]), sites)
    assert bad.value.field == "observatories[0].capacity"
    problem.check_sites((dataclasses.replace(fresh[0], capacity=1), *fresh[1:]), sites)
    with pytest.raises(InvalidArgument):
        problem.check_sites((dataclasses.replace(fresh[0], capacity=True), *fresh[1:]), sites)
    m.observatories[1].forecast.seeing_arcsec = -1.0
    with pytest.raises(InvalidArgument) as bad:
        problem.check_sites(sc.observatories(m.observatories), sites)
    assert bad.value.field == "observatories[1].forecast.seeing_arcsec"
