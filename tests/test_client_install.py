"""`galactic-client` installs into a fresh venv without torch, and `galactic health` works
against a real daemon. Slow: it creates a venv and installs from the package registry."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
async def test_client_installs_without_torch_and_health_works(bare_daemon, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "requirements/lock.txt"),
         str(ROOT / "clients/python")], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, timeout=60)
    assert no_torch.returncode != 0  # the client pulled no torch in
    # The daemon runs on this test's event loop: the CLI must not block it.
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "galactic"), "--target", f"127.0.0.1:{bare_daemon.port}", "health",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "SERVING" in out.decode()
