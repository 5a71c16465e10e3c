"""One inference path: ``linecam eval``, ``predict`` and ``calibrate`` score through the backends' Detector.

The figures of one model on one dataset must not depend on which fp32 backend scored them, the raw probability
maps the pixel metrics read must be the network's own, and the outputs must name the backend that made them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from linecam.backends import create_detector
from linecam.backends.evaluation import evaluate_detector
from linecam.backends.export import export_graph
from linecam.grdnet.modeldir import load_model_dir, register_file

from .conftest import TEST_SIZE, noise_images

BACKENDS = ["torch-cpu", "onnxruntime", *(["openvino"] if __import__("importlib").util.find_spec("openvino")
                                          else [])]


def _raw_prob(model_dir: Path, images: np.ndarray) -> np.ndarray:
    model, _ = load_model_dir(model_dir)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return model(x)[:, 0].numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_returns_the_networks_raw_probability_map(exported_model_dir: Path, backend: str) -> None:
    images = noise_images(3)
    det = create_detector(exported_model_dir, backend, precision="fp32", threads=1)
    try:
        out = det.detect(images, return_maps=True, return_prob=True)  # type: ignore[call-arg]
        assert out.prob is not None and out.prob.shape == (3, TEST_SIZE, TEST_SIZE)
        np.testing.assert_allclose(out.prob, _raw_prob(exported_model_dir, images), atol=1e-4)
        assert out.maps is not None and not np.allclose(out.maps, out.prob)  # the smoothed map is another thing
    finally:
        det.close()


def test_an_old_export_without_the_raw_map_says_to_re_export(model_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    model, _ = load_model_dir(old)
    export_graph(model, (TEST_SIZE, TEST_SIZE), old / "model.onnx", with_prob=False)
    register_file(old, "model.onnx")
    det = create_detector(old, "onnxruntime")
    try:
        assert det.detect(noise_images(1)).scores.shape == (1,)  # the line is unaffected
        with pytest.raises(ValueError, match="has no 'prob' output .* re-export"):
            det.detect(noise_images(1), return_prob=True)  # type: ignore[call-arg]
    finally:
        det.close()


def test_eval_figures_do_not_depend_on_the_fp32_backend(exported_model_dir: Path, blob_dataset: Path) -> None:
    figures = {}
    for backend in BACKENDS:
        det = create_detector(exported_model_dir, backend, precision="fp32", threads=1)
        try:
            metrics, _ = evaluate_detector(det, blob_dataset, TEST_SIZE)
        finally:
            det.close()
        assert metrics["backend"] == backend and metrics["precision"] == "fp32"
        figures[backend] = metrics
    ref = figures["torch-cpu"]
    assert 0.8 < ref["image_auroc"] <= 1.0 and 0.5 < ref["pixel_auroc"] <= 1.0  # a model that separates the discs
    for backend, m in figures.items():
        for key in ("image_auroc", "pixel_auroc", "aupro", "false_reject_rate", "escape_rate"):
            assert m[key] == pytest.approx(ref[key], abs=1e-3), (backend, key)
        assert m["threshold"] == pytest.approx(ref["threshold"], abs=1e-4)


def test_eval_and_predict_cli_name_the_backend_they_scored_with(exported_model_dir: Path, blob_dataset: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    done = subprocess.run([sys.executable, "-m", "linecam", "eval", "--model", str(exported_model_dir), "--data",
                           str(blob_dataset), "--json", str(out), "--backend", "onnxruntime", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert metrics["backend"] == "onnxruntime" and metrics["precision"] == "fp32"
    assert "scoring with onnxruntime fp32" in done.stderr
    image = sorted((blob_dataset / "test" / "spot").glob("*.png"))[0]
    pred = tmp_path / "pred.json"
    done = subprocess.run([sys.executable, "-m", "linecam", "predict", "--model", str(exported_model_dir), "--json",
                           str(pred), str(image), "--heatmaps", str(tmp_path / "h")], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(pred.read_text())
    assert "scoring with auto:" in done.stderr and result["backend"].split()[0] in BACKENDS
    assert (tmp_path / "h" / f"{image.stem}_heatmap.png").is_file()
    det = create_detector(exported_model_dir, "torch-cpu", precision="fp32")
    try:
        import cv2

        rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
        expected = float(det.detect(rgb[None]).scores[0])
    finally:
        det.close()
    tolerance = 0.06 if result["backend"].endswith(("bf16", "int8")) else 1e-4
    assert result["results"][0]["score"] == pytest.approx(expected, abs=tolerance)
