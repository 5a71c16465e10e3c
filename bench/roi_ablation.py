"""ROI-attention ablation (paper section 4.4.2 plus the learned-silence variant), measured with NO mask at inference.

Trains one model per discriminative-loss variant on the same data, seed and budget, then reports on the test
split, threshold calibrated on ``val``: image AUROC, pixel AUROC inside the ROI, and the false-reject rate of
``outside_roi`` images (defects only outside the ROI: good for the line). The point of the table is the last
column: a variant that cannot learn silence outside the ROI rejects good products in production, where the
worker receives frames and no ROI masks.

    .venv/bin/python bench/roi_ablation.py --data data/bfs --size 128 --epochs 12

On two cores, train the variants in two processes that share ``--workdir`` (each with its own ``--variants``
and ``--no-table``), then run once more with all variants: trained models in the workdir are reused, so the last
run only evaluates and writes the table. Every model is trained with the same recipe flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from linecam.backends.evaluation import evaluate_detector
from linecam.backends.torch_cpu import TorchCpuDetector
from linecam.grdnet.modeldir import load_model_dir
from linecam.grdnet.train import TrainConfig, run_training

VARIANTS = ("overlap", "intersection", "intersection_overlap", "negated_overlap", "learned_silence")


def outside_roi_peak(preds: object) -> float:
    """Mean over good test images of the largest smoothed map value outside the ROI (0 = silent)."""
    maps = np.asarray(preds.maps)  # type: ignore[attr-defined]
    rois = np.asarray(preds.rois)  # type: ignore[attr-defined]
    kinds = preds.kinds  # type: ignore[attr-defined]
    peaks = [float((maps[i] * (rois[i] < 0.5)).max()) for i, k in enumerate(kinds) if k == "outside_roi"]
    return float(np.mean(peaks)) if peaks else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--focal-gamma", type=float, default=2.0)
    ap.add_argument("--perlin-scales", type=int, nargs=2, default=(0, 6))
    ap.add_argument("--unet-stem-stride", type=int, default=None, help="override the fast profile's U-Net stem")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the models here; a variant already trained there is reused, not retrained")
    ap.add_argument("--no-table", action="store_true", help="train (and evaluate) only; write no JSON")
    ap.add_argument("--out", default="bench/results/roi_ablation.json")
    args = ap.parse_args()
    rows = []
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for variant in args.variants.split(","):
            t0 = time.perf_counter()
            out = work / variant
            trained_here = not (out / "card.json").is_file()
            if trained_here:
                overrides = {"image_size": args.size}
                if args.unet_stem_stride:
                    overrides["unet_stem_stride"] = args.unet_stem_stride
                cfg = TrainConfig(data=Path(args.data), out=out, profile="fast", profile_overrides=overrides,
                                  epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, roi_variant=variant, seed=1,
                                  rotation=0.1, progress=False, focal_gamma=args.focal_gamma,
                                  perlin_scales=tuple(args.perlin_scales))
                run_training(cfg)
            model, card = load_model_dir(out)
            detector = TorchCpuDetector(model, (args.size, args.size), precision="fp32", mode="eager")
            metrics, preds = evaluate_detector(detector, args.data, args.size)
            detector.close()
            row = {
                "variant": variant,
                "image_auroc": metrics["image_auroc"],
                "pixel_auroc": metrics["pixel_auroc"],
                "aupro": metrics["aupro"],
                "outside_roi_false_reject_rate": metrics.get("outside_roi_false_reject_rate", float("nan")),
                "outside_roi_peak": outside_roi_peak(preds["test"]),
                "false_reject_rate": metrics.get("false_reject_rate"),
                "threshold": metrics["threshold"],
                "train_s": time.perf_counter() - t0 if trained_here else None,  # None: reused from --workdir
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.no_table:
        return
    print(f"\nROI ablation: fast profile (U-Net stem {args.unet_stem_stride or 'default'}) at {args.size}px, "
          f"{args.epochs} epochs, focal gamma {args.focal_gamma}, "
          f"Perlin scales {args.perlin_scales}, no mask at inference")
    head = ("variant", "img AUROC", "px AUROC", "AUPRO", "out-ROI FRR", "out-ROI peak")
    print(f"{head[0]:22s} {head[1]:>9s} {head[2]:>9s} {head[3]:>7s} {head[4]:>11s} {head[5]:>12s}")
    for r in rows:
        print(f"{r['variant']:22s} {r['image_auroc']:9.4f} {r['pixel_auroc']:9.4f} {r['aupro']:7.4f} "
              f"{r['outside_roi_false_reject_rate']:11.3f} {r['outside_roi_peak']:12.4f}")
    best = min(rows, key=lambda r: (r["outside_roi_false_reject_rate"], -r["image_auroc"]))
    print(f"best (lowest out-of-ROI FRR, then AUROC): {best['variant']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"size": args.size, "epochs": args.epochs, "lr": args.lr,
                                           "unet_stem_stride": args.unet_stem_stride,
                                           "focal_gamma": args.focal_gamma,
                                           "perlin_scales": list(args.perlin_scales), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
