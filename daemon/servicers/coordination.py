"""Coordination servicer: protobuf <-> engines.coordination dataclasses, nothing else.

Validation lives in the engine (it raises InvalidArgument naming the field, e.g.
"targets[3].ra_deg"); the boundary interceptor maps engine errors to status codes for
unary calls. In CoordinateStream each request runs concurrently (so the engine can batch
them) and a failing request gets its own `google.rpc.Status` frame; the stream lives on.
PlanStream (a standing plan per stream) lives in `plan_stream.py`.
"""

from __future__ import annotations

from typing import AsyncIterator, Mapping

from galactic.v1 import coordination_pb2 as pb
from galactic.v1 import coordination_pb2_grpc

from engines.coordination.engine import CoordinationEngine
from engines.coordination.types import (
    Conditions, CoordinateRequest, CoordinateResult, Observatory, Target, UnassignedReason,
)

from daemon.config import LimitsConfig
from daemon.errors import shorten, to_status
from daemon.servicers import answer_concurrently, deadline_of, pick
from daemon.validation import Bounds

_BANDS = {pb.BAND_U: "u", pb.BAND_G: "g", pb.BAND_R: "r", pb.BAND_I: "i", pb.BAND_Z: "z", pb.BAND_Y: "y"}
REASONS = {
    UnassignedReason.NO_FEASIBLE_SITE: pb.Unassigned.REASON_NO_FEASIBLE_SITE,
    UnassignedReason.CAPACITY: pb.Unassigned.REASON_CAPACITY,
    UnassignedReason.EXPIRED: pb.Unassigned.REASON_EXPIRED,
    UnassignedReason.ZERO_PROBABILITY: pb.Unassigned.REASON_ZERO_PROBABILITY,
}


def conditions(c: pb.Conditions) -> Conditions:
    return Conditions(c.seeing_arcsec, c.cloud_extinction_mag, c.humidity_pct)


def observatory(o: pb.Observatory) -> Observatory:
    return Observatory(site_id=o.site_id,
                       forecast=conditions(o.forecast) if o.HasField("forecast") else None,
                       current=conditions(o.current) if o.HasField("current") else None,
                       open=o.open if o.HasField("open") else True,
                       capacity=o.capacity if o.HasField("capacity") else None)


def target(t: pb.Target) -> Target:
    # Positional: a 10,000-target call builds 10,000 of these, and keywords cost a third more.
    return Target(t.id, t.ra_deg, t.dec_deg, t.magnitude,
                  _BANDS.get(t.band, ""),  # unset: the engine rejects it, naming the field
                  t.exposure_s, t.value, t.deadline_unix if t.HasField("deadline_unix") else None,
                  t.time_critical)


def assignment_pb(a) -> pb.Assignment:
    return pb.Assignment(target_id=a.target_id, site_id=a.site_id, expected_value=a.expected_value,
                         p_success=a.p_success, expected_snr=a.expected_snr)


def build_coordinate_request(m: pb.CoordinateRequest) -> CoordinateRequest:
    """The engine's request from its protobuf; unset optional fields become None/defaults."""
    obs = tuple(observatory(o) for o in m.observatories)
    targets = tuple(target(t) for t in m.targets)
    return CoordinateRequest(time_unix=m.time_unix, observatories=obs, targets=targets,
                             window_s=m.window_s if m.HasField("window_s") else 3600.0,
                             snr_required=m.snr_required if m.HasField("snr_required") else None,
                             request_id=m.request_id)


def to_pb(result: CoordinateResult, model: str = "", version: str = "") -> pb.CoordinateResponse:
    return pb.CoordinateResponse(
        model=model, version=version, request_id=result.request_id,
        assignments=[assignment_pb(a) for a in result.assignments],
        unassigned=[pb.Unassigned(target_id=u.target_id, reason=REASONS[u.reason]) for u in result.unassigned],
        total_expected_value=result.total_expected_value, solver=result.solver)


class CoordinationServicer(coordination_pb2_grpc.CoordinationServicer):
    """Serves one or more CoordinationEngines, chosen by the request's `model` field."""

    def __init__(self, engines: Mapping[str, CoordinationEngine] | CoordinationEngine,
                 bounds: Bounds | None = None) -> None:
        self._engines = {engines.name: engines} if isinstance(engines, CoordinationEngine) else dict(engines)
        self._bounds = bounds or Bounds(LimitsConfig())

    async def _coordinate(self, m: pb.CoordinateRequest, deadline: float | None) -> pb.CoordinateResponse:
        engine = pick(self._engines, m.model)
        result = await engine.coordinate(build_coordinate_request(m), deadline=deadline)
        # The version that scored it: a reload may have swapped weights since.
        return to_pb(result, engine.name, result.version or engine.version)

    async def Coordinate(self, request: pb.CoordinateRequest, context) -> pb.CoordinateResponse:
        return await self._coordinate(request, deadline_of(context))

    async def CoordinateStream(self, request_iterator, context) -> AsyncIterator[pb.CoordinateStreamResponse]:
        # Alerts arrive one by one or in bursts; they run concurrently so the engine batches
        # them, and assignments leave as they are made, tagged with their request id.
        deadline = deadline_of(context)

        async def requests() -> AsyncIterator[pb.CoordinateRequest]:
            async for frame in request_iterator:
                yield frame.request

        async def handle(m: pb.CoordinateRequest) -> pb.CoordinateStreamResponse:
            self._bounds.check(m, "request")  # unary requests were bounded by the interceptor
            return pb.CoordinateStreamResponse(request_id=m.request_id, response=await self._coordinate(m, deadline))

        def on_error(m: pb.CoordinateRequest, exc: Exception) -> pb.CoordinateStreamResponse:
            rid = shorten(m.request_id, self._bounds.limits.max_id_chars)
            return pb.CoordinateStreamResponse(request_id=rid, error=to_status(exc))

        async for frame in answer_concurrently(requests(), handle, on_error):
            yield frame

    def PlanStream(self, request_iterator, context) -> AsyncIterator[pb.PlanFrame]:
        # Imported here: plan_stream imports this module's translators.
        from daemon.servicers.plan_stream import plan_stream

        return plan_stream(self._engines, request_iterator, context, self._bounds)
