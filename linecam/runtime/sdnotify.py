"""systemd ``Type=notify`` support: READY and WATCHDOG datagrams, no dependency on libsystemd.

Why: each line process runs as a notify unit with ``WatchdogSec=``; a main loop that stops pinging gets
the process restarted by systemd. The protocol is one datagram to ``$NOTIFY_SOCKET`` (a filesystem path or,
with a leading ``@``, an abstract-namespace socket). Outside systemd the variable is unset and every call
here is a no-op, so the same code runs under ``linecam run`` and in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _address(raw: str) -> str:
    return "\0" + raw[1:] if raw.startswith("@") else raw


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to the service manager; False when not under systemd."""
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(raw))
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", raw, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd that start-up is complete (and optionally a human-readable status)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """Update the unit's status line shown by ``systemctl status``."""
    return notify(f"STATUS={text}")


def stopping() -> bool:
    """Tell systemd a clean shutdown has begun."""
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    """One ``WATCHDOG=1`` keep-alive."""
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """The configured watchdog interval, or None when systemd asked for none (or it is meant for another pid)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", usec)
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """Pings the watchdog at most every half interval; call :meth:`tick` from the main loop.

    Pinging from the main loop (not a side thread) is the point: a wedged loop stops the pings.
    """

    def __init__(self, interval_s: float | None = None) -> None:
        full = interval_s if interval_s is not None else watchdog_interval_s()
        self.period_s: float | None = full / 2.0 if full else None
        self._last = 0.0
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.period_s is not None

    def tick(self) -> bool:
        """Ping when the half interval has passed; True when a ping was sent."""
        if self.period_s is None:
            return False
        now = time.monotonic()
        if now - self._last < self.period_s:
            return False
        self._last = now
        sent = watchdog_ping()
        if sent:
            self.pings += 1
        return sent
