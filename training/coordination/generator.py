"""Random observatory networks for evaluation: `galactic-train scenarios --count N --seed S --out DIR`.

Each network is a directory with a site table (`sites.toml`: a subset of the shipped sites,
their capacities scaled) and a scenario (`scenario.toml`: climates, weather noise, targets and
hidden per-site effects), both loaded by the ordinary loaders, so that
`galactic-train evaluate --scenario DIR/scenario.toml --site-table DIR/sites.toml` runs on it.
Network i of seed S is drawn from `numpy.random.default_rng([S, i])`: the same command writes
the same files, and a longer list extends a shorter one.

The ranges (`RANGES`) are wide on purpose; each names what it spans:
- sites: 4 to all 13 of the shipped table (real coordinates and apertures), capacity x0.3
  (tight) to x2 (loose) of the table's, 100 to 800 targets a window;
- climate per site: clear fraction 0.35-0.9, cloud when not clear 0.3-1.3 mag, median seeing
  0.5-1.5", humidity mean 15-70 % (sd 8-22): from the Atacama to a humid mid-latitude site;
- weather around the forecast: cloud sd 0.05-0.35 mag, seeing log-sd 0.05-0.3, humidity
  sd 3-12 %;
- hidden per-site effects, each kind at a site with probability 0.35: a zero-point offset of
  -0.5 to +0.3 mag (a dirty mirror, a better detector than believed), a forecast that
  under-reports cloud by 0.1-0.8 mag, seeing 0.85-1.6x the forecast (dome seeing, a local
  forecast's bias), a dome that closes at 40-85 % humidity instead of 90 %, instrument
  downtime 3-40 % of windows;
- targets: time-critical share 0 to 1/3, worth 1-8x the others; magnitudes from 16-21 to
  3-6 mag fainter (bright to faint), value log-sd 0.3-1.0, random band weights;
- the windows: centred on a random chosen site's local midnight (+/- 2 h), over a year from
  a random date in 2024-2028.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.coordination.sites import BANDS, SiteTable, load_sites

_HIDDEN_P = 0.35  # chance that a site has a given kind of hidden effect


@dataclass(frozen=True)
class Ranges:
    """Uniform ranges (low, high) the networks are drawn from; see the module docstring."""

    sites: tuple[int, int] = (4, 13)
    capacity_factor: tuple[float, float] = (0.3, 2.0)
    targets: tuple[int, int] = (100, 800)
    clear_fraction: tuple[float, float] = (0.35, 0.9)
    cloud_mean_mag: tuple[float, float] = (0.3, 1.3)
    seeing_median: tuple[float, float] = (0.5, 1.5)
    humidity_mean: tuple[float, float] = (15.0, 70.0)
    humidity_sd: tuple[float, float] = (8.0, 22.0)
    cloud_sd_mag: tuple[float, float] = (0.05, 0.35)
    seeing_sd_log: tuple[float, float] = (0.05, 0.3)
    weather_humidity_sd: tuple[float, float] = (3.0, 12.0)
    zeropoint_offset_mag: tuple[float, float] = (-0.5, 0.3)
    cloud_bias_mag: tuple[float, float] = (0.1, 0.8)
    seeing_factor: tuple[float, float] = (0.85, 1.6)
    closure_humidity: tuple[float, float] = (40.0, 85.0)
    downtime_prob: tuple[float, float] = (0.03, 0.4)
    critical_fraction: tuple[float, float] = (0.0, 1.0 / 3.0)
    critical_value_factor: tuple[float, float] = (1.0, 8.0)
    mag_min: tuple[float, float] = (16.0, 21.0)
    mag_span: tuple[float, float] = (3.0, 6.0)
    value_sigma: tuple[float, float] = (0.3, 1.0)


RANGES = Ranges()


def network(seed: int, index: int, table: SiteTable, r: Ranges = RANGES) -> tuple[dict, dict]:
    """Network `index` of `seed`: (site table document, scenario document), TOML-shaped dicts."""
    rng = np.random.default_rng([seed, index])
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    k = int(rng.integers(r.sites[0], min(r.sites[1], len(table.site)) + 1))
    chosen = sorted(rng.choice(len(table.site), k, replace=False).tolist())
    factor = u(r.capacity_factor)
    sites = [{"id": s.id, "name": s.name, "latitude_deg": s.latitude_deg, "longitude_deg": s.longitude_deg,
              "elevation_m": s.elevation_m, "aperture_m": s.aperture_m, "bands": list(s.bands),
              "capacity": max(1, round(s.capacity * factor)), "source": s.source}
             for s in (table.site[i] for i in chosen)]
    ids = [s["id"] for s in sites]
    anchor = sites[int(rng.integers(k))]
    start = dt.datetime(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 4 * 365)))
    climate = {i: {"clear_fraction": u(r.clear_fraction), "cloud_mean_mag": u(r.cloud_mean_mag),
                   "seeing_median": u(r.seeing_median), "humidity_mean": u(r.humidity_mean),
                   "humidity_sd": u(r.humidity_sd)} for i in ids}
    hidden: dict[str, dict] = {}
    for i in ids:
        h = {}
        for key, lo_hi in (("zeropoint_offset_mag", r.zeropoint_offset_mag), ("cloud_bias_mag", r.cloud_bias_mag),
                           ("seeing_factor", r.seeing_factor), ("closure_humidity", r.closure_humidity),
                           ("downtime_prob", r.downtime_prob)):
            if rng.random() < _HIDDEN_P:
                h[key] = u(lo_hi)
        if h:
            hidden[i] = h
    mag_min = u(r.mag_min)
    weights = rng.dirichlet(np.ones(len(BANDS)) * 2.0)
    scenario = {
        "scenario": {"name": f"generated-{seed}-{index:02d}", "start": start.isoformat(), "days": 365,
                     "utc_hour": float((-anchor["longitude_deg"] / 15.0) % 24.0), "utc_hour_jitter": 2.0},
        "targets": {"count": int(rng.integers(r.targets[0], r.targets[1] + 1)), "mag_min": mag_min,
                    "mag_max": mag_min + u(r.mag_span), "bands": list(BANDS),
                    "band_weights": [float(x) for x in weights], "value_sigma": u(r.value_sigma),
                    "critical_fraction": u(r.critical_fraction), "critical_value_factor": u(r.critical_value_factor)},
        "weather": {"cloud_sd_mag": u(r.cloud_sd_mag), "seeing_sd_log": u(r.seeing_sd_log),
                    "humidity_sd": u(r.weather_humidity_sd)},
        "climate": climate,
        "hidden": hidden,
    }
    return {"site": sites}, scenario


def write(count: int, seed: int, out: Path, table_path: Path | None = None) -> list[Path]:
    """Write networks 0..count-1 of `seed` under `out` (one directory each); their paths."""
    table = load_sites(table_path)
    dirs = []
    for i in range(count):
        sites, scenario = network(seed, i, table)
        d = Path(out) / f"net-{seed}-{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "sites.toml").write_text(f"# galactic-train scenarios --seed {seed}: network {i}\n" + _toml(sites))
        (d / "scenario.toml").write_text(f"# galactic-train scenarios --seed {seed}: network {i}\n" + _toml(scenario))
        dirs.append(d)
    return dirs


def _toml(doc: dict) -> str:
    """TOML for what `network` builds: tables of scalars and lists, and one array of tables."""
    lines: list[str] = []

    def table(prefix: str, body: dict) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if scalars or not body:
            lines.append(f"\n[{prefix}]")
            lines.extend(f"{k} = {_value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)

    for key, body in doc.items():
        if isinstance(body, list):
            for row in body:
                lines.append(f"\n[[{key}]]")
                lines.extend(f"{k} = {_value(v)}" for k, v in row.items())
        else:
            table(key, body)
    return "\n".join(lines).lstrip("\n") + "\n"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)
