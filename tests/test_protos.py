"""Generated stubs: one command makes them, and drift from protos/ is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "protos/generate.py"), "--check", str(out)],
                          capture_output=True, text=True, timeout=120)


def test_committed_stubs_match_protos():
    assert check(ROOT / "clients/python").returncode == 0


def test_a_hand_edit_is_reported_as_drift(tmp_path):
    shutil.copytree(ROOT / "clients/python/galactic", tmp_path / "galactic")
    stub = tmp_path / "galactic/v1/tensor_pb2.py"
    stub.write_text(stub.read_text() + "\n# a hand edit\n")
    result = check(tmp_path)
    assert result.returncode == 1
    assert "tensor_pb2.py" in result.stderr and "make protos" in result.stderr
