"""Why does a seed fail the bounds? Take trained models apart without training anything.

``bench/seeds.py`` says *whether* a recipe is robust; this script says *where* a failing run loses, so a fix can
aim at the cause rather than the seed (issue #24 names four suspects: the simulator's variety, the ROI target,
the learning-rate schedule and epoch selection). For each model directory it scores ``val`` (threshold),
``test`` and ``test_unseen`` once in torch (raw probability maps kept), then answers from those maps:

* **epoch selection** -- the same figures for the EMA weights of the *last* epoch (``training/checkpoint_last.pt``)
  next to the shipped (best-``val``) weights, plus the ``val`` AUROC curve's peak and its last value;
* **what the escapes are** -- detection by ground-truth area and by kind: a mark of A pixels at probability 1
  scores at most A/441 after the 21x21 mean, so the smallest marks have a ceiling no training reaches;
* **what the false rejects are** -- for every rejected good or out-of-ROI image: its score, where the pooled
  peak lies (inside or outside the ROI, distance to the ROI edge) and the raw probability there;
* **the scoring head's share** -- the same maps re-pooled with smaller mean windows (threshold recalibrated on
  ``val`` each time). Diagnostic only: the line's head stays 21x21 (DESIGN.md); a gain here says how much of a
  failure is pooling, not training;
* **seed ensembling** (``--ensemble``) -- the pixel-wise mean of all the given models' maps through the same head,
  with its inference cost against one member timed in the same run.

    .venv/bin/python bench/seed_diagnosis.py runs/seeds_half/seed1 runs/seeds_half/seed3 --data data/bfs
    .venv/bin/python bench/seed_diagnosis.py runs/seeds_half/seed{1,2,3} --ensemble

Writes ``bench/results/seed_diagnosis_<CPU kind>.json`` (``--json``) and prints one block per model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linecam.grdnet.datasets import InspectionDataset, list_records, list_splits
from linecam.grdnet.evaluate import (
    Predictions,
    calibration_and_test,
    compute_metrics,
    predict_dataset,
    write_metrics_json,
)
from linecam.grdnet.model import build_grdnet
from linecam.grdnet.modeldir import load_model_dir
from linecam.grdnet.scoring import POOL_KERNEL, smooth_map
from linecam.hardware import cpu_kind, cpu_summary

ROOT = Path(__file__).resolve().parent.parent
KERNELS = (21, 15, 11, 7)


def pooled_scores(maps: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and pooled maps of raw maps (N,H,W) under a ``kernel`` x ``kernel`` mean, as the head pools."""
    pooled = smooth_map(torch.from_numpy(maps)[:, None], kernel)
    return pooled.flatten(1).amax(dim=1).numpy(), pooled[:, 0].numpy()


def rescored(p: Predictions, kernel: int) -> Predictions:
    scores, _ = pooled_scores(p.maps, kernel)
    return Predictions(scores.astype(np.float32), p.maps, p.masks, p.rois, p.labels, p.kinds, p.paths)


def headline(m: dict[str, Any]) -> dict[str, Any]:
    unseen = m.get("unseen", {})
    return {"image_auroc": m["image_auroc"], "good_frr": m["per_kind"].get("good", {}).get("reject_rate"),
            "outside_roi_frr": m.get("outside_roi_false_reject_rate"), "escape_rate": m["escape_rate"],
            "unseen_auroc": unseen.get("image_auroc"), "unseen_caught": unseen.get("detection_rate"),
            "threshold": m["threshold"],
            "seen_caught": {k: v["reject_rate"] for k, v in m["per_kind"].items()
                            if k not in ("good", "outside_roi")},
            "unseen_caught_per_kind": {k: v["detection_rate"] for k, v in unseen.get("per_kind", {}).items()}}


def false_rejects(test: Predictions, threshold: float) -> list[dict[str, Any]]:
    """Every good or out-of-ROI test image above the threshold, with where its pooled peak lies."""
    from scipy import ndimage

    out = []
    rejected = np.flatnonzero((test.labels == 0) & (test.scores >= threshold))
    _, pooled = pooled_scores(test.maps[rejected], POOL_KERNEL)  # only the rejected images need their peak
    for i, peak_map in zip(rejected, pooled, strict=True):
        y, x = np.unravel_index(int(np.argmax(peak_map)), peak_map.shape)
        roi = test.rois[i]
        inside = bool(roi[y, x])
        # distance (pixels) from the peak to the ROI boundary, signed: + inside, - outside
        dist_in = ndimage.distance_transform_edt(roi)[y, x] if inside else -ndimage.distance_transform_edt(~roi)[y, x]
        win = test.maps[i][max(0, y - 10): y + 11, max(0, x - 10): x + 11]
        out.append({"path": test.paths[i], "kind": test.kinds[i], "score": float(test.scores[i]),
                    "peak_yx": [int(y), int(x)], "peak_inside_roi": inside, "peak_to_roi_edge_px": float(dist_in),
                    "raw_max_in_window": float(win.max()), "pixels_over_half_in_window": int((win > 0.5).sum())})
    return out


def last_epoch_model(model_dir: Path) -> torch.nn.Module | None:
    """The EMA (else raw) generator+U-Net weights at the end of training, or None without a last checkpoint."""
    path = model_dir / "training" / "checkpoint_last.pt"
    if not path.is_file():
        return None
    st = torch.load(path, map_location="cpu", weights_only=True)
    from linecam.grdnet.profiles import ModelProfile

    model = build_grdnet(ModelProfile(**st["profile"]))
    model.load_state_dict(st["ema"] if st.get("ema") is not None else st["model"])
    return model.eval()


def predict_all(model: torch.nn.Module, data: Path, size: int, precision: str) -> dict[str, Predictions]:
    calib_ds, test_ds, _ = calibration_and_test(data, size)
    preds = {"calibration": predict_dataset(model, calib_ds, precision=precision),
             "test": predict_dataset(model, test_ds, precision=precision)}
    if "test_unseen" in list_splits(data):
        preds["test_unseen"] = predict_dataset(
            model, InspectionDataset(list_records(data, "test_unseen"), size), precision=precision)
    return preds


def diagnose(model_dir: Path, data: Path, precision: str,
             kernels: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Predictions]]:
    """The diagnosis of one model directory and its predictions (for the ensemble)."""
    model, card = load_model_dir(model_dir)
    size = card.profile.image_size
    history = json.loads((model_dir / "training" / "history.json").read_text()) \
        if (model_dir / "training" / "history.json").is_file() else []
    curve = [h.get("val_auroc") for h in history]
    selected = card.training.get("val_metrics", {}).get("selected_epoch") if card.training else None
    t0 = time.perf_counter()
    preds = predict_all(model, data, size, precision)
    m = compute_metrics(preds["test"], preds["calibration"], unseen=preds.get("test_unseen"))
    out: dict[str, Any] = {
        "model": str(model_dir), "seed": card.training.get("seed") if card.training else None,
        "val_auroc_curve": curve, "selected_epoch": selected,
        "val_auroc_peak": max((c for c in curve if c is not None), default=None),
        "val_auroc_last": curve[-1] if curve else None,
        "shipped": headline(m),
        "escapes_by_area": m["by_defect_area"],
        "false_rejects": false_rejects(preds["test"], m["threshold"]),
        "good_score_quantiles": {q: float(np.quantile(preds["test"].scores[preds["test"].labels == 0], q))
                                 for q in (0.5, 0.9, 0.98, 1.0)},
        "pooling": {},
    }
    for k in kernels:
        rp = {name: rescored(p, k) for name, p in preds.items()}
        if k == POOL_KERNEL:  # the re-pooling must reproduce the head exactly, or every other row is suspect
            gap = float(np.abs(rp["test"].scores - preds["test"].scores).max())
            out["repool_check_max_abs_diff"] = gap
        mk = compute_metrics(rp["test"], rp["calibration"], unseen=rp.get("test_unseen"))
        out["pooling"][str(k)] = {**headline(mk), "escapes_by_area": mk["by_defect_area"]}
    last = last_epoch_model(model_dir)
    if last is not None:
        lp = predict_all(last, data, size, precision)
        out["last_epoch"] = headline(compute_metrics(lp["test"], lp["calibration"], unseen=lp.get("test_unseen")))
    out["seconds"] = time.perf_counter() - t0
    return out, preds


def averaged(members: list[dict[str, Predictions]]) -> dict[str, Predictions]:
    """Per split, the members' raw probability maps averaged pixel by pixel and scored by the 21x21 head."""
    out = {}
    for split, first in members[0].items():
        maps = np.mean([m[split].maps for m in members], axis=0).astype(np.float32)
        scores, _ = pooled_scores(maps, POOL_KERNEL)
        out[split] = Predictions(scores.astype(np.float32), maps, first.masks, first.rois, first.labels,
                                 first.kinds, first.paths)
    return out


def ensemble_cost(model_dirs: list[Path], data: Path, frames: int = 32, repeats: int = 3) -> dict[str, Any]:
    """Batch-1 torch time of one member against all members, measured in the same run (a ratio, not an
    absolute figure: the machines are shared). Weight averaging would cost nothing; a map ensemble costs K."""
    models = [load_model_dir(d)[0] for d in model_dirs]
    size = load_model_dir(model_dirs[0])[1].profile.image_size
    ds = InspectionDataset(list_records(data, "test")[:frames], size)
    xs = [ds[i]["image"][None] for i in range(len(ds))]

    def run(members: list[torch.nn.Module]) -> float:
        best = float("inf")
        with torch.inference_mode():
            for _ in range(repeats):
                t0 = time.perf_counter()
                for x in xs:
                    torch.stack([m(x) for m in members]).mean(dim=0)
                best = min(best, time.perf_counter() - t0)
        return best / len(xs) * 1000.0

    run(models[:1])  # warm-up
    one, all_ = run(models[:1]), run(models)
    return {"members": len(models), "ms_one": one, "ms_ensemble": all_, "ratio": all_ / one,
            "backend": "torch eager fp32, batch 1", "threads": torch.get_num_threads()}


def show(d: dict[str, Any]) -> None:
    def row(name: str, h: dict[str, Any]) -> str:
        return (f"  {name:14s} AUROC {h['image_auroc']:.4f}  good FRR {h['good_frr']:.3f}  out-of-ROI FRR "
                f"{h['outside_roi_frr'] or 0:.3f}  escapes {h['escape_rate']:.3f}  unseen {num(h['unseen_auroc'])} "
                f"caught {num(h['unseen_caught'])}  seen {h['seen_caught']}")
    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(f"{d['model']} (seed {d['seed']}): val AUROC peak {num(d['val_auroc_peak'])}, selected epoch "
          f"{d['selected_epoch']}, last {num(d['val_auroc_last'])}")
    print(row("shipped", d["shipped"]))
    if "last_epoch" in d:
        print(row("last epoch", d["last_epoch"]))
    for k, h in d["pooling"].items():
        print(row(f"pool {k}x{k}", h))
    print("  escapes by area (21x21): " + ", ".join(
        f"{b['min_px']}-{b['max_px'] or ''}px {1 - b['reject_rate']:.0%} of {b['n']}" for b in d["escapes_by_area"]))
    fr = d["false_rejects"]
    inside = sum(f["peak_inside_roi"] for f in fr)
    quantiles = {k: round(v, 3) for k, v in d["good_score_quantiles"].items()}
    print(f"  false rejects: {len(fr)} ({inside} peak inside the ROI); good score quantiles {quantiles}, "
          f"threshold {d['shipped']['threshold']:.3f}")
    for f in fr:
        where = "in " if f["peak_inside_roi"] else "out"
        print(f"    {Path(f['path']).name:28s} {f['kind']:12s} score {f['score']:.3f} peak {where}"
              f" {f['peak_to_roi_edge_px']:+.0f}px from ROI edge, raw max {f['raw_max_in_window']:.2f},"
              f" {f['pixels_over_half_in_window']} px > 0.5")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "bfs")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--kernels", type=int, nargs="+", default=list(KERNELS))
    ap.add_argument("--ensemble", action="store_true",
                    help="also score the pixel-wise mean of all the models' maps, and time it against one model")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cpu = cpu_summary()
    print(f"CPU: {cpu['model']} ({cpu['kind']})", flush=True)
    rows, members = [], []
    for model_dir in args.models:
        d, preds = diagnose(model_dir, args.data, args.precision, tuple(args.kernels))
        show(d)
        rows.append(d)
        if args.ensemble:
            members.append(preds)
    ensemble: dict[str, Any] | None = None
    if args.ensemble and len(members) > 1:
        avg = averaged(members)
        m = compute_metrics(avg["test"], avg["calibration"], unseen=avg.get("test_unseen"))
        ensemble = {"members": [str(d) for d in args.models], **headline(m), "escapes_by_area": m["by_defect_area"],
                    "false_rejects": false_rejects(avg["test"], m["threshold"]),
                    "cost": ensemble_cost(list(args.models), args.data)}
        print(f"ensemble of {len(members)}: AUROC {ensemble['image_auroc']:.4f}  good FRR {ensemble['good_frr']:.3f}"
              f"  out-of-ROI FRR {ensemble['outside_roi_frr'] or 0:.3f}  escapes {ensemble['escape_rate']:.3f}"
              f"  unseen {ensemble['unseen_auroc'] or 0:.4f} caught {ensemble['unseen_caught'] or 0:.3f}"
              f"  seen {ensemble['seen_caught']}  unseen per kind {ensemble['unseen_caught_per_kind']}")
        c = ensemble["cost"]
        print(f"  inference cost: {c['ms_ensemble']:.1f} ms against {c['ms_one']:.1f} ms for one member "
              f"(x{c['ratio']:.2f}, {c['backend']}, {c['threads']} threads)")
    result = {"cpu": cpu, "date": time.strftime("%Y-%m-%d"), "data": str(args.data), "precision": args.precision,
              "models": rows, "ensemble": ensemble,
              "command": " ".join(["bench/seed_diagnosis.py", *(argv if argv is not None else sys.argv[1:])])}
    path = args.json or ROOT / "bench" / "results" / f"seed_diagnosis_{cpu_kind()}.json"
    write_metrics_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
