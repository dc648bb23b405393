"""Generated stubs: one command makes them, and drift from protos/ is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The generator runs in its own pinned venv (requirements/protos.txt); `make test` builds it
# through `make check-protos` before pytest starts.
TOOLS_PY = ROOT / ".venv-protos" / "bin" / "python"


def check(out: Path, python: Path = TOOLS_PY) -> subprocess.CompletedProcess:
    if not python.exists():
        pytest.skip("no .venv-protos: run `make check-protos` (make test does)")
    return subprocess.run([str(python), str(ROOT / "protos/generate.py"), "--check", str(out)],
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


def test_stubs_are_protobuf_6_31_gencode():
    # The oldest runtime a stub accepts is the gencode version stamped in it: 6.31.1 is the
    # client's declared floor (clients/python/pyproject.toml).
    stubs = [*(ROOT / "clients/python/galactic/v1").glob("*_pb2.py"), *(ROOT / "clients/python/inference").glob("*_pb2.py")]
    assert len(stubs) > 5
    for stub in stubs:
        assert "Protobuf Python Version: 6.31.1" in stub.read_text(), stub.name


def test_the_daemon_venv_generator_is_refused():
    # The daemon's venv carries no grpcio-tools or another version of it: generating there
    # would stamp another gencode version, so generate.py refuses rather than drift.
    result = subprocess.run([sys.executable, str(ROOT / "protos/generate.py"), "--check",
                             str(ROOT / "clients/python")], capture_output=True, text=True, timeout=120)
    # Refused by name (exit 1 with the reason), not crashed: grpcio-tools is absent there, or
    # (where a developer installed the lock's pin by hand) another version than protos.txt's.
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert ("is not installed" in result.stderr or "is not the pinned" in result.stderr)
    assert "make protos" in result.stderr
