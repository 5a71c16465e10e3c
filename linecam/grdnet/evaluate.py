"""Evaluation of a trained GRD-Net: metrics, threshold calibration and the out-of-ROI check.

Why this shape: the operating threshold must come from data used neither for training nor for the reported
figures, so every threshold here is chosen on the calibration split (``val``) and only *applied* to ``test``.
The one exception is ``f1_max``, which by definition is the F1 at the best test threshold (a threshold-free
ranking figure comparable with anomalib); it is never used to operate the line.

Image scores come from the shared scoring head (:func:`linecam.grdnet.scoring.score_maps`); pixel metrics use
the raw probability map, restricted to pixels inside the ROI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats
from sklearn.metrics import precision_recall_curve, roc_auc_score
from torch.utils.data import DataLoader

from linecam.decision import rejects, threshold_for_escape, threshold_rejecting
from linecam.grdnet.datasets import DatasetError, InspectionDataset, SampleRecord, list_records, list_splits

ESCAPE_TARGETS = (0.0, 0.01)
"""Escape (missed-defect) rates at which the false-reject rate is reported."""

CONFIDENCE = 0.95
"""Level of the intervals reported next to the headline figures."""
BOOTSTRAP_RESAMPLES = 1000
AREA_BINS_PX = (0, 16, 32, 64, 128, 256)
"""Lower edges of the defect-area bins (pixels of ground truth at model resolution) of the detection table."""


# --------------------------------------------------------------------------------------------- predictions
@dataclass
class Predictions:
    """Model outputs for one split, kept in memory (uint8-quantised maps would lose the AUPRO tail)."""

    scores: np.ndarray  # (N,) image scores from score_maps
    maps: np.ndarray  # (N,H,W) float32 raw anomaly probability
    masks: np.ndarray  # (N,H,W) bool defect ground truth
    rois: np.ndarray  # (N,H,W) bool ROI
    labels: np.ndarray  # (N,) int line label, 1 = defect
    kinds: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def select(self, keep: np.ndarray) -> Predictions:
        idx = np.flatnonzero(keep)
        return Predictions(self.scores[idx], self.maps[idx], self.masks[idx], self.rois[idx], self.labels[idx],
                           [self.kinds[i] for i in idx], [self.paths[i] for i in idx])


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    dataset: InspectionDataset,
    *,
    batch_size: int = 8,
    device: str = "cpu",
    precision: str = "fp32",
    fixed_mask: torch.Tensor | None = None,
    progress: str | None = None,
) -> Predictions:
    """Run ``model`` (a GRDNet: x -> prob map) over a dataset WITHOUT giving it the ROI.

    ``fixed_mask`` is the optional per-camera mask of the scoring head (production option), never the per-image ROI.
    ``progress`` names the pass in progress reports (None: silent, as inside a training epoch).
    """
    from linecam.grdnet.scoring import score_maps
    from linecam.progress import Progress

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    scores, maps, masks, rois, labels, kinds, paths = [], [], [], [], [], [], []
    dev = torch.device(device)
    bar = Progress(len(dataset), progress or "", enabled=progress is not None)
    for batch in loader:
        x = batch["image"].to(dev)
        with autocast_context(dev, precision):
            prob = model(x)
        prob = prob.float()
        mask = fixed_mask.to(dev) if fixed_mask is not None else None
        s, _ = score_maps(prob, mask)
        scores.append(s.float().cpu().numpy())
        maps.append(prob[:, 0].cpu().numpy())
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        rois.append(batch["roi"][:, 0].numpy() > 0.5)
        labels.append(np.asarray(batch["label"]))
        kinds.extend(batch["kind"])
        paths.extend(batch["path"])
        bar.update(int(x.shape[0]))
    bar.close()
    return Predictions(np.concatenate(scores), np.concatenate(maps).astype(np.float32), np.concatenate(masks),
                       np.concatenate(rois), np.concatenate(labels).astype(int), kinds, paths)


#: scores a batch of uint8 (N, H, W, 3) frames -> (image scores (N,), raw probability maps (N, H, W)). The
#: commands build it from a backend's Detector (``detect(..., masks=fixed, return_prob=True)``), so evaluation
#: scores through the same graph, scoring head, backend and precision as the line.
BatchScorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def predict_split(scorer: BatchScorer, dataset: InspectionDataset, *, batch_size: int = 8,
                  progress: str | None = None) -> Predictions:
    """Score a dataset with ``scorer`` WITHOUT giving it the ROI (as the line sees a frame)."""
    from linecam.progress import Progress

    scores, maps, masks, rois = [], [], [], []
    bar = Progress(len(dataset), progress or "", enabled=progress is not None)
    for start in range(0, len(dataset), batch_size):
        items = [dataset.arrays(i) for i in range(start, min(start + batch_size, len(dataset)))]
        s, prob = scorer(np.stack([rgb for rgb, _, _ in items]))
        scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
        maps.append(np.asarray(prob, dtype=np.float32))
        masks.append(np.stack([m for _, m, _ in items]) > 0)
        rois.append(np.stack([r for _, _, r in items]) > 0)
        bar.update(len(items))
    bar.close()
    records = dataset.records
    return Predictions(np.concatenate(scores), np.concatenate(maps), np.concatenate(masks), np.concatenate(rois),
                       np.array([r.label for r in records], dtype=int), [r.kind for r in records],
                       [str(r.image) for r in records])


def prepare_for_inference(model: torch.nn.Module, device: str, precision: str) -> torch.nn.Module:
    """Eval mode on the device; channels_last for bf16 on CPU, where oneDNN/AMX is ~5x faster than fp32."""
    model = model.to(torch.device(device)).eval()
    if device == "cpu" and precision == "bf16":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def autocast_context(device: torch.device, precision: str) -> Any:
    """bf16 autocast on CPU (AMX), fp16 on CUDA, nothing for fp32."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")


# --------------------------------------------------------------------------------------------- metrics
def _check_binary(labels: np.ndarray, what: str) -> None:
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError(f"{what}: needs both good and defective samples")


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels).astype(int)
    _check_binary(labels, "image AUROC")
    return float(roc_auc_score(labels, scores))


def _auroc_of(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUROC as the Mann-Whitney U of (defective, good) over the number of pairs (ties count half)."""
    return stats.mannwhitneyu(pos, neg, axis=axis).statistic / (pos.shape[axis] * neg.shape[axis])


def auroc_interval(
    labels: np.ndarray, scores: np.ndarray, *, level: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the image AUROC.

    Why: with a few hundred test images one AUROC figure moves by a few hundredths between resamplings (0.017 on
    225 images), so a gap to a bar like 0.97 means little without its spread. scipy's bootstrap resamples the
    good and the defective images separately (stratified), so every resample keeps both classes and its class
    balance; a fixed ``seed`` makes the interval reproducible.
    """
    labels = np.asarray(labels).astype(int)
    _check_binary(labels, "AUROC interval")
    if not 0.0 < level < 1.0:
        raise ValueError(f"AUROC interval: level must be in (0, 1), got {level}")
    scores = np.asarray(scores, dtype=np.float64)
    ci = stats.bootstrap((scores[labels == 1], scores[labels == 0]), _auroc_of, n_resamples=resamples,
                         confidence_level=level, method="percentile", rng=np.random.default_rng(seed),
                         vectorized=True, batch=100).confidence_interval
    return float(ci.low), float(ci.high)


def rate_interval(count: int, total: int, *, level: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a rate such as the out-of-ROI false-reject rate.

    Why: 0 false rejects out of 25 images does not show a rate <= 2%; its upper bound is 14%. The interval says
    how many images a claim needs.
    """
    if total <= 0 or not 0 <= count <= total:
        raise ValueError(f"rate interval: need 0 <= count <= total and total > 0, got {count}/{total}")
    ci = stats.binomtest(count, total).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def pixel_auroc(maps: np.ndarray, masks: np.ndarray, rois: np.ndarray | None = None) -> float:
    """AUROC over pixels (inside the ROI when given): defects outside the ROI are not the model's business."""
    sel = rois.astype(bool) if rois is not None else np.ones(maps.shape, bool)
    target = masks.astype(bool)[sel]
    _check_binary(target.astype(int), "pixel AUROC")
    return float(roc_auc_score(target, maps[sel]))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold, for the line's rule (reject when score > threshold)."""
    labels = np.asarray(labels).astype(int)
    _check_binary(labels, "F1")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[best]), threshold_rejecting(thresholds[best])  # sklearn's thresholds reject from >= on


def aupro(maps: np.ndarray, masks: np.ndarray, rois: np.ndarray | None = None, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0,1].

    Each connected defect region (8-connectivity, per image) weighs the same whatever its size; FPR counts
    good pixels (inside the ROI when given). Exact, threshold-free: pixels are sorted once by score and the
    PRO/FPR curve is built from cumulative sums, evaluated after each distinct score.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError("fpr_limit must be in (0, 1]")
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    sel = np.ones(maps.shape, bool) if rois is None else np.asarray(rois).astype(bool)
    masks = masks & sel
    weights = np.zeros(maps.shape, np.float64)
    n_regions = 0
    structure = np.ones((3, 3), bool)
    for i in range(maps.shape[0]):
        labelled, n = ndimage.label(masks[i], structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(labelled.ravel())
        w = np.zeros_like(sizes, dtype=np.float64)
        w[1:] = 1.0 / sizes[1:]
        weights[i] = w[labelled]
        n_regions += n
    negatives = sel & ~masks
    n_neg = int(negatives.sum())
    if n_regions == 0 or n_neg == 0:
        raise ValueError("AUPRO: needs at least one defect region and one good pixel")
    use = sel.ravel()
    s = maps.ravel()[use]
    pos_w = weights.ravel()[use] / n_regions
    neg = negatives.ravel()[use].astype(np.float64)
    order = np.argsort(-s, kind="stable")
    s, pos_w, neg = s[order], pos_w[order], neg[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    pro = np.r_[0.0, np.cumsum(pos_w)[last_of_group]]
    fpr = np.r_[0.0, np.cumsum(neg)[last_of_group] / n_neg]
    # Clip the curve at fpr_limit, interpolating the crossing point.
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))
    if k < fpr.size:
        f0, f1_, p0, p1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        p_at = p0 + (p1 - p0) * (fpr_limit - f0) / (f1_ - f0) if f1_ > f0 else p1
        fpr = np.r_[fpr[:k], fpr_limit]
        pro = np.r_[pro[:k], p_at]
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, false-reject rate (good rejected) and escape rate (defect accepted) at one threshold."""
    labels = np.asarray(labels).astype(int)
    reject = rejects(scores, threshold)
    good, bad = labels == 0, labels == 1
    return {
        "accuracy": float(np.mean(reject == bad)),
        "false_reject_rate": float(reject[good].mean()) if good.any() else float("nan"),
        "escape_rate": float((~reject[bad]).mean()) if bad.any() else float("nan"),
    }


def calibrate(calib: Predictions) -> dict[str, float]:
    """Thresholds chosen on the calibration split: best-F1 (the default) and one per escape target."""
    _, thr = f1_max(calib.labels, calib.scores)
    out = {"threshold": thr}
    for e in ESCAPE_TARGETS:
        out[f"threshold_escape_{e:g}"] = threshold_for_escape(calib.labels, calib.scores, e)
    return out


def compute_metrics(
    test: Predictions, calib: Predictions | None, *, threshold: float | None = None,
    unseen: Predictions | None = None,
) -> dict[str, Any]:
    """All reported figures for ``test`` with thresholds from ``calib`` (or a given ``threshold``)."""
    if calib is None and threshold is None:
        raise ValueError("compute_metrics needs a calibration split or an explicit threshold")
    thresholds = calibrate(calib) if calib is not None else {"threshold": float(threshold)}  # type: ignore[arg-type]
    if threshold is not None:
        thresholds["threshold"] = float(threshold)
    thr = thresholds["threshold"]
    f1, f1_thr = f1_max(test.labels, test.scores)
    m: dict[str, Any] = {
        "image_auroc": image_auroc(test.labels, test.scores),
        "image_auroc_ci95": list(auroc_interval(test.labels, test.scores)),
        "pixel_auroc": pixel_auroc(test.maps, test.masks, test.rois),
        "aupro": aupro(test.maps, test.masks, test.rois),
        "f1_max": f1,
        "f1_max_threshold_test": f1_thr,
        **thresholds,
        "n_test": int(test.labels.size),
        "n_test_defect": int(test.labels.sum()),
        "n_calibration": int(calib.labels.size) if calib is not None else 0,
    }
    at = rates_at(test.labels, test.scores, thr)
    m["accuracy"] = at["accuracy"]
    m["false_reject_rate"] = at["false_reject_rate"]
    m["escape_rate"] = at["escape_rate"]
    for e in ESCAPE_TARGETS:
        key = f"threshold_escape_{e:g}"
        if key in thresholds:
            r = rates_at(test.labels, test.scores, thresholds[key])
            m[f"false_reject_rate_at_escape_{e:g}"] = r["false_reject_rate"]
            m[f"test_escape_rate_at_escape_{e:g}"] = r["escape_rate"]
    outside = np.array([k == "outside_roi" for k in test.kinds])
    if outside.any():
        rejected, n_outside = int(rejects(test.scores[outside], thr).sum()), int(outside.sum())
        m["outside_roi_false_reject_rate"] = rejected / n_outside
        m["outside_roi_false_reject_rate_ci95"] = list(rate_interval(rejected, n_outside))
        m["n_outside_roi"] = n_outside
    per_kind: dict[str, dict[str, float]] = {}
    for kind in sorted(set(test.kinds)):
        sel = np.array([k == kind for k in test.kinds])
        per_kind[kind] = {"n": int(sel.sum()), "reject_rate": float(rejects(test.scores[sel], thr).mean()),
                          "mean_score": float(test.scores[sel].mean())}
    m["per_kind"] = per_kind
    m["by_defect_area"] = detection_by_area(test, thr)
    if unseen is not None:
        m["unseen"] = unseen_metrics(test, unseen, thr)
    return m


def detection_by_area(preds: Predictions, threshold: float,
                      edges: tuple[int, ...] = AREA_BINS_PX) -> list[dict[str, Any]]:
    """Reject rate of the defective images by the area of their ground truth, smallest first.

    Why: the line's question is "what is the smallest defect we catch", and the fixed 21x21 average pooling makes
    the answer depend on area: a mark of A pixels at probability 1 scores at most A/441. Bins without images
    are left out; ``max_px`` is None for the last, open bin.
    """
    defect = preds.labels == 1
    areas = preds.masks.reshape(len(preds.labels), -1).sum(axis=1)
    rows: list[dict[str, Any]] = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        sel = defect & (areas >= lo) & ((areas < hi) if hi is not None else True)
        if sel.any():
            rows.append({"min_px": lo, "max_px": hi, "n": int(sel.sum()),
                         "reject_rate": float(rejects(preds.scores[sel], threshold).mean())})
    return rows


def unseen_metrics(test: Predictions, unseen: Predictions, threshold: float) -> dict[str, Any]:
    """Defect kinds never simulated in training against the test good images: does the model generalise?"""
    good = test.select(test.labels == 0)
    bad = unseen.select(unseen.labels == 1)
    if bad.labels.size == 0 or good.labels.size == 0:
        return {}
    labels = np.r_[good.labels, bad.labels]
    scores = np.r_[good.scores, bad.scores]
    out: dict[str, Any] = {"image_auroc": image_auroc(labels, scores),
                           "detection_rate": float(rejects(bad.scores, threshold).mean()), "n": int(bad.labels.size)}
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(bad.kinds)):
        sel = np.array([k == kind for k in bad.kinds])
        per_kind[kind] = {"n": int(sel.sum()), "detection_rate": float(rejects(bad.scores[sel], threshold).mean()),
                          "image_auroc": image_auroc(np.r_[good.labels, bad.labels[sel]],
                                                     np.r_[good.scores, bad.scores[sel]])}
    out["per_kind"] = per_kind
    both = Predictions(scores, np.concatenate([good.maps, bad.maps]), np.concatenate([good.masks, bad.masks]),
                       np.concatenate([good.rois, bad.rois]), labels)
    try:
        out["pixel_auroc"] = pixel_auroc(both.maps, both.masks, both.rois)
        out["aupro"] = aupro(both.maps, both.masks, both.rois)
    except ValueError:
        pass  # unseen defects may carry no in-ROI mask pixels
    return out


# --------------------------------------------------------------------------------------------- splits
def calibration_and_test(root: str | Path, image_size: int) -> tuple[InspectionDataset, InspectionDataset, str]:
    """The calibration and test datasets of ``root``.

    linecam layout: ``val`` calibrates, ``test`` reports. MVTec AD has no val split: its test split is divided
    deterministically (every other image of each kind) into a calibration half and a reporting half, so the
    reported figures still never see the threshold's data. Returns (calib, test, how).
    """
    splits = list_splits(root)
    if "test" not in splits:
        raise DatasetError(f"{root}: no 'test' split")
    test_records = list_records(root, "test")
    if "val" in splits:
        return (InspectionDataset(list_records(root, "val"), image_size),
                InspectionDataset(test_records, image_size), "val")
    calib: list[SampleRecord] = []
    report: list[SampleRecord] = []
    seen: dict[str, int] = {}
    for r in test_records:
        n = seen.get(r.kind, 0)
        (calib if n % 2 == 0 else report).append(r)
        seen[r.kind] = n + 1
    return InspectionDataset(calib, image_size), InspectionDataset(report, image_size), "test_even_half"


def evaluate_model(
    scorer: BatchScorer, data_root: str | Path, image_size: int, *, batch_size: int = 8,
    fixed_mask: bool = False,
) -> tuple[dict[str, Any], dict[str, Predictions]]:
    """Score the calibration, test (and test_unseen) splits with ``scorer`` and compute every metric.

    ``fixed_mask`` only records whether the scorer applies a per-camera mask (it is the scorer's to apply)."""
    calib_ds, test_ds, how = calibration_and_test(data_root, image_size)
    preds = {"calibration": predict_split(scorer, calib_ds, batch_size=batch_size, progress=f"eval {how}"),
             "test": predict_split(scorer, test_ds, batch_size=batch_size, progress="eval test")}
    if "test_unseen" in list_splits(data_root):
        unseen = InspectionDataset(list_records(data_root, "test_unseen"), image_size)
        preds["test_unseen"] = predict_split(scorer, unseen, batch_size=batch_size, progress="eval test_unseen")
    metrics = compute_metrics(preds["test"], preds["calibration"], unseen=preds.get("test_unseen"))
    metrics["calibration_split"] = how
    metrics["fixed_mask"] = bool(fixed_mask)
    return metrics, preds


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) else f
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_metrics_json(path: str | Path, metrics: dict[str, Any]) -> None:
    """Write metrics as indented JSON (NaN -> null, numpy scalars -> Python)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def summary_line(
    metrics: dict[str, Any], keys: Iterable[str] = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
) -> str:
    """One-line summary of the headline metrics for logs and the CLI (with the 95% interval where there is one)."""
    parts = []
    for k in keys:
        if isinstance(metrics.get(k), float):
            ci = metrics.get(f"{k}_ci95")
            parts.append(f"{k}={metrics[k]:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    return "  ".join(parts)
