"""Coordination servicer: protobuf <-> engines.coordination dataclasses, nothing else.

Validation lives in the engine (it raises InvalidArgument naming the field, e.g.
"targets[3].ra_deg"); the boundary interceptor maps engine errors to status codes for
unary calls. In CoordinateStream each request runs concurrently (so the engine can batch
them) and a failing request gets its own `google.rpc.Status` frame; the stream lives on.
PlanStream (a standing plan per stream) lives in `plan_stream.py`.
"""

from __future__ import annotations

import functools
from operator import attrgetter, methodcaller
from typing import AsyncIterator, Mapping, Sequence

import numpy as np
from galactic.v1 import coordination_pb2 as pb
from galactic.v1 import coordination_pb2_grpc

from engines.coordination.engine import CoordinationEngine
from engines.coordination.types import (
    Conditions, CoordinateRequest, CoordinateResult, Observatory, TargetColumns, UnassignedReason,
)

from daemon.config import LimitsConfig
from daemon.errors import shorten, to_status
from daemon.servicers import answer_concurrently, deadline_of, pick
from daemon.validation import Bounds

_BANDS = {pb.BAND_U: "u", pb.BAND_G: "g", pb.BAND_R: "r", pb.BAND_I: "i", pb.BAND_Z: "z", pb.BAND_Y: "y"}
# Band enum value -> index into the engine's bands (u g r i z y); -1 (unset, or a value this
# daemon does not know) is refused by the engine, naming the target's band field.
BAND_INDEX = np.full(max(pb.Band.values()) + 1, -1, dtype=np.int64)
for _i, _b in enumerate((pb.BAND_U, pb.BAND_G, pb.BAND_R, pb.BAND_I, pb.BAND_Z, pb.BAND_Y)):
    BAND_INDEX[_b] = _i
_FLOATS = ("ra_deg", "dec_deg", "magnitude", "exposure_s", "value", "deadline_unix")
_HAS_DEADLINE = methodcaller("HasField", "deadline_unix")
# Target.deadline_unix (field 8, fixed64) set to +0.0 or -0.0, as serialised.
_ZERO_DEADLINES = (b"\x41" + bytes(8), b"\x41" + bytes(7) + b"\x80")
REASONS = {
    UnassignedReason.NO_FEASIBLE_SITE: pb.Unassigned.REASON_NO_FEASIBLE_SITE,
    UnassignedReason.CAPACITY: pb.Unassigned.REASON_CAPACITY,
    UnassignedReason.EXPIRED: pb.Unassigned.REASON_EXPIRED,
    UnassignedReason.ZERO_PROBABILITY: pb.Unassigned.REASON_ZERO_PROBABILITY,
}

REASON_PB = np.zeros(max(REASONS) + 1, dtype=np.int64)  # UnassignedReason value -> enum value
for _r, _v in REASONS.items():
    REASON_PB[_r] = _v


def conditions(c: pb.Conditions) -> Conditions:
    return Conditions(c.seeing_arcsec, c.cloud_extinction_mag, c.humidity_pct)


def observatory(o: pb.Observatory) -> Observatory:
    return Observatory(site_id=o.site_id,
                       forecast=conditions(o.forecast) if o.HasField("forecast") else None,
                       current=conditions(o.current) if o.HasField("current") else None,
                       open=o.open if o.HasField("open") else True,
                       capacity=o.capacity if o.HasField("capacity") else None)


def observatories(obs: Sequence[pb.Observatory]) -> tuple[Observatory, ...]:
    """The request's observatories, each translated once per distinct content: a window's
    requests repeat the same twelve, and serialising one is a tenth of translating it."""
    return tuple(_observatory_from_wire(o.SerializeToString(deterministic=True)) for o in obs)


@functools.lru_cache(maxsize=1024)
def _observatory_from_wire(wire: bytes) -> Observatory:
    return observatory(pb.Observatory.FromString(wire))


def band_index(bands: np.ndarray) -> np.ndarray:
    """Band enum values (N,) -> the engine's band indices, -1 where unset or unknown."""
    bands = np.asarray(bands, dtype=np.int64)
    known = (bands >= 0) & (bands < len(BAND_INDEX))
    return np.where(known, BAND_INDEX[np.where(known, bands, 0)], -1)


def target_columns(targets: Sequence[pb.Target], message=None) -> TargetColumns:
    """The targets' fields read straight into the engine's columns, one pass per field and
    no object per target (a 10,000-target request otherwise spends more here than in the
    model). Each pass reads one field of every message in C (`map` of an attrgetter).
    `message`, the message holding `targets`, lets the deadlines' presence be read from its
    serialised form (below); without it each zero deadline's presence is asked."""
    ts = list(targets)  # one wrapper per message, reused by every pass below
    n = len(ts)
    col = {name: np.fromiter(map(attrgetter(name), ts), dtype=np.float64, count=n) for name in _FLOATS}
    band = band_index(np.fromiter(map(attrgetter("band"), ts), dtype=np.int64, count=n))
    # `optional`: a deadline that reads 0 may be set (then it is long past) or unset. Asking
    # each such row costs more than reading a field, so ask only if the wire holds a set
    # zero deadline at all: its tag and eight zero bytes (or -0.0's). A match elsewhere in
    # the bytes only costs the asking.
    has_deadline = col["deadline_unix"] != 0.0
    zero = np.flatnonzero(~has_deadline)
    if zero.size and (message is None or any(z in message.SerializeToString() for z in _ZERO_DEADLINES)):
        asked = (ts[i] for i in zero.tolist())
        has_deadline[zero] = np.fromiter(map(_HAS_DEADLINE, asked), dtype=bool, count=zero.size)
    return TargetColumns(id=list(map(attrgetter("id"), ts)), ra_deg=col["ra_deg"], dec_deg=col["dec_deg"],
                         magnitude=col["magnitude"], band=band, exposure_s=col["exposure_s"], value=col["value"],
                         deadline_unix=col["deadline_unix"], has_deadline=has_deadline,
                         time_critical=np.fromiter(map(attrgetter("time_critical"), ts), dtype=bool, count=n))


def assignment_pb(a) -> pb.Assignment:
    return pb.Assignment(target_id=a.target_id, site_id=a.site_id, expected_value=a.expected_value,
                         p_success=a.p_success, expected_snr=a.expected_snr)


def build_coordinate_request(m: pb.CoordinateRequest) -> CoordinateRequest:
    """The engine's request from its protobuf; unset optional fields become None/defaults."""
    return CoordinateRequest(time_unix=m.time_unix, observatories=observatories(m.observatories),
                             targets=target_columns(m.targets, m),
                             window_s=m.window_s if m.HasField("window_s") else 3600.0,
                             snr_required=m.snr_required if m.HasField("snr_required") else None,
                             request_id=m.request_id)


def to_pb(result: CoordinateResult, model: str = "", version: str = "") -> pb.CoordinateResponse:
    """The response from the result's columns (no engine dataclass per target)."""
    c = result.columns
    ids, sites = c.target_id, c.site_id
    resp = pb.CoordinateResponse(
        model=model, version=version, request_id=result.request_id,
        assignments=[pb.Assignment(target_id=ids[i], site_id=sites[j], expected_value=e, p_success=q, expected_snr=r)
                     for i, j, e, q, r in zip(c.assigned.tolist(), c.site.tolist(), c.expected_value.tolist(),
                                              c.p_success.tolist(), c.expected_snr.tolist())],
        total_expected_value=result.total_expected_value, solver=result.solver)
    add = resp.unassigned.add  # add() in place: a third cheaper than building each message and extending
    for i, r in zip(c.unassigned.tolist(), REASON_PB[c.reason].tolist()):
        add(target_id=ids[i], reason=r)
    return resp


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
