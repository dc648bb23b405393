"""`galactic-client` installs into fresh venvs without torch, with the lowest and the highest
protobuf it declares, and its generated stubs make real calls against a daemon. Slow: each
case creates a venv and installs from the package registry (pip's cache makes reruns fast)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A call through the generated stubs (Admin.ListModels) and the hand-written client, then
# the protobuf runtime it ran on.
CALL = """
import sys
import google.protobuf
from galactic_client import Client
with Client(sys.argv[1]) as c:
    c.list_models()
print(google.protobuf.__version__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("protobuf, major", [("protobuf==6.31.1", "6"), ("protobuf>=7,<8", "7")],
                         ids=["lowest-protobuf", "highest-protobuf"])
async def test_client_installs_without_torch_and_calls_work(bare_daemon, tmp_path, protobuf, major):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # No lock here: the resolver must find a set that fits the client's own bounds.
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", str(ROOT / "clients/python"), protobuf],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, timeout=60)
    assert no_torch.returncode != 0  # the client pulled no torch in
    # The daemon runs on this test's event loop: the subprocesses must not block it.
    target = f"127.0.0.1:{bare_daemon.port}"
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "galactic"), "--target", target, "health",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "SERVING" in out.decode()
    proc = await asyncio.create_subprocess_exec(
        str(py), "-W", "error::UserWarning", "-c", CALL, target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    version = out.decode().split()[-1]
    assert version.split(".")[0] == major
    if major == "6":
        assert version == "6.31.1"
