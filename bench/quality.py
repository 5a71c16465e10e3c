"""Detection quality of a trained model directory on a dataset (threshold calibrated on val, reported on test).

Prints image AUROC, pixel AUROC (inside the ROI), AUPRO, F1-max, accuracy and false-reject rates at the
calibrated threshold, the out-of-ROI false-reject rate with NO mask at inference (is the learned ROI attention
silent outside the region?) and the test_unseen figures. The image AUROC and the out-of-ROI rate carry their 95%
intervals: on a few hundred test images they decide whether a gap to a bar is real. With ``--fixed-mask`` the
same run is repeated with a per-camera scoring mask as the baseline the learned attention is compared against.

    .venv/bin/python bench/quality.py --model model/grdnet/1 --data data/vials
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from linecam.backends.evaluation import evaluate_detector
from linecam.commands.model import load_fixed_mask, open_scoring_detector
from linecam.grdnet.modeldir import read_card
from linecam.hardware import cpu_summary

KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "false_reject_rate", "escape_rate",
        "false_reject_rate_at_escape_0", "false_reject_rate_at_escape_0.01", "outside_roi_false_reject_rate")


def _print(title: str, m: dict) -> None:
    print(f"== {title} (threshold {m['threshold']:.5f}, calibrated on {m['calibration_split']})")
    for k in KEYS:
        if k in m and m[k] is not None:
            ci = m.get(f"{k}_ci95")
            spread = f"  (95% interval {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
            print(f"  {k:36s} {m[k]:.4f}{spread}")
    if m.get("unseen"):
        for k, v in m["unseen"].items():
            if k == "per_kind":
                for kind, row in v.items():
                    print(f"  unseen kind {kind:18s} n={row['n']:4d} caught={row['detection_rate']:.3f} "
                          f"auroc={row['image_auroc']:.4f}")
            else:
                print(f"  unseen {k:29s} {v:.4f}" if isinstance(v, float) else f"  unseen {k:29s} {v}")
    for kind, v in m.get("per_kind", {}).items():
        print(f"  kind {kind:20s} n={v['n']:4d} reject_rate={v['reject_rate']:.3f} mean_score={v['mean_score']:.4f}")
    for row in m.get("by_defect_area", []):
        span = f"{row['min_px']}-{row['max_px']} px" if row["max_px"] is not None else f">= {row['min_px']} px"
        print(f"  defect area {span:16s} n={row['n']:4d} reject_rate={row['reject_rate']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--backend", default="auto", help="inference backend (auto: as the line picks it here)")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "int8"],
                    help="auto: the backend's choice for this CPU (never an emulated precision)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--fixed-mask", type=Path, default=None, help="also score with this per-camera mask")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    card = read_card(args.model)
    size = card.profile.image_size
    detector = open_scoring_detector(args.model, args.backend, args.precision, "cpu", args.threads)
    print(f"model {card.name}/{card.version} profile {card.profile.name} roi_variant {card.roi_variant} {size}px, "
          f"{detector.backend} {getattr(detector, 'precision', '')}")
    metrics, _ = evaluate_detector(detector, args.data, size, batch_size=args.batch_size)
    _print("no mask at inference (learned ROI attention)", metrics)
    out = {"cpu": cpu_summary(), "no_mask": metrics}
    if args.fixed_mask is not None:
        masked, _ = evaluate_detector(detector, args.data, size, batch_size=args.batch_size,
                                      fixed_mask=load_fixed_mask(args.fixed_mask, size))
        _print("fixed per-camera mask", masked)
        out["fixed_mask"] = masked
    detector.close()
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
