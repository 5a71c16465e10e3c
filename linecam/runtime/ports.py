"""The listening ports a line claims, checked before any process starts.

Why: a metrics port already taken (a second line on the same machine, a leftover process) used to surface as a
20-line ``OSError: [Errno 98]`` traceback from one child, after the others had started, and ``linecam run``
then only said that the child exited with code 1. ``linecam run`` checks every port here first and names each
busy one, the config key that sets it and what to do, in one line; each process still reports its own port the
same way if it is taken between the check and its start.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import dataclass

from linecam.config import LineConfig
from linecam.runtime.metrics import port_in_use_message

__all__ = ["PortClaim", "busy_port_messages", "metrics_port_claims"]


@dataclass(frozen=True)
class PortClaim:
    """One port a process of the line will listen on, and the config key that sets it."""

    process: str
    port: int
    key: str


def metrics_port_claims(config: LineConfig) -> list[PortClaim]:
    """The fixed ports of gate, infer and every acquire process (metrics) and of the operator page (0 = any free
    port: not listed)."""
    claims = []
    if config.gate.metrics_port > 0:
        claims.append(PortClaim("gate", config.gate.metrics_port, "gate.metrics_port"))
    if config.infer.metrics_port > 0:
        claims.append(PortClaim("infer", config.infer.metrics_port, "infer.metrics_port"))
    if config.ui is not None and config.ui.port > 0:
        claims.append(PortClaim("ui", config.ui.port, "ui.port"))
    base = config.acquire.metrics_base_port
    if base > 0:
        for index, cam in enumerate(config.cameras):
            claims.append(PortClaim(f"acquire@{cam.name}", base + index,
                                    f"acquire.metrics_base_port (+{index} for camera {cam.name})"))
    return claims


def _bind_error(port: int, addr: str) -> OSError | None:
    """The error binding ``addr:port`` gives now (None: free). SO_REUSEADDR as the metrics server sets it, so a
    port left in TIME_WAIT by a line that just stopped counts as free, as it is for the server."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            return exc
    return None


def busy_port_messages(config: LineConfig, addr: str = "0.0.0.0") -> list[str]:
    """One line per port of ``config`` that its process could not bind now, or that two processes share."""
    source = str(config.source_path or "the config")
    messages = []
    owner: dict[int, PortClaim] = {}
    for claim in metrics_port_claims(config):
        first = owner.setdefault(claim.port, claim)
        if first is not claim:
            messages.append(f"{claim.process}: metrics port {claim.port} (set by {claim.key} in {source}) is also "
                            f"{first.process}'s ({first.key}); give each process its own port")
            continue
        exc = _bind_error(claim.port, addr)
        if exc is not None:
            why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            messages.append(port_in_use_message(claim.process, claim.port, claim.key, source, why))
    return messages
