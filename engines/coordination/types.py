"""Plain request/response types of the coordination engine (mirrored by coordination.proto).

Targets and results come in two forms: one dataclass per target (`Target`, `Assignment`,
`Unassigned`), convenient for Python callers, and columns (`TargetColumns`,
`ResultColumns`), which front ends fill straight from their wire format and read back
without an object per target (a 10,000-target call otherwise spends more time building
and reading objects than in the model). The engine works on columns; the dataclasses are
converted on the way in and built on demand on the way out.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Conditions:
    """Weather at a site: measured now, or forecast for the decision window."""

    seeing_arcsec: float  # zenith FWHM at 500 nm
    cloud_extinction_mag: float  # grey extinction by cloud, >= 0
    humidity_pct: float  # relative humidity, 0..100


@dataclass(frozen=True)
class Observatory:
    """One site's state for this window. `site_id` must be in the engine's site table.

    The network is trained on forecasts, so `forecast` drives P(success); `current` is
    carried for the record and checked, and `open=False` (dome closed, instrument down)
    removes the site outright.
    """

    site_id: str
    forecast: Conditions
    current: Conditions | None = None
    open: bool = True
    capacity: int | None = None  # overrides the table's capacity for this window


@dataclass(frozen=True)
class Target:
    id: str
    ra_deg: float  # ICRS / J2000
    dec_deg: float
    magnitude: float  # AB magnitude in `band`
    band: str  # one of u g r i z y
    exposure_s: float
    value: float  # science value (priority), > 0
    deadline_unix: float | None = None  # must be observed before this time
    time_critical: bool = False


def _columns_equal(a, b) -> bool:
    """Field by field, arrays by value (dataclass equality would compare arrays elementwise)."""
    if type(a) is not type(b):
        return NotImplemented
    return all(np.array_equal(np.asarray(getattr(a, f.name)), np.asarray(getattr(b, f.name)))
               for f in dataclasses.fields(a))


@dataclass(frozen=True, eq=False)
class TargetColumns:
    """N targets as columns, row i being `targets[i]` (errors name it so). Filled by front
    ends from their wire format, or by `problem.target_columns()` from `Target`s; checked by
    the engine like the dataclasses (finite, in range, ids unique and non-empty)."""

    id: Sequence[str]  # (N,)
    ra_deg: np.ndarray  # (N,) float64, ICRS / J2000
    dec_deg: np.ndarray  # (N,) float64
    magnitude: np.ndarray  # (N,) float64, AB magnitude in `band`
    band: np.ndarray  # (N,) int64 index into BANDS (u g r i z y); -1: unset or unknown, refused
    exposure_s: np.ndarray  # (N,) float64
    value: np.ndarray  # (N,) float64, > 0
    deadline_unix: np.ndarray  # (N,) float64; read only where has_deadline
    has_deadline: np.ndarray  # (N,) bool
    time_critical: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.id)

    def __eq__(self, other: object) -> bool:
        return _columns_equal(self, other)

    __hash__ = None  # mutable arrays inside


@dataclass(frozen=True)
class CoordinateRequest:
    time_unix: float  # start of the decision window
    observatories: tuple[Observatory, ...]
    targets: tuple[Target, ...] | TargetColumns
    window_s: float = 3600.0
    snr_required: float | None = None  # None: the engine's default
    request_id: str = ""


@dataclass(frozen=True)
class Assignment:
    target_id: str
    site_id: str
    expected_value: float  # value * p_success
    p_success: float
    expected_snr: float


class UnassignedReason(enum.IntEnum):
    NO_FEASIBLE_SITE = 1  # horizon, twilight, Moon distance, band or closed sites rule out all
    CAPACITY = 2  # feasible, but the capacity went to targets of higher expected value
    EXPIRED = 3  # deadline before the window starts
    ZERO_PROBABILITY = 4  # feasible, but P(success) is negligible everywhere


@dataclass(frozen=True)
class Unassigned:
    target_id: str
    reason: UnassignedReason


@dataclass(frozen=True, eq=False)
class ResultColumns:
    """A result as columns over the request's rows: K assigned targets, U unassigned ones,
    each in request order (K + U = N)."""

    target_id: Sequence[str]  # (N,) the request's target ids
    site_id: tuple[str, ...]  # (S,) the request's observatories
    assigned: np.ndarray  # (K,) int64 target rows, ascending
    site: np.ndarray  # (K,) int64 index into site_id
    expected_value: np.ndarray  # (K,) float64, value * p_success
    p_success: np.ndarray  # (K,) float64
    expected_snr: np.ndarray  # (K,) float64
    unassigned: np.ndarray  # (U,) int64 target rows, ascending
    reason: np.ndarray  # (U,) int64 UnassignedReason values

    def __eq__(self, other: object) -> bool:
        return _columns_equal(self, other)

    __hash__ = None  # mutable arrays inside


@dataclass(frozen=True)
class CoordinateResult:
    request_id: str
    columns: ResultColumns
    total_expected_value: float
    solver: str  # "linear_sum_assignment", "highs_lp", "augmenting_path", "+"-joined, or "empty"
    stats: dict[str, float] = field(default_factory=dict)
    version: str = ""  # checkpoint hash of the weights that scored it (changes on reload)

    @functools.cached_property
    def assignments(self) -> tuple[Assignment, ...]:
        """The assigned targets in request order (built on first use)."""
        c = self.columns
        ids, sites = c.target_id, c.site_id
        return tuple(Assignment(ids[i], sites[j], e, q, r) for i, j, e, q, r in zip(
            c.assigned.tolist(), c.site.tolist(), c.expected_value.tolist(), c.p_success.tolist(),
            c.expected_snr.tolist()))

    @functools.cached_property
    def unassigned(self) -> tuple[Unassigned, ...]:
        """The targets left out, in request order, with why (built on first use)."""
        c = self.columns
        reasons = {int(r): r for r in UnassignedReason}
        return tuple(Unassigned(c.target_id[i], reasons[r]) for i, r in zip(c.unassigned.tolist(), c.reason.tolist()))


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the raw Inference interface; -1 in `shape` is the batch axis."""

    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
