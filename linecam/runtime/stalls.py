"""Stalled cameras: a camera that sends no frame for several of its frame periods is noticed, counted and named.

Why: an acquire process stopped for 5 s (SIGSTOP, a hung driver) lost about 15 products without a metric or a
log line saying so; a source without frame ids (the synthetic camera, triggered cameras) shows no frame-id gap.
The gate sees every camera's announcements, so it watches them: a camera is stalled when nothing arrived for
``gate.stall_periods`` of its configured frame periods (at least ``MIN_STALL_S``), counted once per stall in
``linecam_camera_stalls_total{camera}`` and shown by ``linecam_camera_stalled{camera}`` (configured cameras only),
logged when it stalls and when it resumes, and written to ``<runtime dir>/stalls.json`` for the status line of
``linecam run``. A stalled acquire *process* also stops pinging its watchdog, on which the service manager (or
``linecam run``) restarts it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from linecam.files import atomic_write

log = logging.getLogger(__name__)

STALLS_FILE = "stalls.json"
MIN_STALL_S = 0.5

__all__ = ["MIN_STALL_S", "STALLS_FILE", "StallWatch", "read_stalls"]


class StallWatch:
    """Per camera: when its last frame was announced, and whether it is stalled now (times in seconds)."""

    def __init__(self, rates_fps: Mapping[str, float | None], periods: float) -> None:
        #: camera -> seconds without a frame after which it is stalled (cameras of unknown rate are not watched)
        self.limits = {name: max(MIN_STALL_S, periods / fps) for name, fps in rates_fps.items() if fps}
        self.last: dict[str, float] = {}
        self.stalled: dict[str, float] = {}  # camera -> when it stalled
        self.counts: dict[str, int] = dict.fromkeys(self.limits, 0)

    def frame(self, camera: str, t_s: float) -> float | None:
        """A frame of ``camera`` arrived; returns how long it had been stalled when this ends a stall."""
        if camera not in self.limits:
            return None
        previous = self.last.get(camera)
        self.last[camera] = t_s
        if camera in self.stalled:
            del self.stalled[camera]
            return t_s - previous if previous is not None else None
        return None

    def stopped(self, camera: str) -> None:
        """The camera's acquire stops on purpose: not watched again until its next frame."""
        self.last.pop(camera, None)
        self.stalled.pop(camera, None)

    def check(self, t_s: float) -> list[str]:
        """The cameras that stalled since the last check (watched only after their first frame)."""
        new = []
        for camera, last in self.last.items():
            if camera not in self.stalled and t_s - last > self.limits[camera]:
                self.stalled[camera] = t_s
                self.counts[camera] += 1
                new.append(camera)
        return new

    def snapshot(self, t_s: float) -> dict[str, object]:
        """What ``stalls.json`` holds: the stalled cameras with seconds since their last frame, and the counts."""
        return {"stalled": {c: round(t_s - self.last[c], 2) for c in self.stalled}, "counts": dict(self.counts)}


def write_stalls(folder: Path, snapshot: Mapping[str, object]) -> None:
    atomic_write(folder / STALLS_FILE, (json.dumps(snapshot, sort_keys=True) + "\n").encode())


def read_stalls(folder: Path) -> dict[str, object]:
    """The gate's last ``stalls.json`` ({} when there is none or it cannot be read)."""
    try:
        data = json.loads((folder / STALLS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
