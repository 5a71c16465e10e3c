"""Saving rejected frames with heatmap overlays, off the hot path.

Why a bounded queue and a thread: writing PNGs takes milliseconds per frame, which the verdict must never
wait for. When the disk or the writer falls behind, images are dropped and counted; verdicts are not.
:class:`BackgroundWriter` is that queue-and-thread, shared by :class:`RejectWriter` (the plain reject folder of
``linecam run --rejects``) and the retention-managed archive (``linecam.runtime.archive``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import cv2
import numpy as np

from linecam.runtime.metrics import LineMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class RejectImage:
    """One rejected frame: RGB pixels (H, W, 3), and per region its box and smoothed map (h, w) in [0, 1]."""

    camera: str
    seq: int
    slot: int
    reason: str
    image: np.ndarray
    regions: dict[str, tuple[tuple[int, int, int, int], np.ndarray | None]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    truth: dict[str, str] | None = None


def overlay(image_rgb: np.ndarray, regions: dict[str, tuple[tuple[int, int, int, int], np.ndarray | None]],
            alpha: float = 0.45, thresholds: dict[str, float] | None = None) -> np.ndarray:
    """BGR image for cv2.imwrite: the frame with each region's map as a jet heatmap and its box outlined.

    With a region's threshold the colour scale is relative to it (threshold = mid-scale, twice the threshold
    = red), so the spot that made the reject stands out even when the map's absolute values are small.
    """
    out = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    for name, ((x, y, w, h), amap) in regions.items():
        if amap is not None:
            thr = (thresholds or {}).get(name)
            scale = 1.0 / (2.0 * thr) if thr and thr > 0 else 1.0
            heat = cv2.resize(np.clip(amap * scale, 0.0, 1.0).astype(np.float32), (w, h),
                              interpolation=cv2.INTER_LINEAR)
            heat_u8 = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
            roi = out[y : y + h, x : x + w]
            out[y : y + h, x : x + w] = cv2.addWeighted(roi, 1.0 - alpha, heat_u8, alpha, 0.0)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 1)
    return out


class BackgroundWriter(Generic[T]):
    """A bounded queue drained by one daemon thread that calls :meth:`_write` per item.

    :meth:`submit` never blocks: a full queue drops the item, counts it in ``dropped`` and calls ``on_drop``.
    With ``tick_s`` the thread also calls :meth:`_tick` when it starts and then about every ``tick_s`` seconds,
    idle or busy (housekeeping such as pruning). A failing write is logged and the thread goes on: the next
    item may succeed.
    """

    def __init__(self, name: str, maxsize: int, on_drop: Callable[[], None] | None = None,
                 on_depth: Callable[[int], None] | None = None, tick_s: float | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"{name}: queue size must be >= 1, got {maxsize}")
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=maxsize)
        self._on_drop = on_drop
        self._on_depth = on_depth
        self._tick_s = tick_s
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the writer thread (subclasses call this at the end of their ``__init__``)."""
        self._thread.start()

    def submit(self, item: T) -> bool:
        """Queue an item; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return False
        if self._on_depth is not None:
            self._on_depth(self._queue.qsize())
        return True

    def _write(self, item: T) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        """Periodic housekeeping in the writer thread (default: nothing)."""

    def _describe(self, item: T) -> str:
        return type(item).__name__

    def _run(self) -> None:
        next_tick = time.monotonic() if self._tick_s is not None else None  # housekeeping first, at start
        while True:
            timeout = None if next_tick is None else max(0.0, next_tick - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                pass
            else:
                try:
                    if item is None:
                        return
                    self._write(item)
                    self.written += 1
                except Exception:  # a failing disk must not kill the writer; the next item may succeed
                    self.failed += 1
                    log.exception("%s: could not write %s", self._thread.name,
                                  self._describe(item) if item is not None else "?")
                finally:
                    self._queue.task_done()
            if next_tick is not None and self._tick_s is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self._tick_s
                try:
                    self._tick()
                except Exception:  # housekeeping must not kill the writer either
                    log.exception("%s: housekeeping failed", self._thread.name)

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish the queued items (bounded wait), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("%s still busy at shutdown; %d items dropped", self._thread.name, self._queue.qsize())
            return
        self._thread.join(timeout=timeout_s)


class RejectWriter(BackgroundWriter[RejectImage]):
    """Writes ``<dir>/<camera>/<seq>_<slot>.png`` (raw frame), ``..._overlay.png`` and ``....json``."""

    def __init__(self, directory: Path, maxsize: int = 16, metrics: LineMetrics | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._metrics = metrics
        super().__init__("reject-writer", maxsize,
                         on_drop=metrics.rejects_dropped.inc if metrics is not None else None,
                         on_depth=(metrics.queue_depth.labels(queue="reject_writer").set
                                   if metrics is not None else None))
        self.start()

    def _describe(self, item: RejectImage) -> str:
        return f"reject image camera={item.camera} seq={item.seq}"

    def _write(self, item: RejectImage) -> None:
        folder = self.directory / item.camera
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{item.seq:09d}_{item.slot}"
        cv2.imwrite(f"{stem}.png", cv2.cvtColor(np.ascontiguousarray(item.image), cv2.COLOR_RGB2BGR))
        cv2.imwrite(f"{stem}_overlay.png", overlay(item.image, item.regions, thresholds=item.thresholds))
        meta = {"camera": item.camera, "seq": item.seq, "slot": item.slot, "reason": item.reason,
                "scores": item.scores, "thresholds": item.thresholds, "model_version": item.model_version,
                "truth": item.truth, "boxes": {k: list(v[0]) for k, v in item.regions.items()}}
        Path(f"{stem}.json").write_text(json.dumps(meta))
