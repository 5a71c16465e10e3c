"""Calibration of a camera: the ROI mask from a reference image, and the threshold from a calibration split.

Why here and not in the trainer: a threshold belongs to a camera position *and* a model version, so it is
written into ``calibration/<station>/<camera>/`` (next to ``regions.yaml``, which the worker reads) with the
version, the date, what data chose it and the confusion figures it gives on that data. The data is the
dataset's ``val`` split: never used for training (the trainer holds ``val`` out) nor for the reported test
figures. The decision rule is the worker's: reject when score > threshold.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from linecam import decision
from linecam.decision import rejects
from linecam.files import atomic_write

THRESHOLD_FILE = "threshold.json"
SCORES_PLOT = "scores.png"
ROI_FILE = "roi.png"
ROI_PREVIEW = "roi_preview.png"
CALIBRATION_SPLIT = "val"


class CalibrationError(ValueError):
    """Calibration input that cannot be used; the message names the file, split or option."""


@dataclass(frozen=True)
class Confusion:
    """Counts and rates at one threshold with the worker's rule (reject when score > threshold)."""

    true_reject: int
    false_reject: int
    true_accept: int
    escape: int

    @property
    def false_reject_rate(self) -> float:
        n = self.false_reject + self.true_accept
        return self.false_reject / n if n else float("nan")

    @property
    def escape_rate(self) -> float:
        n = self.true_reject + self.escape
        return self.escape / n if n else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"true_reject": self.true_reject, "false_reject": self.false_reject, "true_accept": self.true_accept,
                "escape": self.escape, "false_reject_rate": _finite(self.false_reject_rate),
                "escape_rate": _finite(self.escape_rate)}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Confusion:
    labels = np.asarray(labels).astype(bool)
    reject = rejects(scores, threshold)
    return Confusion(int((reject & labels).sum()), int((reject & ~labels).sum()), int((~reject & ~labels).sum()),
                     int((~reject & labels).sum()))


def threshold_for_frr(labels: np.ndarray, scores: np.ndarray, target_frr: float) -> float:
    """:func:`linecam.decision.threshold_for_frr`, its errors as CalibrationError."""
    try:
        return decision.threshold_for_frr(labels, scores, target_frr)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None


def threshold_for_escape(labels: np.ndarray, scores: np.ndarray, target_escape: float) -> float:
    """:func:`linecam.decision.threshold_for_escape`, its errors as CalibrationError."""
    try:
        return decision.threshold_for_escape(labels, scores, target_escape)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None


def score_split(model_dir: Path, data: Path, split: str = CALIBRATION_SPLIT, batch_size: int = 8,
                backend: str = "auto", precision: str = "auto") -> tuple[np.ndarray, np.ndarray, list[str], Any]:
    """(labels, scores, kinds, card) of every image of ``split``, scored without a mask by the backend and
    precision the line runs here (``auto``: as the worker decides it), so the threshold means the same there.
    The card gets ``scored_with`` (backend and precision) as an extra attribute for the record."""
    from linecam.backends import create_detector
    from linecam.backends.evaluation import detector_scorer
    from linecam.grdnet.datasets import DatasetError, InspectionDataset, list_records, list_splits
    from linecam.grdnet.evaluate import predict_split
    from linecam.grdnet.modeldir import read_card

    card = read_card(model_dir)
    try:
        splits = list_splits(data)
        if split not in splits:
            raise CalibrationError(f"{data}: no '{split}' split (splits: {splits}); the calibration set must be "
                                   "held out of training and test")
        records = list_records(data, split)
    except DatasetError as exc:
        raise CalibrationError(str(exc)) from None
    detector = create_detector(model_dir, backend, **({} if precision == "auto" else {"precision": precision}))
    try:
        preds = predict_split(detector_scorer(detector), InspectionDataset(records, card.profile.image_size),
                              batch_size=batch_size, progress=f"calibrate: scoring {split}")
    finally:
        detector.close()
    scored_with = f"{detector.backend} {getattr(detector, 'precision', '')}".strip()
    if not np.all(np.isfinite(preds.scores)):
        bad = [p for p, s in zip(preds.paths, preds.scores, strict=True) if not math.isfinite(float(s))]
        raise CalibrationError(f"non-finite scores for {bad[:3]}")
    return preds.labels, preds.scores.astype(np.float64), list(preds.kinds), card.model_copy(
        update={"scored_with": scored_with})


def plot_scores(path: Path, labels: np.ndarray, scores: np.ndarray, threshold: float, title: str) -> None:
    """Histogram of good and defective scores with the threshold line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(bool)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    lo, hi = float(scores.min()), float(scores.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40).tolist()
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"good (n={int((~labels).sum())})", color="tab:green")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"defect (n={int(labels.sum())})", color="tab:red")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.5g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_regions_threshold(folder: Path, threshold: float, model_name: str, version: str,
                            region: str | None) -> dict[str, float | None]:
    """Record the threshold of model ``version`` for the region(s) inspected by ``model_name`` (or the region
    named ``region``) under ``thresholds`` in ``folder/regions.yaml``; create a one-region full-frame file
    when there is none. Returns, per region written, the threshold it had for that version before (None: none),
    so the caller can say what changed.

    Why per version: a retrained model scores on its own scale, so a threshold calibrated for version 1 must
    not silently stay in force after a hot swap to version 2; the worker picks the entry of the version it
    runs and falls back to that version's card.
    """
    from linecam.config.regions import REGIONS_FILE, load_regions

    path = folder / REGIONS_FILE
    previous: dict[str, float | None] = {}
    if not path.is_file():
        doc: dict[str, Any] = {"regions": [{"name": region or "product", "box": None, "model": model_name,
                                            "threshold": None, "thresholds": {version: threshold}}]}
        previous[region or "product"] = None
    else:
        load_regions(folder)  # validates, names the file on error
        doc = yaml.safe_load(path.read_text())
        hits = [r for r in doc["regions"] if (r["name"] == region if region else r["model"] == model_name)]
        if not hits:
            which = f"named {region!r}" if region else f"using model {model_name!r}"
            raise CalibrationError(f"{path}: no region {which}")
        for r in hits:
            previous[r["name"]] = (r.get("thresholds") or {}).get(version)
            r["thresholds"] = {**(r.get("thresholds") or {}), version: threshold}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(doc, sort_keys=False).encode(), durable=True)
    return previous


def write_card_threshold(model_dir: Path, threshold: float) -> float | None:
    """Write ``threshold`` into the model card (the threshold the line uses where regions.yaml names none);
    returns the card's previous threshold. Refused for a published version (see ``modeldir.write_card``)."""
    from linecam.grdnet.modeldir import ModelDirError, read_card, write_card

    card = read_card(model_dir)
    try:
        write_card(model_dir, card.model_copy(update={"threshold": float(threshold)}))
    except ModelDirError as exc:
        raise CalibrationError(str(exc)) from None
    return card.threshold


def calibrate_threshold(model_dir: Path, data: Path, out: Path | None, target_frr: float | None = None,
                        target_escape: float | None = None, model_name: str | None = None,
                        region: str | None = None, batch_size: int = 8, card: bool = False,
                        backend: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """Score the calibration split and choose the threshold; write threshold.json, scores.png and regions.yaml
    into ``out`` (a camera's calibration folder) and, with ``card``, the threshold into the model card.

    The record returned says what each write replaced: ``previous`` (region -> the version's former threshold
    in regions.yaml) and ``card_previous`` (the card's former threshold).
    """
    if (target_frr is None) == (target_escape is None):
        raise CalibrationError("give exactly one of --target-frr or --target-escape")
    if out is None and not card:
        raise CalibrationError("nothing to write: give --out (a camera's calibration folder) and/or --card")
    if card:
        from linecam.grdnet.modeldir import published_record

        if published_record(model_dir) is not None:
            raise CalibrationError(f"{model_dir} is a published model version: its card is never rewritten; "
                                   "calibrate a working copy with --card and publish it as a new version, or "
                                   "write the camera's threshold with --out")
    labels, scores, kinds, model_card = score_split(Path(model_dir), Path(data), batch_size=batch_size,
                                                    backend=backend, precision=precision)
    if target_frr is not None:
        threshold, target = threshold_for_frr(labels, scores, target_frr), {"false_reject_rate": target_frr}
    else:
        assert target_escape is not None
        threshold, target = threshold_for_escape(labels, scores, target_escape), {"escape_rate": target_escape}
    conf = confusion(labels, scores, threshold)
    name = model_name or model_card.name
    record = {
        "threshold": threshold, "rule": decision.RULE, "target": target,
        "model": {"name": model_card.name, "version": model_card.version,
                  "path": str(Path(model_dir).resolve()), "scored_with": getattr(model_card, "scored_with", "")},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"path": str(Path(data).resolve()), "split": CALIBRATION_SPLIT, "n": int(labels.size),
                 "n_good": int((labels == 0).sum()), "n_defect": int((labels == 1).sum()),
                 "kinds": {k: kinds.count(k) for k in sorted(set(kinds))}},
        "scores": {"good_max": _stat(scores[labels == 0], np.max), "defect_min": _stat(scores[labels == 1], np.min)},
        "confusion": conf.as_dict(), "region_model": name, "region": region,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / THRESHOLD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        plot_scores(out / SCORES_PLOT, labels, scores, threshold,
                    f"{model_card.name}/{model_card.version} on {Path(data).name}/{CALIBRATION_SPLIT}")
        record["previous"] = write_regions_threshold(out, threshold, name, str(model_card.version), region)
    if card:
        record["card_previous"] = write_card_threshold(Path(model_dir), threshold)
    return record


def _stat(values: np.ndarray, fn: Any) -> float | None:
    return float(fn(values)) if values.size else None


# --------------------------------------------------------------------------------------------- ROI
def parse_polygon(text: str) -> np.ndarray:
    """``"x,y x,y x,y ..."`` -> (K, 2) int32 points; at least three."""
    try:
        pts = [tuple(int(round(float(v))) for v in p.split(",")) for p in text.split()]
    except ValueError:
        raise CalibrationError(f"--polygon {text!r}: expected 'x,y x,y x,y ...' numbers") from None
    if len(pts) < 3 or any(len(p) != 2 for p in pts):
        raise CalibrationError(f"--polygon {text!r}: needs at least three 'x,y' points")
    return np.array(pts, dtype=np.int32)


def make_roi(image_path: Path, out: Path, polygon: str | None = None, mask_path: Path | None = None) -> Path:
    """Write ``out/roi.png`` (0/255, the reference image's size) and ``out/roi_preview.png`` (ROI tinted
    green, outline drawn) so a person can check it. Returns the ROI path."""
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise CalibrationError(f"{image_path}: reference image not found or unreadable")
    h, w = image.shape[:2]
    if (polygon is None) == (mask_path is None):
        raise CalibrationError("give exactly one of --polygon or --mask")
    if polygon is not None:
        pts = parse_polygon(polygon)
        outside = [tuple(p) for p in pts if not (0 <= p[0] < w and 0 <= p[1] < h)]
        if outside:
            raise CalibrationError(f"--polygon: points {outside} lie outside the {w}x{h} image {image_path}")
        roi = np.zeros((h, w), np.uint8)
        cv2.fillPoly(roi, [pts], 255)
    else:
        assert mask_path is not None
        m = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise CalibrationError(f"{mask_path}: mask not found or unreadable")
        if m.shape != (h, w):
            raise CalibrationError(f"{mask_path}: mask is {m.shape[1]}x{m.shape[0]}, reference image is {w}x{h}")
        roi = np.where(m > 127, 255, 0).astype(np.uint8)
    if not roi.any():
        raise CalibrationError("the ROI is empty")
    out.mkdir(parents=True, exist_ok=True)
    roi_path = out / ROI_FILE
    cv2.imwrite(str(roi_path), roi)
    preview = image.copy()
    tint = preview.copy()
    tint[roi > 0] = (0.5 * tint[roi > 0] + np.array([0, 127, 0])).astype(np.uint8)
    preview = cv2.addWeighted(tint, 0.7, preview, 0.3, 0)
    contours, _ = cv2.findContours(roi, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(preview, contours, -1, (0, 255, 0), 1)
    cv2.imwrite(str(out / ROI_PREVIEW), preview)
    return roi_path
