"""Threshold choice with the worker's rule (reject when score > t), ROI files, regions.yaml update."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from linecam.cli import main
from linecam.config.regions import load_regions
from linecam.lifecycle import calibrate as cal


def test_threshold_for_frr_and_escape_hit_their_targets() -> None:
    labels = np.r_[np.zeros(100), np.ones(20)].astype(int)
    scores = np.r_[np.linspace(0.0, 0.5, 100), np.linspace(0.3, 0.9, 20)]
    t = cal.threshold_for_frr(labels, scores, 0.01)
    c = cal.confusion(labels, scores, t)
    assert c.false_reject == 1 and c.false_reject_rate == pytest.approx(0.01)
    t0 = cal.threshold_for_frr(labels, scores, 0.0)
    assert cal.confusion(labels, scores, t0).false_reject == 0 and t0 == pytest.approx(0.5)
    e = cal.threshold_for_escape(labels, scores, 0.0)
    ce = cal.confusion(labels, scores, e)
    assert ce.escape == 0 and ce.true_reject == 20 and e < 0.3
    with pytest.raises(cal.CalibrationError, match="no defective images"):
        cal.threshold_for_escape(np.zeros(5), np.ones(5), 0.0)


def test_regions_threshold_is_written_into_existing_file(tmp_path: Path) -> None:
    (tmp_path / "regions.yaml").write_text(yaml.safe_dump({"regions": [
        {"name": "top", "box": [0, 0, 10, 10], "model": "demo"},
        {"name": "cap", "box": [0, 10, 10, 10], "model": "other", "threshold": 0.3}]}))
    cal.write_regions_threshold(tmp_path, 0.42, "demo", "1", None)
    cal.write_regions_threshold(tmp_path, 0.17, "demo", "2", None)
    regions = {r.name: r for r in load_regions(tmp_path)}
    assert regions["top"].thresholds == {"1": 0.42, "2": 0.17} and regions["top"].threshold is None
    assert regions["cap"].thresholds == {} and regions["cap"].threshold == 0.3
    # The worker's rule: the running version's own entry, else the pinned value, else the card.
    assert regions["top"].threshold_for("2", 0.9)[0] == 0.17
    assert regions["top"].threshold_for("3", 0.9)[0] == 0.9
    assert regions["cap"].threshold_for("2", 0.9)[0] == 0.3
    with pytest.raises(cal.CalibrationError, match="no region"):
        cal.write_regions_threshold(tmp_path, 0.1, "nothere", "1", None)


def test_roi_from_polygon_and_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = tmp_path / "ref.png"
    cv2.imwrite(str(ref), np.full((40, 60, 3), 128, np.uint8))
    assert main(["calibrate", "roi", "--image", str(ref), "--polygon", "10,5 49,5 49,34 10,34",
                 "--out", str(tmp_path / "cam")]) == 0
    roi = cv2.imread(str(tmp_path / "cam" / "roi.png"), cv2.IMREAD_GRAYSCALE)
    assert roi.shape == (40, 60) and set(np.unique(roi)) == {0, 255}
    assert int((roi > 0).sum()) == 40 * 30  # inclusive rectangle 10..49 x 5..34
    preview = cv2.imread(str(tmp_path / "cam" / "roi_preview.png"))
    assert preview.shape == (40, 60, 3) and not np.array_equal(preview[20, 30], preview[0, 0])
    assert main(["calibrate", "roi", "--image", str(ref), "--polygon", "10,5 99,5 49,34",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "outside the 60x40 image" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "m.png"), roi[:20])
    assert main(["calibrate", "roi", "--image", str(ref), "--mask", str(tmp_path / "m.png"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "mask is 60x20" in capsys.readouterr().err


def test_calibrate_threshold_needs_a_val_split(tmp_path: Path, source_models: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data" / "test" / "good").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "data" / "test" / "good" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    rc = main(["calibrate", "threshold", "--model", str(source_models[0]), "--data", str(tmp_path / "data"),
               "--target-frr", "0.01", "--out", str(tmp_path / "cal")])
    assert rc == 2
    assert "no 'val' split" in capsys.readouterr().err


def test_calibrate_threshold_on_a_synthetic_val_split(tmp_path: Path, source_models: tuple[Path, Path]) -> None:
    import json

    data = tmp_path / "ds"
    assert main(["synth", "--out", str(data), "--size", "64", "--workers", "1",
                 "--counts", "train=0,val=8,val/*=1,test=0,test/*=0,test_unseen=0"]) == 0
    out = tmp_path / "calibration" / "s1" / "cam1"
    assert main(["calibrate", "threshold", "--model", str(source_models[0]), "--data", str(data),
                 "--target-frr", "0.0", "--model-name", "demo", "--out", str(out)]) == 0
    rec = json.loads((out / "threshold.json").read_text())
    assert rec["model"]["version"] == "seed0" and rec["data"]["split"] == "val"
    assert rec["data"]["n_good"] + rec["data"]["n_defect"] == rec["data"]["n"] > 8
    assert rec["confusion"]["false_reject"] == 0 and rec["threshold"] >= rec["scores"]["good_max"]
    assert [(r.model, r.thresholds) for r in load_regions(out)] == [("demo", {"seed0": rec["threshold"]})]
    assert cv2.imread(str(out / "scores.png")) is not None
