"""Batch-1 latency as bench/peers measures it for every model: one loop, so linecam and the peers are timed alike
(``run.py`` in the project's venv, ``peer.py`` in the peers' venv both import it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linecam.grdnet.datasets import read_rgb, resize_rgb


def first_test_frame(data: Path, size: int) -> np.ndarray:
    """The frame every model is timed on: the first ``test/good`` image at model size (uint8 RGB)."""
    return resize_rgb(read_rgb(sorted((data / "test" / "good").glob("*.png"))[0]), size)


def batch1_ms(fn: Callable[[np.ndarray], Any], frame: np.ndarray, seconds: float) -> dict[str, float]:
    """Median and p95 ms of ``fn(frame[None])`` (uint8 frame in, score out) after 3 warm-up calls, for at least
    ``seconds`` and 5 calls."""
    for _ in range(3):
        fn(frame[None])
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn(frame[None])
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))], "n": len(times)}
