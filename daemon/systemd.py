"""systemd's notify protocol (sd_notify(3)), written directly to `NOTIFY_SOCKET`.

The protocol is one datagram per message on a unix socket; a library would add nothing.
`Notifier` is a no-op when the daemon does not run under a Type=notify unit. The watchdog
pings come from a task on the event loop, so a loop that hangs (a blocking call on it)
stops the pings and systemd restarts the service: that is the point of WatchdogSec.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Mapping

import structlog

log = structlog.get_logger("galacticd.systemd")


class Notifier:
    def __init__(self, env: Mapping[str, str]) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._watchdog: asyncio.Task | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        """Best effort, as sd_notify(3) is: a vanished socket must not abort a model load
        or end the watchdog task, so failures are logged once and otherwise ignored."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notify failed", socket=self._address.lstrip("\0"), error=str(exc))

    def extend_timeout(self, seconds: float, status: str) -> None:
        """Ask systemd for more start-up time while models load (EXTEND_TIMEOUT_USEC)."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", f"STATUS={status}")

    def ready(self, status: str = "serving") -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "draining") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self) -> None:
        if self.enabled and self.watchdog_interval_s and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._ping(), name="systemd-watchdog")

    async def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _ping(self) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval_s)
