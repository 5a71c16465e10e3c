"""OpenVINO backend: the exported graph compiled by OpenVINO's CPU plugin, checked against the fp32 reference.

Tolerance: OpenVINO fp32 vs the PyTorch fp32 eager reference 1e-4 absolute on scores, as for onnxruntime.
The precision OpenVINO computes in is read back from the compiled model: its CPU plugin would otherwise
choose bf16 by itself on any CPU with bf16 instructions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

pytest.importorskip("openvino", reason="the openvino extra is not installed")

from linecam.backends import available_backends, create_detector  # noqa: E402
from linecam.grdnet.modeldir import ModelDirError  # noqa: E402
from linecam.hardware import resolve_precision  # noqa: E402

from .conftest import TEST_SIZE, blob_images, labelled_set, noise_images, reference_scores  # noqa: E402

OV_TOLERANCE = 1e-4


def test_openvino_matches_the_reference_in_fp32_and_says_so(exported_model_dir: Path) -> None:
    det = create_detector(exported_model_dir, "openvino", precision="fp32", threads=1)
    try:
        assert det.backend == "openvino" and det.model_version == "testnet/v1"
        assert det.compiled_precision() == "f32"  # type: ignore[attr-defined]
        images, labels = labelled_set()
        ref = reference_scores(exported_model_dir, images)
        got = det.detect(images).scores
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.abs(got - ref).max() <= OV_TOLERANCE
        assert abs(roc_auc_score(labels, got) - roc_auc_score(labels, ref)) < 0.005
        for n in (1, 3):  # the batch size changes between calls (dynamic shapes)
            batch = noise_images(n, seed=n)
            np.testing.assert_allclose(det.detect(batch).scores, reference_scores(exported_model_dir, batch),
                                       atol=OV_TOLERANCE)
        blobs, defects = blob_images(3, TEST_SIZE, defect=True, seed=9)
        hide = (defects == 0).astype(np.uint8)
        np.testing.assert_allclose(det.detect(blobs, masks=hide).scores,
                                   reference_scores(exported_model_dir, blobs, hide), atol=OV_TOLERANCE)
        np.testing.assert_array_equal(det.detect(blobs, masks=np.zeros((10, 12), np.uint8)).scores, np.zeros(3))
        rgba = np.concatenate([blobs, np.full((*blobs.shape[:3], 1), 7, np.uint8)], axis=-1)
        np.testing.assert_array_equal(det.detect(rgba).scores, det.detect(blobs).scores)
        big = noise_images(2, size=50)
        out = det.detect(big, return_maps=True)
        assert out.maps is not None and out.maps.shape == (2, TEST_SIZE, TEST_SIZE)
        np.testing.assert_allclose(out.scores, reference_scores(exported_model_dir, big), atol=OV_TOLERANCE)
        with pytest.raises(ValueError, match="uint8"):
            det.detect(big.astype(np.float32))
    finally:
        det.close()
    with pytest.raises(RuntimeError, match="closed"):
        det.detect(noise_images(1))


def test_auto_precision_follows_the_hardware_rule(exported_model_dir: Path) -> None:
    det = create_detector(exported_model_dir, "openvino", threads=1)
    try:
        expected = resolve_precision("auto", "cpu")
        assert det.precision == expected  # type: ignore[attr-defined]
        assert det.compiled_precision() == {"fp32": "f32", "bf16": "bf16"}[expected]  # type: ignore[attr-defined]
    finally:
        det.close()


def test_bf16_on_a_cpu_without_bf16_is_an_error(exported_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINECAM_CPU_ISA", "avx2")
    with pytest.raises(ValueError, match="no bf16 instructions"):
        create_detector(exported_model_dir, "openvino", precision="bf16")
    det = create_detector(exported_model_dir, "openvino", threads=1)  # auto: fp32 there
    try:
        assert det.precision == "fp32"  # type: ignore[attr-defined]
    finally:
        det.close()


def test_openvino_refuses_a_modified_graph_and_a_missing_int8_graph(exported_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(exported_model_dir, copy)
    with pytest.raises(ModelDirError, match=r"model\.int8\.onnx does not exist .*linecam quantize"):
        create_detector(copy, "openvino", precision="int8")
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    with pytest.raises(ModelDirError, match=r"model\.onnx: sha256 .* does not match"):
        create_detector(copy, "openvino")


def test_openvino_is_listed_only_where_the_model_has_its_graph(model_dir: Path, exported_model_dir: Path) -> None:
    assert "openvino" in available_backends(exported_model_dir)
    assert "openvino" not in available_backends(model_dir)
    with pytest.raises(ValueError, match="performance_hint"):
        create_detector(exported_model_dir, "openvino", performance_hint="FASTEST")
