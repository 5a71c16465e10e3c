"""Training throughput of the real GRD-Net trainer step (D + G + U-Net updates) per profile and precision.

Baseline: fp32 eager in the same run. Measured: bf16 autocast + channels_last where bf16 is native on this CPU
(on an AVX2-only CPU it would be emulated, and ``auto`` never trains in it). ``auto`` is what ``linecam train``
runs by default here (``linecam.hardware.resolve_precision``); its row is the one of the precision it resolves to.
Warm-up steps (oneDNN primitive creation) are excluded. Prints images/s and the ratio to fp32, and writes
``bench/results/train_speed_<CPU kind>.json`` with the CPU.

    .venv/bin/python bench/train_speed.py                          # fast + paper, 256x256, batch 4
    .venv/bin/python bench/train_speed.py --profiles fast --steps 5 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from linecam.grdnet.train import TrainConfig, Trainer
from linecam.hardware import cpu_kind, cpu_summary, native_bf16, resolve_precision

RESULTS = Path(__file__).resolve().parent / "results"


def tiny_dataset(root: Path, size: int, n: int = 6) -> Path:
    """A few PNGs so the Trainer can be built; the timed steps use in-memory batches."""
    rng = np.random.default_rng(0)
    for i in range(n):
        p = root / "train" / "good" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return root


def images_per_s(data: Path, profile: str, size: int, precision: str, batch: int, warmup: int, steps: int,
                 overrides: dict[str, Any] | None = None) -> float:
    """Images/s of ``steps`` real trainer steps (median) after ``warmup``; ``overrides`` change profile fields."""
    cfg = TrainConfig(data=data, out=data / "out", profile=profile,
                      profile_overrides={**(overrides or {}), "image_size": size},
                      batch_size=batch, precision=precision, progress=False)  # type: ignore[arg-type]
    trainer = Trainer(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen)
    roi = torch.ones(batch, 1, size, size)
    for _ in range(warmup):
        trainer.train_step(x, roi, gen)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(x, roi, gen)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["fast", "paper"])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/train_speed_<CPU kind>.json")
    args = ap.parse_args()
    cpu = cpu_summary()
    auto = resolve_precision("auto", "cpu", workload="train")
    print(f"CPU: {cpu['model']} ({cpu['kind']}), flags {' '.join(cpu['flags'])}; auto trains in {auto}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, image {args.image_size}px, "
          f"batch {args.batch_size}, median of {args.steps} steps after {args.warmup} warm-up")
    precisions = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_dataset(Path(tmp), args.image_size)
        for profile in args.profiles:
            res = {p: images_per_s(data, profile, args.image_size, p, args.batch_size, args.warmup, args.steps)
                   for p in precisions}
            for p, rate in res.items():
                rows.append({"profile": profile, "precision": p, "images_per_s": rate,
                             "ratio_vs_fp32": rate / res["fp32"], "is_auto": p == auto})
            print(f"{profile:6s} " + "   ".join(f"{p} {r:7.2f} img/s ({r / res['fp32']:.2f}x fp32)"
                                             + (" <- auto" if p == auto else "") for p, r in res.items()),
                  flush=True)
    out = args.out or RESULTS / f"train_speed_{cpu_kind()}.json"
    out.write_text(json.dumps({"cpu": cpu, "auto_precision": auto, "image_size": args.image_size,
                               "batch_size": args.batch_size, "threads": torch.get_num_threads(), "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
