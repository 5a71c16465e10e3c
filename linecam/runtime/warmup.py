"""Before the first product: compile every batch shape the line will see, then measure the throughput.

Backends compile per input shape on first use (seconds on a CPU; jit backends specialise on every new batch
size); doing it before READY keeps those seconds off the first live products. The throughput measured right
after (:class:`~linecam.runtime.capacity.Capacity`) is what ``linecam run`` fits the demo's rate to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from linecam.config import LineConfig
from linecam.runtime.capacity import Capacity
from linecam.runtime.messages import FrameHeader, Verdict, encode_frame, now_ns

__all__ = ["blank_frames", "measure_capacity", "warm_batch_sizes", "warm_up"]

#: what the worker's socket-free core takes: (multipart frame, received ns) pairs -> one verdict each.
ProcessBatch = Callable[[Sequence[tuple[Sequence[Any], int]]], list[Verdict]]


def blank_frames(cfg: LineConfig) -> list[list[Any]]:
    """One black frame per camera whose size the config knows, never stale (captured an hour from now)."""
    frames = []
    for cam in cfg.cameras:
        size = cam.frame_size()
        if size is None:
            continue  # size known only from the first real frame
        image = np.zeros((*size, 3), np.uint8)
        header = FrameHeader(camera=cam.name, seq=0, slot=0, t_capture_ns=now_ns() + 3_600_000_000_000,
                             shape=image.shape, dtype="uint8", pixel_format="RGB8")
        frames.append(encode_frame(header, image))
    return frames


def warm_batch_sizes(max_batch: int) -> list[int]:
    """Every small batch size occurs with a few cameras; larger ones only under load, so beyond 8 only the
    maximum is warmed."""
    return sorted(set(range(1, min(max_batch, 8) + 1)) | {max_batch})


def _batch(frames: Sequence[Any], n: int) -> list[tuple[Sequence[Any], int]]:
    return [(frames[i % len(frames)], now_ns()) for i in range(n)]


def warm_up(process: ProcessBatch, frames: Sequence[Any], max_batch: int) -> str | None:
    """Run every warmed batch size twice; returns why a batch failed (None when all were judged)."""
    for n in warm_batch_sizes(max_batch):
        for _ in range(2):
            failed = [v.detail for v in process(_batch(frames, n)) if v.reason not in ("ok", "anomaly")]
            if failed:
                return f"warm-up batch of {n} failed: {failed[0]}"
    return None


def measure_capacity(process: ProcessBatch, frames: Sequence[Any], batch_size: int, backends: str,
                     repeats: int = 5) -> Capacity:
    """Frames per second at full batches: the median of ``repeats`` timed batches after one untimed one (jit
    backends still specialise on the first calls after the warm-up, and one slow outlier must not slow the
    demo for the whole run)."""
    batch = _batch(frames, batch_size)
    process(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        process(batch)
        times.append(time.perf_counter_ns() - t0)
    per_frame_ns = max(1.0, float(np.median(times)) / batch_size)
    return Capacity(frames_per_s=1e9 / per_frame_ns, ms_per_frame=per_frame_ns / 1e6, batch=batch_size,
                    backends=backends)
