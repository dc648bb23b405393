"""Site observation logs: the one file format a real observatory hands over.

One CSV file per site, one row per attempted observation. CSV and not Parquet: the rows are
a few thousand a year per site, every observatory's tooling writes CSV, and Parquet would
add pyarrow (~130 MB installed) to every install for no measurable gain at this size.

`SCHEMA` below is the only definition of the format (README "Site logs" shows it; a test
checks the two agree). The version is a column, so a file says what it is on every row and
plain CSV tools keep working. Training never sees a log row directly: `to_logs` turns the
rows into the model's features with the engine's own `features.pair_batch`, the code that
featurises requests at serving time, so the model trains on exactly what it is served.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.coordination import features, physics
from engines.coordination.config import ConstraintsConfig
from engines.coordination.sites import SiteTable

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "int", "float", "str", "time", "bool"
    unit: str
    lo: float | None = None  # inclusive bounds for numbers
    hi: float | None = None
    optional: bool = False  # may be empty
    doc: str = ""


SCHEMA: tuple[Column, ...] = (
    Column("schema_version", "int", "", 1, 1, doc="format version of this row; 1"),
    Column("site_id", "str", "", doc="the site's id in the site table (sites.toml); one site per file"),
    Column("time_utc", "time", "ISO 8601 UTC", doc="when the observation was decided and started, e.g. 2025-03-10T06:12:00Z"),
    Column("ra_deg", "float", "deg", 0.0, 360.0, doc="target right ascension, ICRS/J2000"),
    Column("dec_deg", "float", "deg", -90.0, 90.0, doc="target declination, ICRS/J2000"),
    Column("band", "str", "", doc="filter: one of u g r i z y"),
    Column("magnitude", "float", "AB mag", -2.0, 35.0, doc="target brightness in the band"),
    Column("exposure_s", "float", "s", 0.1, 7200.0, doc="exposure time"),
    Column("forecast_seeing_arcsec", "float", "arcsec", 0.05, 10.0,
           doc="forecast seeing FWHM at 500 nm, zenith, at decision time"),
    Column("forecast_cloud_mag", "float", "mag", 0.0, 10.0, doc="forecast cloud extinction at decision time"),
    Column("forecast_humidity_pct", "float", "%", 0.0, 100.0, doc="forecast relative humidity at decision time"),
    Column("success", "bool", "0/1", doc="1 when the observation reached the required SNR"),
    Column("achieved_snr", "float", "", 0.0, 1e9, optional=True,
           doc="measured SNR; empty when nothing was measured (dome closed, instrument down)"),
)
COLUMNS = tuple(c.name for c in SCHEMA)


class SiteLogError(ValueError):
    """A log file breaks the schema; `problems` holds (line, column, message), line 1 the header."""

    def __init__(self, path: Path, problems: list[tuple[int, str, str]]) -> None:
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  line {line}, {col}: {msg}" for line, col, msg in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} invalid row(s) (pass --skip-invalid to drop them)\n{shown}{more}")


@dataclass(frozen=True)
class Logs:
    """A site's log as the model's training arrays: features and what happened."""

    features: np.ndarray  # (M, F) float32
    site: np.ndarray  # (M,) int64, table index
    success: np.ndarray  # (M,) float32 0/1
    log_snr: np.ndarray  # (M,) float32 achieved log10 SNR (0 where unknown)
    snr_known: np.ndarray  # (M,) float32 1 where an SNR was measured

    @staticmethod
    def concat(logs: list["Logs"]) -> "Logs":
        return Logs(*(np.concatenate([getattr(x, f) for x in logs]) for f in
                      ("features", "site", "success", "log_snr", "snr_known")))

    def __len__(self) -> int:
        return int(self.site.shape[0])


@dataclass(frozen=True)
class SiteLog:
    """A validated log: one site's rows as typed columns."""

    site_id: str
    time_unix: np.ndarray  # (M,) float64
    ra_deg: np.ndarray  # (M,)
    dec_deg: np.ndarray  # (M,)
    band: np.ndarray  # (M,) int index into physics.BANDS
    magnitude: np.ndarray  # (M,)
    exposure_s: np.ndarray  # (M,)
    seeing: np.ndarray  # (M,) forecast
    cloud: np.ndarray  # (M,) forecast
    humidity: np.ndarray  # (M,) forecast
    success: np.ndarray  # (M,) bool
    achieved_snr: np.ndarray  # (M,) float64, NaN where not measured
    line: np.ndarray | None = None  # (M,) int: the row's line in its file (None: not from a file)
    skipped: int = 0  # invalid rows dropped with skip_invalid

    def __len__(self) -> int:
        return int(self.time_unix.shape[0])


def _parse_time(text: str) -> float:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None or t.utcoffset() != dt.timedelta(0):
        raise ValueError("must be UTC (end with Z or +00:00)")
    return t.timestamp()


def _format_time(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(col: Column, text: str):
    """The typed value of one cell, or ValueError with a reader's message."""
    if col.kind == "str":
        if not text:
            raise ValueError("is empty")
        return text
    if col.kind == "time":
        return _parse_time(text)
    if col.kind == "bool":
        if text not in ("0", "1"):
            raise ValueError(f"must be 0 or 1, got {text!r}")
        return text == "1"
    value = int(text) if col.kind == "int" else float(text)
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {text!r}")
    if (col.lo is not None and value < col.lo) or (col.hi is not None and value > col.hi):
        raise ValueError(f"{value:g} {col.unit} is outside [{col.lo:g}, {col.hi:g}]".replace("  ", " "))
    return value


def read(path: Path | str, table: SiteTable, skip_invalid: bool = False) -> SiteLog:
    """Read and validate one site's log. Raises SiteLogError naming every bad row by line,
    unless `skip_invalid`, which drops them and counts them in `SiteLog.skipped`."""
    path = Path(path)
    known_sites = set(table.ids)
    problems: list[tuple[int, str, str]] = []
    rows: list[dict] = []
    bad_lines: set[int] = set()
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = tuple(reader.fieldnames or ())
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            # A wrong header is a wrong file, not a bad row: never skippable.
            raise SiteLogError(path, [(1, c, "column missing from the header") for c in missing])
        for row in reader:
            line = reader.line_num
            values = {}
            for col in SCHEMA:
                text = (row.get(col.name) or "").strip()
                if not text and col.optional:
                    values[col.name] = None
                    continue
                try:
                    values[col.name] = _parse(col, text)
                except ValueError as exc:
                    problems.append((line, col.name, str(exc) if text else "is empty"))
                    bad_lines.add(line)
            if line in bad_lines:
                continue
            checks = ((values["site_id"] in known_sites, "site_id", f"unknown site {values['site_id']!r}"),
                      (values["band"] in physics.BANDS, "band", f"must be one of {' '.join(physics.BANDS)}"),
                      (not values["success"] or values["achieved_snr"] is not None, "achieved_snr",
                       "success=1 needs the measured SNR"))
            for ok, name, msg in checks:
                if not ok:
                    problems.append((line, name, msg))
                    bad_lines.add(line)
            if line not in bad_lines:
                rows.append({**values, "line": line})
    site_ids = {r["site_id"] for r in rows}
    if len(site_ids) > 1:
        raise SiteLogError(path, [(1, "site_id", f"one site per file, found {sorted(site_ids)}")])
    if problems and not skip_invalid:
        raise SiteLogError(path, problems)
    if not rows:
        raise SiteLogError(path, [(1, "", "no valid rows")])
    col = lambda name, dtype=np.float64: np.array([r[name] for r in rows], dtype=dtype)  # noqa: E731
    return SiteLog(
        site_id=rows[0]["site_id"], time_unix=col("time_utc"), ra_deg=col("ra_deg"), dec_deg=col("dec_deg"),
        band=np.array([physics.BANDS.index(r["band"]) for r in rows], dtype=np.int64), magnitude=col("magnitude"),
        exposure_s=col("exposure_s"), seeing=col("forecast_seeing_arcsec"), cloud=col("forecast_cloud_mag"),
        humidity=col("forecast_humidity_pct"), success=col("success", bool),
        achieved_snr=np.array([np.nan if r["achieved_snr"] is None else r["achieved_snr"] for r in rows]),
        line=col("line", np.int64), skipped=len(bad_lines))


def write(path: Path | str, log: SiteLog) -> Path:
    """Write `log` in the schema (what `galactic-train simulate-logs` produces)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for i in range(len(log)):
            snr = log.achieved_snr[i]
            w.writerow([SCHEMA_VERSION, log.site_id, _format_time(log.time_unix[i]), f"{log.ra_deg[i]:.6f}",
                        f"{log.dec_deg[i]:.6f}", physics.BANDS[int(log.band[i])], f"{log.magnitude[i]:.4f}",
                        f"{log.exposure_s[i]:g}", f"{log.seeing[i]:.4f}", f"{log.cloud[i]:.4f}",
                        f"{log.humidity[i]:.3f}", int(log.success[i]), "" if np.isnan(snr) else f"{snr:.6g}"])
    return path


# The weakest constraints the engine's featuriser accepts: the target above the horizon and
# the Sun below it. A logged row that breaks them (a wrong time, RA/Dec or site) is invalid.
_PHYSICAL = ConstraintsConfig(min_altitude_deg=0.0, max_sun_altitude_deg=0.0, min_moon_separation_deg=0.0)


def to_logs(log: SiteLog, table: SiteTable, snr_required: float, skip_invalid: bool = False,
            path: Path | str = "<log>") -> Logs:
    """The model's training arrays from a validated log, featurised by the engine's own code.

    Rows whose target was below the horizon, or observed in daylight, at their time are
    invalid (SiteLogError by line), or dropped with `skip_invalid`.
    """
    j = table.index()[log.site_id]
    site = table.site[j]
    one = lambda a: np.asarray([a])  # noqa: E731
    # Consecutive rows with one time and forecast (a window's observations) are one problem:
    # ten times fewer numpy calls, the same per-pair arithmetic.
    key = np.stack([log.time_unix, log.seeing, log.cloud, log.humidity], axis=1)
    starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]).any(axis=1)])
    problems = []
    for a, b in zip(starts, np.r_[starts[1:], len(log)]):
        s = features.SiteArrays(
            index=one(j), latitude_deg=one(site.latitude_deg), longitude_deg=one(site.longitude_deg),
            aperture_m=one(site.aperture_m), bands=np.ones((1, len(physics.BANDS)), dtype=bool), capacity=one(1),
            open=one(True), seeing=log.seeing[a:a + 1], cloud=log.cloud[a:a + 1], humidity=log.humidity[a:a + 1])
        t = features.TargetArrays(ra_deg=log.ra_deg[a:b], dec_deg=log.dec_deg[a:b], magnitude=log.magnitude[a:b],
                                  band=log.band[a:b], exposure_s=log.exposure_s[a:b], value=np.ones(b - a),
                                  critical=np.zeros(b - a, dtype=bool))
        problems.append((float(log.time_unix[a]), t, s, np.zeros(b - a, dtype=bool), snr_required))
    batch = features.pair_batch(problems, _PHYSICAL)
    keep = np.concatenate(batch.feasible)[:, 0]  # (M,) one pair per row, featurised when physically possible
    if not keep.all():
        lines = log.line if log.line is not None else np.arange(len(log)) + 2
        bad = [(int(lines[i]), "time_utc", "target below the horizon or Sun above it at this time (check time, "
                "ra_deg, dec_deg, site_id)") for i in np.flatnonzero(~keep)]
        if not skip_invalid:
            raise SiteLogError(Path(path), bad)
    known = np.isfinite(log.achieved_snr[keep])
    # SNRs under 1e-3 are floored: log10(0) has no place in a regression target.
    snr = np.where(known, np.maximum(np.nan_to_num(log.achieved_snr[keep], nan=1.0), 1e-3), 1.0)
    return Logs(batch.x, np.full(int(keep.sum()), j, dtype=np.int64), log.success[keep].astype(np.float32),
                np.where(known, np.log10(snr), 0.0).astype(np.float32), known.astype(np.float32))


def read_logs(paths: list[Path], table: SiteTable, snr_required: float, skip_invalid: bool = False,
              report=lambda _m: None) -> list[Logs]:
    """Every site's training arrays, in site-table order (one file per site, each site once)."""
    by_site: dict[int, Logs] = {}
    for p in paths:
        log = read(p, table, skip_invalid)
        j = table.index()[log.site_id]
        if j in by_site:
            raise ValueError(f"{p}: a second log for site {log.site_id!r}")
        by_site[j] = to_logs(log, table, snr_required, skip_invalid, p)
        skipped = log.skipped + len(log) - len(by_site[j])
        if skipped:
            report(f"{p}: skipped {skipped} invalid row(s), kept {len(by_site[j])}")
    missing = [table.ids[j] for j in range(len(table.ids)) if j not in by_site]
    if missing:
        raise ValueError(f"no log for site(s) {', '.join(missing)}: the model has one row per site in the table")
    return [by_site[j] for j in range(len(table.ids))]
