"""Live line status computed from the gate's audit log (the one record of every product's verdict).

Why from the audit log rather than from metrics: the audit log carries the synthetic truth of each frame,
so the demo can show true and false rejects, and reading it proves the gate wrote one line per product.
The log is tailed incrementally (only complete lines), so the status costs nothing on long runs.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class AuditError(ValueError):
    """An audit line that is not what the gate writes; names the file and line number."""


class AuditTail:
    """Reads the complete lines appended to an audit log since the last call."""

    def __init__(self, path: Path, *, from_end: bool = False, offset: int | None = None) -> None:
        """``from_end``: skip what the file already holds (an append-only log from earlier runs); ``offset``:
        start at that byte (a :attr:`start` of an earlier tail, to read one run's lines again)."""
        self.path = path
        self._offset = offset if offset is not None else path.stat().st_size if from_end and path.is_file() else 0
        self.start = self._offset
        self._partial = b""
        self.lineno = 0

    def read_new(self) -> list[dict[str, Any]]:
        """Parsed records appended since the previous call (none if the file does not exist yet)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        records = []
        for raw in lines:
            self.lineno += 1
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise AuditError(f"{self.path}:{self.lineno}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or "decision" not in record or "camera" not in record:
                raise AuditError(f"{self.path}:{self.lineno}: not an audit record (needs camera, decision)")
            records.append(record)
        return records


def _truth_label(record: dict[str, Any]) -> str | None:
    truth = record.get("truth")
    if isinstance(truth, dict):
        label = truth.get("line_label")
        return label if isinstance(label, str) else None
    return None


@dataclass
class LineStatus:
    """Running totals over audit records; ``line()`` is the one-line live view, ``summary()`` the final one."""

    window_s: float = 5.0
    total: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    reject_reasons: Counter[str] = field(default_factory=Counter)
    per_camera: Counter[str] = field(default_factory=Counter)
    true_rejects: int = 0
    false_rejects: int = 0
    escapes: int = 0
    true_accepts: int = 0
    late: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    _recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, running total)
    _started: float = field(default_factory=time.monotonic)

    def add(self, records: list[dict[str, Any]], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for r in records:
            self.total += 1
            decision = str(r["decision"])
            self.decisions[decision] += 1
            self.per_camera[str(r["camera"])] += 1
            if decision == "reject":
                self.reject_reasons[str(r.get("reason", "?"))] += 1
            if r.get("late"):
                self.late += 1
            latency = r.get("latency_ms")
            if isinstance(latency, (int, float)):
                self.latencies_ms.append(float(latency))
            label = _truth_label(r)
            if label is not None:
                defect = label == "defect"
                if decision == "reject":
                    self.true_rejects += defect
                    self.false_rejects += not defect
                else:
                    self.escapes += defect
                    self.true_accepts += not defect
        self._recent.append((now, self.total))
        while len(self._recent) > 2 and now - self._recent[1][0] >= self.window_s:
            self._recent.popleft()

    def rate(self) -> float:
        """Verdicts per second over about the last ``window_s`` (between the oldest and newest update)."""
        if len(self._recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._recent[0], self._recent[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def percentiles(self) -> tuple[float, float] | None:
        """(p50, p99) of end-to-end latency in ms, or None before the first verdict."""
        if not self.latencies_ms:
            return None
        p50, p99 = np.percentile(np.asarray(self.latencies_ms), [50, 99])
        return float(p50), float(p99)

    def line(self) -> str:
        rejects = self.decisions.get("reject", 0)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.reject_reasons.items())) or "-"
        pct = self.percentiles()
        lat = f"p50 {pct[0]:.1f} ms p99 {pct[1]:.1f} ms" if pct else "p50 - p99 -"
        return (f"frames {self.total} ({self.rate():.1f}/s) | rejects {rejects} [{reasons}] | "
                f"true {self.true_rejects} false {self.false_rejects} escapes {self.escapes} | e2e {lat}")

    def summary(self) -> dict[str, Any]:
        pct = self.percentiles()
        elapsed = time.monotonic() - self._started
        return {
            "verdicts": self.total,
            "verdicts_per_s": round(self.total / elapsed, 2) if elapsed > 0 else 0.0,
            "decisions": dict(self.decisions),
            "reject_reasons": dict(self.reject_reasons),
            "per_camera": dict(self.per_camera),
            "true_rejects": self.true_rejects,
            "false_rejects": self.false_rejects,
            "escapes": self.escapes,
            "true_accepts": self.true_accepts,
            "late": self.late,
            "latency_ms_p50": round(pct[0], 2) if pct else None,
            "latency_ms_p99": round(pct[1], 2) if pct else None,
        }
