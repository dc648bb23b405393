"""The servicer over a real grpc.aio server on port 0, with just the coordination service."""

from __future__ import annotations

import grpc
import pytest
from galactic.v1 import coordination_pb2 as pb
from galactic.v1 import coordination_pb2_grpc

from daemon.servicers.coordination import CoordinationServicer, build_coordinate_request, to_pb
from daemon.interceptors import Admission, chain

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


def test_round_trip_helpers(request_factory):
    req = request_factory(5)
    assert build_coordinate_request(request_pb(req)) == req
    m = request_pb(req)
    m.observatories[0].open = False
    m.observatories[0].capacity = 0
    m.targets[0].deadline_unix = 123.0
    back = build_coordinate_request(m)
    assert back.observatories[0].open is False and back.observatories[0].capacity == 0
    assert back.targets[0].deadline_unix == 123.0 and back.observatories[1].capacity is None


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
