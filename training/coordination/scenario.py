"""Scenario files: per-site climate, the target distribution and hidden per-site effects."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from engines.config import check, from_mapping

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_SCENARIO = DATA_DIR / "scenarios" / "default.toml"
DEFAULT_SITES = DATA_DIR / "sites.toml"


@dataclass(frozen=True)
class ScenarioMeta:
    name: str
    start: str  # ISO UTC
    days: int = 365
    utc_hour: float = 6.0
    utc_hour_jitter: float = 2.0
    snr_required: float = 10.0
    min_altitude_deg: float = 25.0
    max_sun_altitude_deg: float = -12.0
    min_moon_separation_deg: float = 15.0

    @property
    def start_unix(self) -> float:
        return dt.datetime.fromisoformat(self.start).replace(tzinfo=dt.timezone.utc).timestamp()

    def __post_init__(self) -> None:
        check(self.days >= 1, "days", "must be >= 1")
        check(self.snr_required > 0, "snr_required", "must be positive")


@dataclass(frozen=True)
class TargetDist:
    count: int = 300
    mag_min: float = 20.0
    mag_max: float = 25.0
    bands: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
    band_weights: tuple[float, ...] = (1, 1, 1, 1, 1, 1)
    exposures_s: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0)
    dec_min_deg: float = -80.0
    dec_max_deg: float = 50.0
    value_sigma: float = 0.6
    critical_fraction: float = 0.05
    critical_value_factor: float = 4.0

    def __post_init__(self) -> None:
        check(len(self.bands) == len(self.band_weights), "band_weights", "one weight per band")
        check(self.mag_max > self.mag_min, "mag_max", "must exceed mag_min")
        check(0.0 <= self.critical_fraction <= 1.0, "critical_fraction", "must be within [0, 1]")


@dataclass(frozen=True)
class WeatherModel:
    cloud_sd_mag: float = 0.15
    seeing_sd_log: float = 0.12
    humidity_sd: float = 6.0
    nominal_closure_humidity: float = 90.0


@dataclass(frozen=True)
class Climate:
    clear_fraction: float = 0.7
    cloud_mean_mag: float = 0.6
    seeing_median: float = 0.8
    humidity_mean: float = 40.0
    humidity_sd: float = 15.0


@dataclass(frozen=True)
class Hidden:
    """Effects only a site's own logs reveal; the defaults are what physics assumes."""

    zeropoint_offset_mag: float = 0.0
    cloud_bias_mag: float = 0.0
    seeing_factor: float = 1.0
    closure_humidity: float | None = None  # None: the nominal closure humidity
    downtime_prob: float = 0.0


@dataclass(frozen=True)
class Scenario:
    scenario: ScenarioMeta
    targets: TargetDist = field(default_factory=TargetDist)
    weather: WeatherModel = field(default_factory=WeatherModel)
    climate: dict[str, Climate] = field(default_factory=dict)
    hidden: dict[str, Hidden] = field(default_factory=dict)


def load_scenario(path: Path | str | None = None) -> Scenario:
    with open(Path(path) if path else DEFAULT_SCENARIO, "rb") as fh:
        return from_mapping(Scenario, tomllib.load(fh))
