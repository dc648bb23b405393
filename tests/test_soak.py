"""The short soak: benchmarks/soak.py for 30 s against its own galacticd subprocess. Every
answer is a documented one, and nothing is left after the run (the 10-minute figures are
in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_thirty_second_soak_leaves_nothing(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "30", "--clients", "8",
                           "--json", str(out)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["unexpected"] == 0, r["unexpected_examples"]
    assert r["requests"] > 100 and r["statuses"].get("OK", 0) > 0
    assert {"CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND"} <= set(r["statuses"])  # the mix really ran
    assert r["slots_left"] == 0 and r["tasks_left"] <= 0
    assert r["fds_left"] <= 2  # a leak would be hundreds; a socket may still be closing
    assert r["exit_code"] == 0
    assert r["non_json_log_lines"] == 0, r["non_json_examples"]
