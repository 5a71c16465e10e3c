"""What the operator page shows, kept from the gate's feed: per-camera counts, recent rejects, health, alerts.

Why in memory and bounded: the page shows the present (the last ``window`` verdicts, counts since the page
started, rates over the last 30 s). The audit log is the record; the search box reads it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: seconds of verdicts the rates and in-time shares are computed over.
RATE_WINDOW_S = 30.0
#: at least this many verdicts in the window before a low in-time share raises an alert.
MIN_VERDICTS_FOR_SHARE = 10
#: health older than this: the gate is not reporting.
HEALTH_STALE_S = 3.0
#: the worker has given no verdict for this long while products wait: it is not answering.
WORKER_SILENT_S = 5.0
#: reasons that mean the model judged the product in time.
JUDGED = frozenset({"ok", "anomaly"})

__all__ = ["LiveState"]


@dataclass
class CameraStats:
    """Counts since the page started, and the recent verdicts (time, judged in time) for rates."""

    decided: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    recent: deque[tuple[float, bool]] = field(default_factory=deque)
    first: float | None = None

    def add(self, t: float, decision: str, reason: str) -> None:
        if self.first is None:
            self.first = t
        self.decided += 1
        if decision == "reject":
            self.rejects[reason] = self.rejects.get(reason, 0) + 1
        self.recent.append((t, reason in JUDGED))

    def window(self, now: float) -> tuple[int, int]:
        while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent.popleft()
        return len(self.recent), sum(1 for _, judged in self.recent if judged)


class LiveState:
    """Thread-safe: the feed thread applies messages, the web handlers take snapshots."""

    def __init__(self, cameras: Iterable[str], window: int = 500, min_in_time_share: float = 0.95) -> None:
        self.cameras = list(cameras)
        self.min_in_time_share = min_in_time_share
        self.stats = {c: CameraStats() for c in self.cameras}
        self.verdicts: deque[dict[str, Any]] = deque(maxlen=window)
        self.rejects: deque[dict[str, Any]] = deque(maxlen=min(window, 200))
        self.health: dict[str, Any] = {}
        self.health_at = 0.0
        self.started = time.time()
        self.version = 0
        self._lock = threading.Lock()

    def apply(self, message: dict[str, Any], now: float | None = None) -> None:
        """One feed message (``verdict`` or ``health``); unknown types are ignored."""
        now = time.time() if now is None else now
        with self._lock:
            if message.get("type") == "verdict":
                camera = str(message.get("camera", "?"))
                stats = self.stats.setdefault(camera, CameraStats())
                if camera not in self.cameras:
                    self.cameras.append(camera)
                stats.add(now, str(message.get("decision")), str(message.get("reason")))
                self.verdicts.append(message)
                if message.get("decision") == "reject":
                    self.rejects.append(message)
            elif message.get("type") == "health":
                self.health = message
                self.health_at = now
            self.version += 1

    def alerts(self, now: float) -> list[dict[str, str]]:
        """What needs an operator now (caller holds the lock)."""
        out: list[dict[str, str]] = []
        health = self.health
        if not health or now - self.health_at > HEALTH_STALE_S:
            out.append({"kind": "gate", "text": "the gate is not reporting" + (
                f" (last report {now - self.health_at:.0f} s ago)" if self.health_at else " (no report yet)")})
            return out
        for camera, info in (health.get("cameras") or {}).items():
            if info.get("stalled"):
                out.append({"kind": "stall", "camera": camera,
                            "text": f"camera {camera} stalled: no frame for {info.get('last_frame_s')} s"})
        if health.get("plc_connected") is False:
            out.append({"kind": "plc", "text": "PLC link down: results are not reaching the PLC"})
        silent = health.get("worker_silent_s")
        if silent is not None and silent > WORKER_SILENT_S and health.get("pending"):
            out.append({"kind": "worker", "text": f"inference worker silent for {silent:.0f} s"})
        for camera, stats in self.stats.items():
            n, judged = stats.window(now)
            if n >= MIN_VERDICTS_FOR_SHARE and judged / n < self.min_in_time_share:
                out.append({"kind": "in_time", "camera": camera,
                            "text": f"camera {camera}: {100 * judged / n:.0f}% judged in time over the last "
                                    f"{RATE_WINDOW_S:.0f} s (alert below {100 * self.min_in_time_share:.0f}%)"})
        return out

    def snapshot(self, now: float | None = None, rejects: int = 24) -> dict[str, Any]:
        """Everything the page renders, as JSON data."""
        now = time.time() if now is None else now
        with self._lock:
            cameras = {}
            health_cams = (self.health.get("cameras") or {}) if self.health else {}
            for camera in self.cameras:
                stats = self.stats[camera]
                n, judged = stats.window(now)
                span = min(RATE_WINDOW_S, max(1.0, now - (stats.first if stats.first is not None else now)))
                cameras[camera] = {"decided": stats.decided, "rejects": dict(stats.rejects),
                                   "fps": round(n / span, 2), "in_time_share": round(judged / n, 4) if n else None,
                                   "last_frame_s": (health_cams.get(camera) or {}).get("last_frame_s"),
                                   "stalled": bool((health_cams.get(camera) or {}).get("stalled"))}
            return {"version": self.version, "t": now, "cameras": cameras, "health": dict(self.health),
                    "health_age_s": round(now - self.health_at, 2) if self.health_at else None,
                    "alerts": self.alerts(now), "rejects": list(self.rejects)[-rejects:][::-1],
                    "total": sum(s.decided for s in self.stats.values())}
