"""Synthetic data speed: dataset images/s with 1 worker vs N workers, and the synthetic camera's frames/s.

Run: .venv/bin/python bench/synth_speed.py [--images 1000] [--size 256] [--workers N]
Prints both throughputs and their ratio, measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from linecam.synth.camera import SyntheticCamera
from linecam.synth.dataset import write_dataset


def _dataset_rate(n: int, size: int, workers: int, tmp: Path) -> float:
    out = tmp / f"w{workers}"
    # 70 % good, the rest spread over the defect folders: the mix of the default dataset.
    per = max(1, (n - int(n * 0.7)) // 5)
    counts = {
        "train": {"good": n - 5 * per},
        "test": {"particle": per, "spot": per, "scratch": per, "fibre": per, "outside_roi": per},
    }
    t0 = time.perf_counter()
    res = write_dataset(out, seed=1, size=size, counts=counts, workers=workers)
    dt = time.perf_counter() - t0
    shutil.rmtree(out)
    return res.images / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--frames", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        r1 = _dataset_rate(args.images, args.size, 1, tmp)
        print(f"dataset {args.images} images {args.size}px, 1 worker : {r1:7.1f} img/s "
              f"({args.images / r1:.1f} s)")
        rn = _dataset_rate(args.images, args.size, args.workers, tmp)
        print(f"dataset {args.images} images {args.size}px, {args.workers} workers: {rn:7.1f} img/s "
              f"({args.images / rn:.1f} s)")
        print(f"speed-up {args.workers} workers vs 1: {rn / r1:.2f}x")
    for rate, label in ((0.0, "good only"), (0.3, "30 % defects")):
        cam = SyntheticCamera(seed=0, width=args.size, height=args.size, defect_rate=rate, area="meniscus")
        cam.next_frame()
        t0 = time.perf_counter()
        for _ in range(args.frames):
            cam.next_frame()
        fps = args.frames / (time.perf_counter() - t0)
        print(f"synthetic camera {args.size}x{args.size} ({label}): {fps:6.1f} frames/s")


if __name__ == "__main__":
    main()
