"""Request validation and the request <-> array conversion around one coordination step.

`validate()` runs on the event loop before a request is queued, so a bad request fails
alone with InvalidArgument naming its field (e.g. "targets[3].ra_deg") and never reaches a
batch. Targets are checked as columns (`TargetColumns`, what the front ends fill from the
wire; `target_columns()` makes them from `Target` dataclasses), in a few vectorised passes.
`Problem` holds the arrays the worker needs; `result()` turns the solver's choice back into
columns (`ResultColumns`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np

from engines.coordination import physics
from engines.coordination.config import CoordinationConfig
from engines.coordination.features import SiteArrays, TargetArrays
from engines.coordination.sites import SiteTable
from engines.coordination.types import (
    Conditions, CoordinateRequest, CoordinateResult, ResultColumns, Target, TargetColumns, UnassignedReason,
)
from engines.errors import InvalidArgument

_BAND_INDEX = {b: i for i, b in enumerate(physics.BANDS)}
_EXPIRED, _NO_FEASIBLE_SITE, _ZERO_PROBABILITY, _CAPACITY = (
    int(r) for r in (UnassignedReason.EXPIRED, UnassignedReason.NO_FEASIBLE_SITE, UnassignedReason.ZERO_PROBABILITY,
                     UnassignedReason.CAPACITY))


@dataclass(frozen=True)
class Problem:
    request_id: str
    target_ids: Sequence[str]  # (N,)
    site_ids: tuple[str, ...]  # (S,)
    time_unix: float  # middle of the window: where geometry is evaluated
    targets: TargetArrays
    sites: SiteArrays
    expired: np.ndarray  # (N,) bool
    snr_required: float

    @property
    def n_targets(self) -> int:
        return len(self.target_ids)

    @property
    def pairs(self) -> int:
        return len(self.target_ids) * len(self.site_ids)


def _finite(value, field: str, lo: float | None = None, hi: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"must be a finite number, got {value!r}", field=field)
    if positive and value <= 0:
        raise InvalidArgument(f"must be positive, got {value!r}", field=field)
    if lo is not None and value < lo or hi is not None and value > hi:
        raise InvalidArgument(f"must be within [{lo}, {hi}], got {value!r}", field=field)
    return float(value)


def _accepts(value, lo: float | None, hi: float | None, positive: bool) -> bool:
    """What `_finite` accepts, without building the field's name: a request's few dozen
    scalars are checked here and only an offender pays for its name and message."""
    return (type(value) is float or type(value) is int) and math.isfinite(value) and not (
        positive and value <= 0 or lo is not None and value < lo or hi is not None and value > hi)


_SCALAR_MAX = 32


def _in_range(arr: np.ndarray, lo: float | None, hi: float | None, positive: bool) -> np.ndarray:
    """Per element: what `_finite` accepts, in one vectorised pass."""
    ok = np.isfinite(arr)
    if lo is not None:
        ok &= arr >= lo
    if hi is not None:
        ok &= arr <= hi
    if positive:
        ok &= arr > 0
    return ok


def _column(values: list, field: Callable[[int], str], lo: float | None = None, hi: float | None = None,
            positive: bool = False) -> np.ndarray:
    """A float column checked in one vectorised pass; `field(i)` names element i (e.g.
    "targets[3].ra_deg"). Only on failure is the first offender found, by the scalar check,
    so its message names it. Keeps a 10,000-target request's validation to a few ms.
    Short columns (most alert bursts) are checked by the scalar loop: five numpy calls
    cost more than a few float comparisons."""
    if len(values) <= _SCALAR_MAX:
        for i, v in enumerate(values):
            if not _accepts(v, lo, hi, positive):
                _finite(v, field(i), lo, hi, positive)
        return np.array(values, dtype=np.float64)
    try:
        arr = np.array(values, dtype=np.float64)
        if _in_range(arr, lo, hi, positive).all():
            return arr
    except (TypeError, ValueError):
        pass
    for i, v in enumerate(values):
        _finite(v, field(i), lo, hi, positive)
    raise AssertionError("unreachable: the scalar check raises")  # pragma: no cover


@functools.lru_cache(maxsize=8)
def _table_arrays(table: SiteTable) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-site static columns of a (frozen, hashable) site table, computed once."""
    return (table.index(), np.array([x.latitude_deg for x in table.site]), np.array([x.longitude_deg for x in table.site]),
            np.array([x.aperture_m for x in table.site]),
            np.array([[b in x.bands for b in physics.BANDS] for x in table.site], dtype=bool),
            np.array([x.capacity for x in table.site], dtype=np.int64))


def validate(req: CoordinateRequest, table: SiteTable, cfg: CoordinationConfig, targets_checked: bool = False,
             sites: SiteArrays | None = None) -> Problem:
    """The engine's Problem from a request, every field checked (InvalidArgument naming it).

    `targets_checked`: the targets are columns that were each checked as they arrived (a
    standing plan's snapshot: `PlanState` checks every upsert), so they are taken as they are
    instead of being checked again on every plan. `sites`: `check_sites` of these
    observatories, kept by the caller since they last changed (a standing plan's sites
    change by events, not per plan). Time and window are always checked.
    """
    t0 = _finite(req.time_unix, "time_unix", 0.0, 4.1e9)
    window = _finite(req.window_s, "window_s", positive=True)
    snr = cfg.snr_required if req.snr_required is None else _finite(req.snr_required, "snr_required", positive=True)
    if not req.observatories:
        raise InvalidArgument("at least one observatory is required", field="observatories")
    if len(req.observatories) > cfg.max_observatories:
        raise InvalidArgument(f"at most {cfg.max_observatories} observatories", field="observatories")
    _check_counts(len(req.targets), len(req.observatories), cfg)
    if sites is None:
        sites = check_sites(req.observatories, table)
    cols = req.targets if isinstance(req.targets, TargetColumns) else target_columns(req.targets)
    ra, dec, mag, band, exp, val, due = _target_arrays(cols) if targets_checked else _check_targets(cols)
    expired = due <= t0
    # Urgent: flagged time-critical, or due before this window ends (no later chance).
    crit = np.asarray(cols.time_critical, dtype=bool) | (due <= t0 + window)
    return Problem(req.request_id, cols.id, tuple(o.site_id for o in req.observatories), t0 + window / 2.0,
                   TargetArrays(ra, dec, mag, band, exp, val, crit), sites, expired, snr)


def _check_counts(n_targets: int, n_sites: int, cfg: CoordinationConfig) -> None:
    if n_targets > cfg.max_targets:
        raise InvalidArgument(f"at most {cfg.max_targets} targets", field="targets")
    pairs = n_targets * n_sites
    if pairs > cfg.batching.max_batch_pairs:
        # One model step holds at most max_batch_pairs rows; a bigger request would run
        # alone past that budget (and its memory). Split it, or raise the limit.
        raise InvalidArgument(f"{n_targets} targets x {n_sites} observatories = {pairs} pairs "
                              f"exceeds batching.max_batch_pairs={cfg.batching.max_batch_pairs}; split the request",
                              field="targets")


def check_targets(cols: TargetColumns, n_sites: int, cfg: CoordinationConfig) -> None:
    """What `validate` checks of the targets alone (a standing plan's upsert: its sites,
    time and window were checked when they were set), InvalidArgument naming the field."""
    _check_counts(len(cols), n_sites, cfg)
    _check_targets(cols)


def check_sites(observatories: Sequence, table: SiteTable) -> SiteArrays:
    """The observatories checked against the site table (InvalidArgument naming
    `observatories[j].<field>`), as the per-site arrays the features use.

    Cached by value: the requests of one decision window carry the same observatories, and
    checking twelve of them was a third of a small request's time on the event loop. The
    arrays are read-only (every caller of the same sites shares them); a refused list raises
    and is not cached."""
    observatories = tuple(observatories)
    if all(map(_plain, observatories)):
        return _check_sites(observatories, table)
    return _check_sites.__wrapped__(observatories, table)


def _plain(o) -> bool:
    """Whether `o` holds exactly the types the wire gives (what a cache hit may stand in
    for): equal values of other types (True == 1, a float subclass, an unhashable
    Conditions) are checked afresh, so a cached answer never admits what the check refuses."""
    return (type(o.site_id) is str and type(o.open) is bool and (o.capacity is None or type(o.capacity) is int)
            and type(o.forecast) is Conditions and (o.current is None or type(o.current) is Conditions)
            and all(type(v) is float for c in (o.forecast, o.current) if c is not None
                    for v in (c.seeing_arcsec, c.cloud_extinction_mag, c.humidity_pct)))


@functools.lru_cache(maxsize=256)
def _check_sites(observatories: tuple, table: SiteTable) -> SiteArrays:
    index, lat, lon, aperture, bands, capacity = _table_arrays(table)
    seen: set[str] = set()
    rows = np.empty(len(observatories), dtype=np.int64)
    caps = np.empty(len(observatories), dtype=np.int64)
    for j, o in enumerate(observatories):
        f = f"observatories[{j}]"
        if o.site_id not in index:
            raise InvalidArgument(f"unknown site {o.site_id!r}", field=f"{f}.site_id")
        if o.site_id in seen:
            raise InvalidArgument(f"site {o.site_id!r} listed twice", field=f"{f}.site_id")
        seen.add(o.site_id)
        if o.forecast is None:
            raise InvalidArgument("a forecast is required", field=f"{f}.forecast")
        rows[j] = index[o.site_id]
        cap = capacity[rows[j]] if o.capacity is None else o.capacity
        if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 0:
            raise InvalidArgument(f"must be a non-negative integer, got {cap!r}", field=f"{f}.capacity")
        caps[j] = cap
    weather = {}
    for name in ("forecast", "current"):
        js = [j for j, o in enumerate(observatories) if getattr(o, name) is not None]
        conds = [getattr(observatories[j], name) for j in js]
        for attr, lo, hi, pos in (("seeing_arcsec", None, None, True), ("cloud_extinction_mag", 0.0, 20.0, False),
                                  ("humidity_pct", 0.0, 100.0, False)):
            weather[name, attr] = _column([getattr(c, attr) for c in conds],
                                          lambda k, a=attr, n=name: f"observatories[{js[k]}].{n}.{a}", lo, hi, pos)
    out = SiteArrays(
        index=rows, latitude_deg=lat[rows], longitude_deg=lon[rows], aperture_m=aperture[rows], bands=bands[rows],
        capacity=caps, open=np.array([bool(o.open) for o in observatories], dtype=bool),
        seeing=weather["forecast", "seeing_arcsec"], cloud=weather["forecast", "cloud_extinction_mag"],
        humidity=weather["forecast", "humidity_pct"])
    for f in fields(out):
        getattr(out, f.name).flags.writeable = False
    return out


def target_columns(ts: Sequence[Target]) -> TargetColumns:
    """Columns from `Target` dataclasses, each value checked as it is read (a bool, a string
    or a NaN where a number belongs is refused naming `targets[i].<field>`)."""
    n = len(ts)
    num = lambda name, **kw: _column([getattr(t, name) for t in ts],  # noqa: E731
                                     lambda i: f"targets[{i}].{name}", **kw)
    ra, dec = num("ra_deg", lo=0.0, hi=360.0), num("dec_deg", lo=-90.0, hi=90.0)
    mag = num("magnitude", lo=-30.0, hi=40.0)
    try:
        band = np.array([_BAND_INDEX[t.band] for t in ts], dtype=np.int64)
    except (KeyError, TypeError):
        i = next(i for i, t in enumerate(ts) if not isinstance(t.band, str) or t.band not in _BAND_INDEX)
        raise InvalidArgument(f"must be one of {', '.join(physics.BANDS)}, got {ts[i].band!r}",
                              field=f"targets[{i}].band") from None
    exp, val = num("exposure_s", positive=True), num("value", positive=True)
    has_due = np.array([t.deadline_unix is not None for t in ts], dtype=bool)
    due = np.zeros(n)
    if has_due.any():
        idx = np.flatnonzero(has_due)
        due[idx] = _column([ts[i].deadline_unix for i in idx], lambda k: f"targets[{idx[k]}].deadline_unix")
    return TargetColumns([t.id for t in ts], ra, dec, mag, band, exp, val, due, has_due,
                         np.array([bool(t.time_critical) for t in ts], dtype=bool))


def _checked(arr: np.ndarray, name: str, lo: float | None = None, hi: float | None = None,
             positive: bool = False) -> np.ndarray:
    """A float64 column checked in one vectorised pass; only on failure is the first
    offender looked up, so that the error names it (`targets[3].ra_deg`)."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.shape[0] <= _SCALAR_MAX:  # a few comparisons cost less than five numpy calls
        for i, v in enumerate(arr.tolist()):
            if not _accepts(v, lo, hi, positive):
                _finite(v, f"targets[{i}].{name}", lo, hi, positive)
        return arr
    ok = _in_range(arr, lo, hi, positive)
    if not ok.all():
        i = int(np.argmin(ok))
        _finite(float(arr[i]), f"targets[{i}].{name}", lo, hi, positive)
    return arr


def _target_arrays(c: TargetColumns):
    """`_check_targets`' arrays from columns already checked, without checking them again."""
    due = np.where(np.asarray(c.has_deadline, dtype=bool), np.asarray(c.deadline_unix, dtype=np.float64), np.inf)
    return (*(np.asarray(col, dtype=np.float64) for col in (c.ra_deg, c.dec_deg, c.magnitude)),
            np.asarray(c.band, dtype=np.int64),
            *(np.asarray(col, dtype=np.float64) for col in (c.exposure_s, c.value)), due)


def _check_targets(c: TargetColumns):
    """The target columns checked, field by field in the order of `Target`: (ra, dec,
    magnitude, band, exposure, value, deadline) with no deadline as +inf."""
    ids = c.id
    n = len(ids)
    if any(len(col) != n for col in (c.ra_deg, c.dec_deg, c.magnitude, c.band, c.exposure_s, c.value,
                                      c.deadline_unix, c.has_deadline, c.time_critical)):
        raise InvalidArgument(f"every target column must hold {n} rows", field="targets")
    if len(set(ids)) != n or not all(ids):
        seen_ids: set[str] = set()
        for i, tid in enumerate(ids):
            if not tid:
                raise InvalidArgument("must not be empty", field=f"targets[{i}].id")
            if tid in seen_ids:
                raise InvalidArgument(f"duplicate target id {tid!r}", field=f"targets[{i}].id")
            seen_ids.add(tid)
    ra = _checked(c.ra_deg, "ra_deg", 0.0, 360.0)
    dec = _checked(c.dec_deg, "dec_deg", -90.0, 90.0)
    mag = _checked(c.magnitude, "magnitude", -30.0, 40.0)
    band = np.asarray(c.band, dtype=np.int64)
    bad = (band < 0) | (band >= len(physics.BANDS))
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgument(f"must be one of {', '.join(physics.BANDS)}, got an unset or unknown band",
                              field=f"targets[{i}].band")
    exp = _checked(c.exposure_s, "exposure_s", positive=True)
    val = _checked(c.value, "value", positive=True)
    has_due = np.asarray(c.has_deadline, dtype=bool)
    due = np.full(n, np.inf)
    if has_due.any():
        idx = np.flatnonzero(has_due)
        got = np.asarray(c.deadline_unix, dtype=np.float64)[idx]
        finite = np.isfinite(got)
        if not finite.all():
            k = int(np.argmin(finite))
            _finite(float(got[k]), f"targets[{idx[k]}].deadline_unix")
        due[idx] = got
    return ra, dec, mag, band, exp, val, due


def result(p: Problem, feasible: np.ndarray, prob: np.ndarray, snr: np.ndarray, choice: np.ndarray,
           solver: str, version: str = "") -> CoordinateResult:
    """The result's columns from the solver's choice (N,) and the (N, S) probability and SNR
    grids; no object per target (`CoordinateResult.assignments` builds them on demand)."""
    placed = np.flatnonzero(choice >= 0)
    site = choice[placed].astype(np.int64)
    p_placed, snr_placed = prob[placed, site], snr[placed, site]  # (K,)
    ev_placed = p.targets.value[placed] * p_placed
    total = sum(ev_placed.tolist())  # left to right, as before: the same float
    left = np.flatnonzero(choice < 0)
    # Why each unassigned row is left out; the first that holds of: expired, no feasible
    # site, negligible P everywhere, capacity.
    ok_left = feasible[left]  # (U, S)
    any_feasible = ok_left.any(axis=1) if ok_left.shape[1] else np.zeros(left.size, dtype=bool)
    best = (prob[left] * ok_left).max(axis=1) if ok_left.shape[1] else np.zeros(left.size)
    reason = np.full(left.size, _CAPACITY, dtype=np.int64)
    reason[best * p.targets.value[left] <= 1e-12] = _ZERO_PROBABILITY
    reason[~any_feasible] = _NO_FEASIBLE_SITE
    reason[p.expired[left]] = _EXPIRED
    cols = ResultColumns(p.target_ids, p.site_ids, placed, site, ev_placed, p_placed, snr_placed, left, reason)
    return CoordinateResult(p.request_id, cols, total, solver, version=version)
