"""`galacticd serve` as a process: READY over a real notify socket, SIGTERM drains, exit 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loopback import free_port


@pytest.fixture
def notify(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(300)  # importing torch and transformers on a busy 2-core machine takes minutes
    yield str(path), sock
    sock.close()


def wait_for(sock: socket.socket, needle: str) -> list[str]:
    seen = []
    while True:
        msg = sock.recv(4096).decode()  # blocks on the socket, bounded by its timeout
        seen.append(msg)
        if needle in msg:
            return seen


def test_sigterm_drains_and_exits_zero(tmp_path, notify):
    path, sock = notify
    port = free_port()
    cfg = tmp_path / "galactic.toml"
    cfg.write_text(textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{port}"
        grace_period_s = 5.0
        [openai]
        listen = "127.0.0.1:0"
        [telemetry]
        metrics_listen = ""
        log_format = "json"
        [llm]
        enabled = false
        [coordination]
        enabled = false
    """))
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "daemon.main", "serve", "--config", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(sock, "READY=1")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        wait_for(sock, "STOPPING=1")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # Not a terminal: one JSON object per line.
    assert '"event": "stopped"' in err


def test_bad_config_exits_nonzero_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[telemetry]\nlog_level = "loud"\n')
    proc = subprocess.run([sys.executable, "-m", "daemon.main", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "telemetry.log_level" in proc.stderr


def test_sigterm_during_start_up_exits_zero(tmp_path, notify):
    """SIGTERM as soon as the model load reports progress: the daemon stops the load at its
    next progress report (or, if the load won the race, drains) and exits 0 either way."""
    path, sock = notify
    cfg = tmp_path / "galactic.toml"
    cfg.write_text(textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:{free_port()}"
        [openai]
        listen = "127.0.0.1:0"
        [telemetry]
        metrics_listen = ""
        [llm]
        name = "galactic-demo"
        [coordination]
        enabled = false
    """))
    env = {**os.environ, "NOTIFY_SOCKET": path}
    proc = subprocess.Popen([sys.executable, "-m", "daemon.main", "serve", "--config", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_for(sock, "loading galactic-demo")  # EXTEND_TIMEOUT_USEC + STATUS while loading
        assert any("EXTEND_TIMEOUT_USEC=" in m for m in seen)
        proc.send_signal(signal.SIGTERM)
        wait_for(sock, "STOPPING=1")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
