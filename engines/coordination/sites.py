"""The site table: observatories read from a TOML file, never hard-coded."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from engines.config import check, from_mapping

BANDS = ("u", "g", "r", "i", "z", "y")
# The site table shipped with the package (training/data/sites.toml), found relative to the
# repository so that engines do not import training code.
DEFAULT_SITES_FILE = Path(__file__).resolve().parents[2] / "training" / "data" / "sites.toml"


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    latitude_deg: float
    longitude_deg: float  # east-positive
    elevation_m: float
    aperture_m: float
    bands: tuple[str, ...]
    capacity: int  # targets per decision window
    source: str = ""

    def __post_init__(self) -> None:
        check(-90.0 <= self.latitude_deg <= 90.0, "latitude_deg", "must be within [-90, 90]")
        check(-180.0 <= self.longitude_deg <= 360.0, "longitude_deg", "must be within [-180, 360]")
        check(self.aperture_m > 0, "aperture_m", "must be positive")
        check(self.capacity >= 0, "capacity", "must be >= 0")
        check(all(b in BANDS for b in self.bands), "bands", f"bands must be among {BANDS}")


@dataclass(frozen=True)
class SiteTable:
    site: tuple[Site, ...]

    def __post_init__(self) -> None:
        ids = [s.id for s in self.site]
        check(len(ids) == len(set(ids)), "site", "site ids must be unique")
        check(len(ids) > 0, "site", "at least one site is required")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.site)

    def index(self) -> dict[str, int]:
        return {s.id: i for i, s in enumerate(self.site)}


def load_sites(path: Path | str | None = None) -> SiteTable:
    """Parse and validate a site table; errors name the offending key (e.g. site[3].bands)."""
    path = Path(path) if path is not None else DEFAULT_SITES_FILE
    with open(path, "rb") as fh:
        return from_mapping(SiteTable, tomllib.load(fh))
