"""The site-log format: schema in one place, validation by line, the simulator writes it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from training.coordination import sitelog

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def rubin_log(simulator):
    return simulator.site_log(0, windows=5, seed=3, per_window=8)


@pytest.fixture
def log_file(rubin_log, tmp_path):
    return sitelog.write(tmp_path / "rubin.csv", rubin_log)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _rewrite(path, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_readme_documents_the_schema():
    text = README.read_text()
    section = text[text.index("### Site logs"):]
    for col in sitelog.SCHEMA:
        assert f"| `{col.name}` |" in section, f"README's site-log table lacks {col.name}"
    assert f"| `schema_version` | int | | {sitelog.SCHEMA_VERSION} |" in section


def test_simulated_log_round_trips_through_the_file(rubin_log, log_file, simulator, sites):
    assert _rows(log_file)[0] == list(sitelog.COLUMNS)
    back = sitelog.read(log_file, sites)
    assert back.site_id == "rubin" and len(back) == len(rubin_log) and back.skipped == 0
    assert np.array_equal(back.success, rubin_log.success)
    assert np.allclose(back.time_unix, rubin_log.time_unix, atol=1e-3)
    assert np.allclose(back.ra_deg, rubin_log.ra_deg, atol=1e-6)
    assert np.array_equal(np.isnan(back.achieved_snr), np.isnan(rubin_log.achieved_snr))
    assert back.line.tolist() == list(range(2, len(back) + 2))
    # Featurised from the file, the rows match the in-memory simulator's (file precision).
    snr = simulator.sc.scenario.snr_required
    a, b = sitelog.to_logs(back, sites, snr), sitelog.to_logs(rubin_log, sites, snr)
    assert np.allclose(a.features, b.features, atol=1e-3)
    assert np.array_equal(a.snr_known, b.snr_known) and np.allclose(a.log_snr, b.log_snr, atol=1e-5)
    # Unmeasured observations are failures without an SNR.
    unmeasured = np.isnan(back.achieved_snr)
    assert not back.success[unmeasured].any()


def test_bad_rows_are_reported_by_line(log_file, sites):
    rows = _rows(log_file)
    col = {c: i for i, c in enumerate(rows[0])}
    rows[2][col["band"]] = "q"  # line 3
    rows[4][col["forecast_humidity_pct"]] = "140"  # line 5
    rows[5][col["time_utc"]] = "2025-03-10T06:00:00"  # line 6: no zone
    rows[6][col["success"]] = "1"  # line 7
    rows[6][col["achieved_snr"]] = ""
    _rewrite(log_file, rows)
    with pytest.raises(sitelog.SiteLogError) as err:
        sitelog.read(log_file, sites)
    found = {(line, c) for line, c, _ in err.value.problems}
    assert found == {(3, "band"), (5, "forecast_humidity_pct"), (6, "time_utc"), (7, "achieved_snr")}
    text = str(err.value)
    assert "line 5, forecast_humidity_pct: 140 % is outside [0, 100]" in text and "--skip-invalid" in text
    skipped = sitelog.read(log_file, sites, skip_invalid=True)
    assert skipped.skipped == 4 and len(skipped) == len(rows) - 1 - 4
    assert 3 not in skipped.line and 5 not in skipped.line


def test_a_wrong_header_or_site_is_never_skipped(log_file, sites, tmp_path):
    rows = _rows(log_file)
    _rewrite(log_file, [[c for c in rows[0] if c != "magnitude"]] + [r[:-1] for r in rows[1:]])
    with pytest.raises(sitelog.SiteLogError, match="magnitude: column missing"):
        sitelog.read(log_file, sites, skip_invalid=True)
    mixed = tmp_path / "mixed.csv"
    rows[2][1] = "keck"
    _rewrite(mixed, rows)
    with pytest.raises(sitelog.SiteLogError, match="one site per file"):
        sitelog.read(mixed, sites, skip_invalid=True)


def test_an_impossible_observation_is_invalid(log_file, sites, simulator):
    rows = _rows(log_file)
    col = {c: i for i, c in enumerate(rows[0])}
    rows[3][col["time_utc"]] = "2025-03-10T18:00:00Z"  # line 4: daytime in Chile
    _rewrite(log_file, rows)
    log = sitelog.read(log_file, sites)  # each cell is valid on its own
    snr = simulator.sc.scenario.snr_required
    with pytest.raises(sitelog.SiteLogError, match="line 4, time_utc: target below the horizon or Sun above"):
        sitelog.to_logs(log, sites, snr, path=log_file)
    assert len(sitelog.to_logs(log, sites, snr, skip_invalid=True)) == len(log) - 1


def test_read_logs_wants_one_file_per_site(log_file, sites, simulator):
    with pytest.raises(ValueError, match="no log for site"):
        sitelog.read_logs([log_file], sites, simulator.sc.scenario.snr_required)
