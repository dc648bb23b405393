"""sd_notify messages, read from a real unix datagram socket the test binds."""

from __future__ import annotations

import asyncio
import socket

import pytest

from daemon.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield str(path), sock
    sock.close()


def drain_messages(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def recv_until(sock: socket.socket, needle: str, limit: int = 50) -> list[str]:
    """Await datagrams (no polling: the loop wakes on readability) until one holds needle."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    for _ in range(limit):
        msg = (await asyncio.wait_for(loop.sock_recv(sock, 4096), 20)).decode()
        seen.append(msg)
        if needle in msg:
            return seen
    raise AssertionError(f"{needle!r} not among {seen}")


def test_disabled_without_notify_socket():
    n = Notifier({})
    assert not n.enabled
    n.ready()  # a no-op, must not raise


def test_messages_on_a_real_socket(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    n.extend_timeout(90, "loading model")
    n.ready("serving")
    n.stopping()
    msgs = drain_messages(sock)
    assert msgs[0].splitlines() == ["EXTEND_TIMEOUT_USEC=90000000", "STATUS=loading model"]
    assert msgs[1].splitlines()[0] == "READY=1"
    assert msgs[2].splitlines()[0] == "STOPPING=1"


def test_abstract_namespace_socket():
    name = f"galactic-test-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096).startswith(b"READY=1")
    finally:
        sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"}).watchdog_interval_s == 2.0
    assert Notifier({"NOTIFY_SOCKET": "/x"}).watchdog_interval_s is None


async def test_daemon_lifecycle_notifies_ready_watchdog_and_stopping(daemon_factory, notify_socket):
    path, sock = notify_socket
    daemon = await daemon_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    seen = await recv_until(sock, "READY=1")
    assert any("READY=1" in m for m in seen)
    # Pings come from a task on the event loop, so they keep arriving while it runs.
    await recv_until(sock, "WATCHDOG=1")
    await recv_until(sock, "WATCHDOG=1")
    await daemon.drain()
    await recv_until(sock, "STOPPING=1")
