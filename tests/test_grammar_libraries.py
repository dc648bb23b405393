"""benchmarks/grammar_libraries.py in the daemon's venv, where only llguidance is installed: the
other candidates are reported missing rather than failing the run, and llguidance compiles
every schema of the structured-output tests and every completed walk validates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runs_with_what_is_importable_and_llguidance_walks_validate(tmp_path):
    out = tmp_path / "grammar.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grammar_libraries.py"), "--quick",
                           "--tokenizers", "tiny", "--max-steps", "48", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for lib in ("outlines-core", "xgrammar"):
        installed = r["footprint"][lib]["installed"]
        assert (lib in r["missing"]) == (not installed)
        assert installed or r["runs"][f"{lib}/tiny"] == {"missing": "not importable"}
    run = r["runs"]["llguidance/tiny"]
    s = run["summary"]
    assert s["supported"] == s["schemas"] == r["settings"]["schemas"] >= 20
    assert s["completed"] > 0 and s["valid"] == s["completed"], s["invalid_schemas"]
    assert s["refused_own_token"] == 0 and s["mask_steps"] > 0
    assert "unique_items" in s["edge_refused"]  # what the README says llguidance refuses
    assert r["footprint"]["llguidance"]["version"] == run["version"]
    if r["missing"]:  # the table names them too
        assert f"missing (not importable here): {', '.join(r['missing'])}" in proc.stdout
