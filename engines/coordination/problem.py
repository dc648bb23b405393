"""Request validation and the request <-> array conversion around one coordination step.

`validate()` runs on the event loop before a request is queued, so a bad request fails
alone with InvalidArgument naming its field (e.g. "targets[3].ra_deg") and never reaches a
batch. `Problem` holds the arrays the worker needs; `result()` turns the solver's choice
back into dataclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engines.coordination import physics
from engines.coordination.config import CoordinationConfig
from engines.coordination.features import SiteArrays, TargetArrays
from engines.coordination.sites import SiteTable
from engines.coordination.types import (
    Assignment, CoordinateRequest, CoordinateResult, Unassigned, UnassignedReason,
)
from engines.errors import InvalidArgument

_BAND_INDEX = {b: i for i, b in enumerate(physics.BANDS)}


@dataclass(frozen=True)
class Problem:
    request: CoordinateRequest
    time_unix: float  # middle of the window: where geometry is evaluated
    targets: TargetArrays
    sites: SiteArrays
    expired: np.ndarray  # (N,) bool
    snr_required: float

    @property
    def pairs(self) -> int:
        return len(self.request.targets) * len(self.request.observatories)


def _finite(value, field: str, lo: float | None = None, hi: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"must be a finite number, got {value!r}", field=field)
    if positive and value <= 0:
        raise InvalidArgument(f"must be positive, got {value!r}", field=field)
    if lo is not None and value < lo or hi is not None and value > hi:
        raise InvalidArgument(f"must be within [{lo}, {hi}], got {value!r}", field=field)
    return float(value)


def validate(req: CoordinateRequest, table: SiteTable, cfg: CoordinationConfig) -> Problem:
    t0 = _finite(req.time_unix, "time_unix", 0.0, 4.1e9)
    window = _finite(req.window_s, "window_s", positive=True)
    snr = cfg.snr_required if req.snr_required is None else _finite(req.snr_required, "snr_required", positive=True)
    if not req.observatories:
        raise InvalidArgument("at least one observatory is required", field="observatories")
    if len(req.observatories) > cfg.max_observatories:
        raise InvalidArgument(f"at most {cfg.max_observatories} observatories", field="observatories")
    if len(req.targets) > cfg.max_targets:
        raise InvalidArgument(f"at most {cfg.max_targets} targets", field="targets")
    index = table.index()
    seen: set[str] = set()
    s_rows = []
    for j, o in enumerate(req.observatories):
        f = f"observatories[{j}]"
        if o.site_id not in index:
            raise InvalidArgument(f"unknown site {o.site_id!r}", field=f"{f}.site_id")
        if o.site_id in seen:
            raise InvalidArgument(f"site {o.site_id!r} listed twice", field=f"{f}.site_id")
        seen.add(o.site_id)
        for name, cond in (("forecast", o.forecast), ("current", o.current)):
            if cond is None:
                if name == "forecast":
                    raise InvalidArgument("a forecast is required", field=f"{f}.forecast")
                continue
            _finite(cond.seeing_arcsec, f"{f}.{name}.seeing_arcsec", positive=True)
            _finite(cond.cloud_extinction_mag, f"{f}.{name}.cloud_extinction_mag", 0.0, 20.0)
            _finite(cond.humidity_pct, f"{f}.{name}.humidity_pct", 0.0, 100.0)
        site = table.site[index[o.site_id]]
        cap = site.capacity if o.capacity is None else o.capacity
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise InvalidArgument(f"must be a non-negative integer, got {cap!r}", field=f"{f}.capacity")
        band_mask = [b in site.bands for b in physics.BANDS]
        s_rows.append((index[o.site_id], site.latitude_deg, site.longitude_deg, site.aperture_m, band_mask, cap,
                       bool(o.open), o.forecast.seeing_arcsec, o.forecast.cloud_extinction_mag, o.forecast.humidity_pct))
    ids: set[str] = set()
    n = len(req.targets)
    ra, dec, mag, band, exp, val, crit, expired = (np.empty(n) for _ in range(8))
    for i, t in enumerate(req.targets):
        f = f"targets[{i}]"
        if not t.id:
            raise InvalidArgument("must not be empty", field=f"{f}.id")
        if t.id in ids:
            raise InvalidArgument(f"duplicate target id {t.id!r}", field=f"{f}.id")
        ids.add(t.id)
        ra[i] = _finite(t.ra_deg, f"{f}.ra_deg", 0.0, 360.0)
        dec[i] = _finite(t.dec_deg, f"{f}.dec_deg", -90.0, 90.0)
        mag[i] = _finite(t.magnitude, f"{f}.magnitude", -30.0, 40.0)
        if t.band not in _BAND_INDEX:
            raise InvalidArgument(f"must be one of {', '.join(physics.BANDS)}, got {t.band!r}", field=f"{f}.band")
        band[i] = _BAND_INDEX[t.band]
        exp[i] = _finite(t.exposure_s, f"{f}.exposure_s", positive=True)
        val[i] = _finite(t.value, f"{f}.value", positive=True)
        due = None if t.deadline_unix is None else _finite(t.deadline_unix, f"{f}.deadline_unix")
        expired[i] = due is not None and due <= t0
        # Urgent: flagged time-critical, or due before this window ends (no later chance).
        crit[i] = bool(t.time_critical) or (due is not None and due <= t0 + window)
    cols = list(zip(*s_rows))
    sites = SiteArrays(
        index=np.array(cols[0], dtype=np.int64), latitude_deg=np.array(cols[1]), longitude_deg=np.array(cols[2]),
        aperture_m=np.array(cols[3]), bands=np.array(cols[4], dtype=bool).reshape(-1, 6),
        capacity=np.array(cols[5], dtype=np.int64), open=np.array(cols[6], dtype=bool),
        seeing=np.array(cols[7]), cloud=np.array(cols[8]), humidity=np.array(cols[9]))
    targets = TargetArrays(ra, dec, mag, band.astype(np.int64), exp, val, crit.astype(bool))
    return Problem(req, t0 + window / 2.0, targets, sites, expired.astype(bool), snr)


def result(p: Problem, feasible: np.ndarray, prob: np.ndarray, snr: np.ndarray, choice: np.ndarray,
           solver: str) -> CoordinateResult:
    """Dataclasses from the solver's choice (N,) and the (N, S) probability and SNR grids."""
    req = p.request
    assignments, unassigned = [], []
    total = 0.0
    any_feasible = feasible.any(axis=1)
    best = (prob * feasible).max(axis=1) if feasible.shape[1] else np.zeros(len(req.targets))
    for i, t in enumerate(req.targets):
        j = int(choice[i])
        if j >= 0:
            ev = float(t.value * prob[i, j])
            total += ev
            assignments.append(Assignment(t.id, req.observatories[j].site_id, ev, float(prob[i, j]), float(snr[i, j])))
        elif p.expired[i]:
            unassigned.append(Unassigned(t.id, UnassignedReason.EXPIRED))
        elif not any_feasible[i]:
            unassigned.append(Unassigned(t.id, UnassignedReason.NO_FEASIBLE_SITE))
        elif best[i] * t.value <= 1e-12:
            unassigned.append(Unassigned(t.id, UnassignedReason.ZERO_PROBABILITY))
        else:
            unassigned.append(Unassigned(t.id, UnassignedReason.CAPACITY))
    return CoordinateResult(req.request_id, tuple(assignments), tuple(unassigned), total, solver)
