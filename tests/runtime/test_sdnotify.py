"""sd_notify datagrams reach a real unix socket (path and abstract namespace); no-op outside systemd."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from linecam.runtime import sdnotify


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


def test_ready_and_watchdog_to_a_path_socket(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(short_dir / "notify")
    sock = _listener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.ready("serving")
    assert sock.recv(1024) == b"READY=1\nSTATUS=serving"
    assert sdnotify.watchdog_ping()
    assert sock.recv(1024) == b"WATCHDOG=1"
    sock.close()


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"linecam-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = _listener("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert sdnotify.notify("STATUS=x")
    assert sock.recv(1024) == b"STATUS=x"
    sock.close()


def test_watchdog_pings_at_half_the_interval(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(short_dir / "notify")
    sock = _listener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    wd = sdnotify.Watchdog()
    assert wd.enabled and wd.period_s == pytest.approx(0.2)
    assert wd.tick() is True
    assert wd.tick() is False  # the half interval has not passed
    assert sock.recv(1024) == b"WATCHDOG=1"
    wd._last -= 0.25  # as if the half interval had passed
    assert wd.tick() is True and wd.pings == 2
    sock.close()


def test_watchdog_for_another_pid_and_no_systemd_are_noops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert not sdnotify.Watchdog().enabled
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.Watchdog().tick() is False
