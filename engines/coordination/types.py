"""Plain request/response types of the coordination engine (mirrored by coordination.proto)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class CoordinateRequest:
    time_unix: float  # start of the decision window
    observatories: tuple[Observatory, ...]
    targets: tuple[Target, ...]
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


@dataclass(frozen=True)
class CoordinateResult:
    request_id: str
    assignments: tuple[Assignment, ...]
    unassigned: tuple[Unassigned, ...]
    total_expected_value: float
    solver: str  # "linear_sum_assignment", "highs_lp", both "+"-joined (urgent pass first), or "empty"
    stats: dict[str, float] = field(default_factory=dict)
    version: str = ""  # checkpoint hash of the weights that scored it (changes on reload)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the raw Inference interface; -1 in `shape` is the batch axis."""

    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
