"""Saving rejected frames with heatmap overlays, off the hot path.

Why a bounded queue and a thread: writing PNGs takes milliseconds per frame, which the verdict must never
wait for. When the disk or the writer falls behind, images are dropped and counted; verdicts are not.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from linecam.runtime.metrics import LineMetrics

log = logging.getLogger(__name__)


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


def overlay(image_rgb: np.ndarray, regions: dict[str, tuple[tuple[int, int, int, int], np.ndarray | None]],
            alpha: float = 0.45) -> np.ndarray:
    """BGR image for cv2.imwrite: the frame with each region's map as a jet heatmap and its box outlined."""
    out = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    for (x, y, w, h), amap in regions.values():
        if amap is not None:
            heat = cv2.resize(np.clip(amap, 0.0, 1.0).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            heat_u8 = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
            roi = out[y : y + h, x : x + w]
            out[y : y + h, x : x + w] = cv2.addWeighted(roi, 1.0 - alpha, heat_u8, alpha, 0.0)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 1)
    return out


class RejectWriter:
    """Writes ``<dir>/<camera>/<seq>_<slot>.png`` (raw frame), ``..._overlay.png`` and ``....json``."""

    def __init__(self, directory: Path, maxsize: int = 16, metrics: LineMetrics | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[RejectImage | None] = queue.Queue(maxsize=maxsize)
        self._metrics = metrics
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="reject-writer", daemon=True)
        self._thread.start()

    def submit(self, item: RejectImage) -> bool:
        """Queue an image; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.rejects_dropped.inc()
            return False
        if self._metrics is not None:
            self._metrics.queue_depth.labels(queue="reject_writer").set(self._queue.qsize())
        return True

    def _write(self, item: RejectImage) -> None:
        folder = self.directory / item.camera
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{item.seq:09d}_{item.slot}"
        cv2.imwrite(f"{stem}.png", cv2.cvtColor(np.ascontiguousarray(item.image), cv2.COLOR_RGB2BGR))
        cv2.imwrite(f"{stem}_overlay.png", overlay(item.image, item.regions))
        meta = {"camera": item.camera, "seq": item.seq, "slot": item.slot, "reason": item.reason,
                "scores": item.scores, "boxes": {k: list(v[0]) for k, v in item.regions.items()}}
        Path(f"{stem}.json").write_text(json.dumps(meta))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(item)
                self.written += 1
            except Exception:  # a failing disk must not kill the writer; the next image may succeed
                log.exception("could not save reject image camera=%s seq=%s",
                              getattr(item, "camera", "?"), getattr(item, "seq", "?"))
            finally:
                self._queue.task_done()

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish the queued images (bounded wait), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("reject writer still busy at shutdown; %d images dropped", self._queue.qsize())
            return
        self._thread.join(timeout=timeout_s)
