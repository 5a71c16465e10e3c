"""Evaluator metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from linecam.grdnet.evaluate import (
    Predictions,
    aupro,
    auroc_interval,
    calibrate,
    compute_metrics,
    detection_by_area,
    f1_max,
    image_auroc,
    pixel_auroc,
    rate_interval,
    rates_at,
    summary_line,
    threshold_for_escape,
    write_metrics_json,
)


def test_image_auroc_and_f1_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + 0.8 * labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    f1, thr = f1_max(labels, scores)
    # Brute force over every candidate threshold.
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1 == pytest.approx(brute)
    assert f1_score(labels, scores >= thr) == pytest.approx(f1)


def test_pixel_auroc_ignores_pixels_outside_roi() -> None:
    maps = np.zeros((1, 4, 4))
    masks = np.zeros((1, 4, 4), bool)
    maps[0, 0, 0] = 0.9
    masks[0, 0, 0] = True  # detected defect inside ROI
    maps[0, 3, 3] = 1.0  # hot good pixel outside the ROI: must not count
    rois = np.ones((1, 4, 4), bool)
    rois[0, 3, 3] = False
    assert pixel_auroc(maps, masks, rois) == 1.0
    assert pixel_auroc(maps, masks) < 1.0


def _brute_aupro(maps: np.ndarray, regions: list[np.ndarray], neg: np.ndarray, limit: float) -> float:
    ts = np.unique(maps)[::-1]
    fprs, pros = [0.0], [0.0]
    for t in ts:
        hit = maps >= t
        fprs.append(hit[neg].mean())
        pros.append(np.mean([hit[r].mean() for r in regions]))
    fprs_a, pros_a = np.array(fprs), np.array(pros)
    grid = np.linspace(0, limit, 20001)
    return float(np.trapezoid(np.interp(grid, fprs_a, pros_a), grid) / limit)


def test_aupro_hand_case() -> None:
    # Two images; one big region (16 px) half detected, one small region (1 px) fully detected.
    maps = np.zeros((2, 8, 8))
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 0:4, 0:4] = True
    maps[0, 0:2, 0:4] = 0.8  # 8 of 16 pixels of region A score high
    masks[1, 6, 6] = True
    maps[1, 6, 6] = 0.9
    maps[1, 0, 0] = 0.85  # one false positive among 127 good pixels
    # Thresholds: 0.9 -> PRO 0.5 (B) FPR 0; 0.85 -> PRO .5, FPR 1/111; 0.8 -> PRO .75; 0 -> PRO 1, FPR 1.
    # The curve reaches PRO 0.75 at FPR 1/111 and stays there until t=0 (FPR jumps to 1).
    n_neg = 128 - 17
    assert (~masks).sum() == n_neg
    got = aupro(maps, masks, fpr_limit=0.3)
    f1 = 1 / n_neg
    # Trapezoid: (0,0.5)->(f1,0.5) [t=.85] ->(f1,0.75) [t=.8] -> (1, 1) interpolated at 0.3.
    p_at = 0.75 + (1 - 0.75) * (0.3 - f1) / (1 - f1)
    expected = (0.5 * f1 + (0.75 + p_at) / 2 * (0.3 - f1)) / 0.3
    assert got == pytest.approx(expected, rel=1e-9)
    regions = [masks[0].copy(), masks[1].copy()]
    full = [np.zeros_like(masks) for _ in regions]
    full[0][0] = regions[0]
    full[1][1] = regions[1]
    assert got == pytest.approx(_brute_aupro(maps, full, ~masks, 0.3), abs=1e-4)


def test_aupro_random_vs_bruteforce_and_roi() -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 16)).round(2)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:5, 2:5] = True
    masks[0, 10:12, 10:15] = True
    masks[2, 0:3, 13:16] = True
    maps[masks] += 0.3
    from scipy import ndimage

    regions = []
    for i in range(3):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            r = np.zeros_like(masks)
            r[i] = lab == k
            regions.append(r)
    assert len(regions) == 3
    got = aupro(maps, masks, fpr_limit=0.3)
    assert got == pytest.approx(_brute_aupro(maps, regions, ~masks, 0.3), abs=2e-4)
    # Perfect separation -> 1.
    perfect = masks.astype(float)
    assert aupro(perfect, masks) == pytest.approx(1.0)


def test_escape_threshold_and_rates() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.5, 0.7, 0.8, 0.9])
    # The line's one rule (linecam.decision): reject when score > threshold, so the threshold that lets no
    # defect pass lies just below the lowest defect score, as linecam calibrate chooses it.
    t0 = threshold_for_escape(labels, scores, 0.0)
    assert t0 == np.nextafter(0.5, -np.inf)
    r = rates_at(labels, scores, t0)
    assert r == {"accuracy": pytest.approx(7 / 8), "false_reject_rate": 0.25, "escape_rate": 0.0}
    t25 = threshold_for_escape(labels, scores, 0.25)  # one of four defects may pass
    assert t25 == np.nextafter(0.7, -np.inf) and rates_at(labels, scores, t25)["escape_rate"] == 0.25
    assert rates_at(labels, scores, 0.7)["escape_rate"] == 0.5  # a score equal to the threshold is accepted
    from linecam.lifecycle.calibrate import threshold_for_escape as calibrate_escape

    assert calibrate_escape(labels, scores, 0.25) == t25  # one function: eval and calibrate agree


def _preds(labels: list[int], scores: list[float], kinds: list[str]) -> Predictions:
    n = len(labels)
    maps = np.zeros((n, 8, 8), np.float32)
    masks = np.zeros((n, 8, 8), bool)
    rois = np.ones((n, 8, 8), bool)
    rois[:, :, 4:] = False
    for i, (lab, s, k) in enumerate(zip(labels, scores, kinds, strict=True)):
        if lab:
            masks[i, 1:3, 1:3] = True
            maps[i, 1:3, 1:3] = s
        if k == "outside_roi":
            masks[i, 5:7, 5:7] = True  # defect outside ROI, image is good for the line
    return Predictions(np.array(scores), maps, masks, rois, np.array(labels), kinds, [f"{i}.png" for i in range(n)])


def test_compute_metrics_thresholds_come_from_calibration(tmp_path: Path) -> None:
    calib = _preds([0, 0, 1, 1], [0.1, 0.3, 0.4, 0.9], ["good", "good", "scratch", "scratch"])
    test = _preds([0, 0, 0, 1, 1], [0.2, 0.35, 0.95, 0.5, 0.45], ["good", "good", "outside_roi", "scratch", "scratch"])
    cal = calibrate(calib)
    just_below = np.nextafter(0.4, -np.inf)  # the line rejects score > threshold: 0.4 itself is rejected
    assert cal["threshold"] == just_below  # best F1 on calibration (perfect split at 0.4)
    m = compute_metrics(test, calib)
    assert m["threshold"] == just_below  # not re-chosen on test
    assert m["image_auroc"] == pytest.approx(roc_auc_score(test.labels, test.scores))
    assert m["outside_roi_false_reject_rate"] == 1.0  # the one outside_roi image scores 0.95 >= 0.4
    assert m["outside_roi_false_reject_rate_ci95"] == pytest.approx([0.025, 1.0])  # 1 of 1: lower = 0.025
    lo, hi = m["image_auroc_ci95"]
    assert 0.0 <= lo <= m["image_auroc"] <= hi <= 1.0
    assert f"image_auroc={m['image_auroc']:.4f} [{lo:.3f}, {hi:.3f}]" in summary_line(m)
    # Both test defects have 4-pixel masks and score >= 0.4 (0.5, 0.45).
    assert m["by_defect_area"] == [{"min_px": 0, "max_px": 16, "n": 2, "reject_rate": 1.0}]
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["false_reject_rate"] == pytest.approx(1 / 3)
    assert m["false_reject_rate_at_escape_0"] == pytest.approx(1 / 3)
    for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= m[k] <= 1.0
    out = tmp_path / "m.json"
    write_metrics_json(out, m)
    assert json.loads(out.read_text())["threshold"] == just_below
    with pytest.raises(ValueError, match="calibration split or an explicit threshold"):
        compute_metrics(test, None)


def test_single_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="both good and defective"):
        image_auroc(np.zeros(4), np.arange(4.0))


def test_auroc_interval_brackets_the_estimate_and_narrows_with_more_images() -> None:
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.r_[np.zeros(n, int), np.ones(n, int)]
        return labels, rng.normal(size=2 * n) + 1.0 * labels

    small, large = sample(50), sample(2000)
    lo_s, hi_s = auroc_interval(*small)
    lo_l, hi_l = auroc_interval(*large)
    assert lo_s < image_auroc(*small) < hi_s
    assert lo_l < image_auroc(*large) < hi_l
    # The true AUROC of a unit shift between unit normals is Phi(1 / sqrt 2) = 0.760.
    assert lo_l < 0.760 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~sqrt(40) narrower
    assert auroc_interval(*small) == (lo_s, hi_s)  # reproducible: fixed seed
    # Perfect separation stays perfect in every stratified resample (both classes always present).
    assert auroc_interval(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == (1.0, 1.0)
    with pytest.raises(ValueError, match="level"):
        auroc_interval(*small, level=1.5)


def test_rate_interval_is_clopper_pearson() -> None:
    # 0 of 25: the exact upper bound solves (1 - p)^25 = 0.025, so zero rejects do not show a rate <= 2%.
    lo, hi = rate_interval(0, 25)
    assert lo == 0.0
    assert hi == pytest.approx(1 - 0.025 ** (1 / 25), rel=1e-6)
    assert hi > 0.13
    lo, hi = rate_interval(25, 25)
    assert (lo, hi) == (pytest.approx(0.025 ** (1 / 25), rel=1e-6), 1.0)
    lo, hi = rate_interval(1, 25)
    assert lo < 0.04 < hi
    with pytest.raises(ValueError, match="count <= total"):
        rate_interval(3, 2)


def test_detection_by_area_bins_defects_by_ground_truth_area() -> None:
    n = 5
    masks = np.zeros((n, 20, 20), bool)
    masks[1, :2, :2] = True  # 4 px
    masks[2, :4, :5] = True  # 20 px
    masks[3, :4, :4] = True  # 16 px: the lower edge belongs to the bin above
    masks[4, :, :] = True  # 400 px: open last bin
    labels = np.array([0, 1, 1, 1, 1])
    scores = np.array([0.9, 0.1, 0.6, 0.2, 0.7])
    preds = Predictions(scores, np.zeros((n, 20, 20), np.float32), masks, np.ones((n, 20, 20), bool), labels,
                        ["good", "spot", "spot", "spot", "fibre"], [f"{i}.png" for i in range(n)])
    rows = detection_by_area(preds, 0.5)
    assert rows == [
        {"min_px": 0, "max_px": 16, "n": 1, "reject_rate": 0.0},
        {"min_px": 16, "max_px": 32, "n": 2, "reject_rate": 0.5},
        {"min_px": 256, "max_px": None, "n": 1, "reject_rate": 1.0},
    ]  # the good image (score 0.9) is not a defect and is not counted
