"""bench/peers: the side-by-side with anomalib GANomaly and DRAEM.

The default suite checks the parts that decide the figures and need no anomalib: the per-camera ROI the peers
are masked with, the masked re-scoring, and the table. The slow test runs ``run.py --smoke`` end to end in the
peers' own venv (``bash bench/peers/setup.sh``): two peers trained, exported to OpenVINO and scored by
linecam's metric code. CI builds that venv first and sets ``LINECAM_REQUIRE_PEERS=1``, so a missing venv fails
there instead of skipping.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from linecam.grdnet.evaluate import Predictions, compute_metrics

BENCH = Path(__file__).resolve().parents[1] / "bench" / "peers"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"peers_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peer() -> ModuleType:
    return _load("peer")


@pytest.fixture(scope="module")
def run() -> ModuleType:
    return _load("run")


def _preds(maps: np.ndarray, labels: list[int], kinds: list[str]) -> Predictions:
    n = len(labels)
    masks = np.zeros_like(maps, dtype=bool)
    rois = np.ones_like(maps, dtype=bool)
    return Predictions(maps.reshape(n, -1).max(axis=1), maps, masks, rois, np.array(labels), kinds,
                       [f"{i}.png" for i in range(n)])


def test_roi_mask_silences_a_peer_outside_the_region(peer: ModuleType) -> None:
    """A peer that fires outside the ROI rejects out-of-ROI products; masked, it no longer does, and a defect
    inside the region still scores."""
    size = 32
    roi = np.zeros((size, size), np.float32)
    roi[8:24, 8:24] = 1
    maps = np.full((6, size, size), 0.05, np.float32)
    maps[2, 12, 12] = 0.9  # defect inside the ROI
    maps[3, 14, 16] = 0.8  # defect inside the ROI
    maps[4, 1, 1] = 0.95  # anomaly outside the ROI (good for the line)
    maps[5, 30, 2] = 0.85  # anomaly outside the ROI (good for the line)
    labels = [0, 0, 1, 1, 0, 0]
    kinds = ["good", "good", "spot", "spot", "outside_roi", "outside_roi"]
    raw = _preds(maps, labels, kinds)
    raw.masks[2, 12, 12] = raw.masks[3, 14, 16] = True
    masked = peer.masked(raw, roi)
    assert raw.scores[4] > raw.scores[2] and masked.scores[4] == pytest.approx(0.05)
    assert masked.scores[2] == pytest.approx(0.9) and masked.scores[3] == pytest.approx(0.8)
    threshold = 0.5
    assert compute_metrics(raw, None, threshold=threshold)["outside_roi_false_reject_rate"] == 1.0
    m = compute_metrics(masked, None, threshold=threshold)
    assert m["outside_roi_false_reject_rate"] == 0.0 and m["escape_rate"] == 0.0


def test_textures_stand_in_for_dtd(peer: ModuleType, tmp_path: Path) -> None:
    """DRAEM's augmenter globs image files under dtd_dir: the stand-in must be real, varied images."""
    folder = peer.make_textures(tmp_path / "dtd", n=8, size=64)
    images = [cv2.imread(str(p)) for p in sorted(folder.glob("*.png"))]
    assert len(images) == 8 and all(img is not None and img.shape == (64, 64, 3) for img in images)
    assert len({round(float(img.std()), 1) for img in images}) > 4  # not eight copies of one texture
    assert all(img.std() > 1 for img in images)


def test_calibrated_roi_is_written_by_linecam_calibrate(run: ModuleType, tmp_path: Path) -> None:
    """The per-camera ROI is the majority of the train ROIs, written by ``linecam calibrate roi``."""
    data = tmp_path / "data"
    for i, x0 in enumerate((10, 12, 14)):
        roi = np.zeros((48, 48), np.uint8)
        roi[10:30, x0:x0 + 20] = 255
        for sub in ("roi/train/good", "train/good"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / "roi/train/good" / f"{i:04d}.png"), roi)
        cv2.imwrite(str(data / "train/good" / f"{i:04d}.png"), np.full((48, 48, 3), 128, np.uint8))
    path = run.calibrated_roi(data, tmp_path / "cal")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127
    assert mask.shape == (48, 48)
    assert mask[20, 13] and mask[20, 31]  # inside 2 of the 3 ROIs
    assert not mask[20, 11] and not mask[20, 33]  # inside only 1 of 3
    assert not mask[5, 20]


def test_table_marks_missing_figures(run: ModuleType) -> None:
    """A peer without an anomaly map shows n/a for pixel AUROC and the masked rate, never a made-up number."""
    deploy = {"runtime": "openvino", "precision": "bf16", "batch1": {"median_ms": 12.34}}
    metrics = {"image_auroc": 0.91, "image_auroc_ci95": [0.88, 0.94], "pixel_auroc": None,
               "per_kind": {"good": {"reject_rate": 0.03}}, "outside_roi_false_reject_rate": 0.2,
               "escape_rate": 0.1, "unseen": {"image_auroc": 0.8}}
    row = run.summary("anomalib ganomaly", metrics, None, 1.5, "0.5 epochs", deploy)
    md = run.table([row]).splitlines()
    assert len(md) == 3
    cells = [c.strip() for c in md[2].strip("|").split("|")]
    assert cells[1] == "0.910 (0.880-0.940)" and cells[2] == "n/a" and cells[3] == "3.0%"
    assert cells[4] == "20.0% (n/a)" and cells[-1] == "12.3 (openvino bf16)"


PEERS_PYTHON = BENCH / ".venv" / "bin" / "python"


@pytest.mark.slow
def test_smoke_run_trains_exports_and_scores_both_peers(tmp_path: Path) -> None:
    if not PEERS_PYTHON.exists():
        if os.environ.get("LINECAM_REQUIRE_PEERS") == "1":
            pytest.fail(f"{PEERS_PYTHON} missing: bash bench/peers/setup.sh did not run")
        pytest.skip("no peers' venv (bash bench/peers/setup.sh)")
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--smoke", "--work", str(tmp_path / "work"),
                           "--out", str(out)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] and res["budget_measured"] and res["budget_s"] > 0
    assert res["rows"][0]["model"].startswith("linecam demo/")
    assert [r["model"].split()[1] for r in res["rows"][1:]] == ["ganomaly", "draem"]
    for name in ("ganomaly", "draem"):
        p = res["peers"][name]["equal_budget"]
        assert p["training"]["images_seen"] == 16 and p["training"]["stopped_by"] == "epochs"
        assert p["deployment"]["runtime"] == "openvino" and p["deployment"]["batch1"]["median_ms"] > 0
        m = p["no_mask"]
        assert 0 <= m["image_auroc"] <= 1 and m["calibration_split"] == "val"
        assert m["n_test"] == 8 + 5 * 3 and "unseen" in m
        assert res["peers"][name]["authors_epochs"]["estimated_s"] > 0
    assert res["peers"]["ganomaly"]["equal_budget"]["roi_mask"] is None
    assert res["peers"]["ganomaly"]["equal_budget"]["no_mask"]["pixel_auroc"] is None
    draem = res["peers"]["draem"]["equal_budget"]
    assert draem["has_anomaly_map"] and draem["roi_mask"]["fixed_mask"] is True
    assert 0 <= draem["no_mask"]["pixel_auroc"] <= 1
    assert "| linecam demo/" in res["table_md"]
