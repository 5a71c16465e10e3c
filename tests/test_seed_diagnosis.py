"""bench/seed_diagnosis.py: re-pooling is the line's head, the ensemble averages maps, false rejects are located."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from linecam.grdnet.evaluate import Predictions
from linecam.grdnet.scoring import score_maps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def diag() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_seed_diagnosis", ROOT / "bench" / "seed_diagnosis.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _preds(maps: np.ndarray, labels: list[int], kinds: list[str], roi: np.ndarray) -> Predictions:
    n = len(labels)
    scores, _ = score_maps(torch.from_numpy(maps)[:, None])
    return Predictions(scores.numpy(), maps, np.zeros_like(maps, dtype=bool), np.repeat(roi[None], n, axis=0),
                       np.array(labels), kinds, [f"img{i}.png" for i in range(n)])


def test_repooling_at_21_is_the_line_head_and_smaller_windows_favour_small_marks(diag: ModuleType) -> None:
    rng = np.random.default_rng(0)
    maps = (rng.random((3, 64, 80)) ** 6).astype(np.float32)
    head, _ = score_maps(torch.from_numpy(maps)[:, None])
    mine, _ = diag.pooled_scores(maps, 21)
    np.testing.assert_allclose(mine, head.numpy(), rtol=1e-6, atol=1e-7)
    # a 3x3 mark at probability 1 scores 9/441 under the head, 9/49 under a 7x7 window
    dot = np.zeros((1, 40, 40), np.float32)
    dot[0, 20:23, 20:23] = 1.0
    assert diag.pooled_scores(dot, 21)[0][0] == pytest.approx(9 / 441, rel=1e-5)
    assert diag.pooled_scores(dot, 7)[0][0] == pytest.approx(9 / 49, rel=1e-5)


def test_ensemble_averages_maps_and_rescores(diag: ModuleType) -> None:
    roi = np.ones((48, 48), bool)
    a = np.zeros((2, 48, 48), np.float32)
    b = np.zeros((2, 48, 48), np.float32)
    a[0, 10:30, 10:30] = 1.0  # member A hallucinates on image 0
    b[1, 5:25, 5:25] = 0.5
    members = [{"test": _preds(a, [0, 1], ["good", "spot"], roi)}, {"test": _preds(b, [0, 1], ["good", "spot"], roi)}]
    avg = diag.averaged(members)["test"]
    np.testing.assert_allclose(avg.maps, (a + b) / 2)
    expect, _ = score_maps(torch.from_numpy((a + b) / 2)[:, None])
    np.testing.assert_allclose(avg.scores, expect.numpy(), rtol=1e-6)
    assert avg.scores[0] < members[0]["test"].scores[0]  # one member's blob is halved by the other
    assert list(avg.labels) == [0, 1] and avg.kinds == ["good", "spot"]


def test_false_rejects_name_the_image_and_locate_the_peak(diag: ModuleType) -> None:
    roi = np.zeros((64, 64), bool)
    roi[16:48, 16:48] = True
    maps = np.zeros((3, 64, 64), np.float32)
    maps[0, 30:40, 30:40] = 0.9  # good image, blob deep inside the ROI
    maps[1, 0:10, 0:10] = 0.9  # out-of-ROI product, blob in the corner, far outside the ROI
    maps[2, 30:40, 30:40] = 0.9  # a real defect: never a false reject
    p = _preds(maps, [0, 0, 1], ["good", "outside_roi", "spot"], roi)
    rows = diag.false_rejects(p, threshold=0.05)
    assert [r["path"] for r in rows] == ["img0.png", "img1.png"]
    assert rows[0]["peak_inside_roi"] and rows[0]["peak_to_roi_edge_px"] > 0
    assert not rows[1]["peak_inside_roi"] and rows[1]["peak_to_roi_edge_px"] < 0
    assert rows[0]["raw_max_in_window"] == pytest.approx(0.9) and rows[0]["pixels_over_half_in_window"] > 50
    assert diag.false_rejects(p, threshold=0.9) == []
