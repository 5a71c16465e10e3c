"""Graceful stop on SIGTERM/SIGINT for the long-running line processes.

systemd stops a unit with SIGTERM and a developer with Ctrl-C; both must let the process finish the batch in
hand and close its sockets, so the handler only asks the main loop to stop.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def stop_on_signals(process: str, stop: Callable[[], None]) -> None:
    """Install SIGTERM/SIGINT handlers that log and call ``stop`` (which must only set a flag)."""

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: signal %d, shutting down", process, signum)
        stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
