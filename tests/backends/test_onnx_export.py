"""ONNX export + onnxruntime backend: a real export into a real model directory, checked end to end.

Tolerance: onnxruntime fp32 vs the PyTorch fp32 eager reference 1e-4 absolute on scores (observed ~1e-7).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.metrics import roc_auc_score

from linecam.backends import create_detector
from linecam.backends.base import BackendUnavailableError
from linecam.backends.export import ExportError, max_score_difference
from linecam.backends.onnxrt import OnnxRuntimeDetector
from linecam.grdnet.modeldir import ModelDirError, file_sha256, load_model_dir

from .conftest import TEST_SIZE, blob_images, labelled_set, noise_images, reference_scores

ORT_TOLERANCE = 1e-4


def test_export_writes_checked_dynamic_batch_onnx_and_records_its_hash(exported_model_dir: Path) -> None:
    path = exported_model_dir / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    card = json.loads((exported_model_dir / "card.json").read_text())
    assert card["files"]["model.onnx"] == file_sha256(path)
    assert "weights.pt" in card["files"]
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["images", "mask"]
    assert [o.name for o in model.graph.output] == ["scores", "maps", "prob"]
    op_types = {n.op_type for n in model.graph.node}
    assert {"Resize", "AveragePool", "Conv", "ReduceMax"} <= op_types  # preprocessing and head are inside
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        images = noise_images(n)
        scores, maps, prob = session.run(None, {"images": images, "mask": np.ones((n, 1, 8, 8), np.float32)})
        assert scores.shape == (n,) and maps.shape == prob.shape == (n, 1, TEST_SIZE, TEST_SIZE)
        assert np.abs(scores - reference_scores(exported_model_dir, images)).max() <= ORT_TOLERANCE


def test_onnxruntime_backend_matches_reference_and_ranking(exported_model_dir: Path) -> None:
    det = create_detector(exported_model_dir, "onnxruntime", threads=1)
    try:
        assert det.backend == "onnxruntime" and det.model_version == "testnet/v1"
        images, labels = labelled_set()
        ref = reference_scores(exported_model_dir, images)
        got = det.detect(images).scores
        assert got.dtype == np.float32
        assert np.abs(got - ref).max() <= ORT_TOLERANCE
        assert abs(roc_auc_score(labels, got) - roc_auc_score(labels, ref)) < 0.005
        # masks (one for all, per image, other size), RGBa, gray, other frame sizes
        blobs, defects = blob_images(3, TEST_SIZE, defect=True, seed=9)
        hide = (defects == 0).astype(np.uint8)
        np.testing.assert_allclose(
            det.detect(blobs, masks=hide).scores, reference_scores(exported_model_dir, blobs, hide), atol=1e-4
        )
        zero = det.detect(blobs, masks=np.zeros((10, 12), np.uint8)).scores
        np.testing.assert_array_equal(zero, np.zeros(3, np.float32))
        rgba = np.concatenate([blobs, np.full((*blobs.shape[:3], 1), 7, np.uint8)], axis=-1)
        np.testing.assert_array_equal(det.detect(rgba).scores, det.detect(blobs).scores)
        gray = blobs[..., 1:2]
        np.testing.assert_allclose(
            det.detect(gray).scores, det.detect(np.repeat(gray, 3, axis=-1)).scores, atol=1e-7
        )
        big = noise_images(2, size=50)
        out = det.detect(big, return_maps=True)
        assert out.maps is not None and out.maps.shape == (2, TEST_SIZE, TEST_SIZE)
        np.testing.assert_allclose(out.scores, reference_scores(exported_model_dir, big), atol=1e-4)
        with pytest.raises(ValueError, match="uint8"):
            det.detect(big.astype(np.float32))
    finally:
        det.close()


def test_onnxruntime_spin_option_reaches_the_session_and_keeps_the_scores(exported_model_dir: Path) -> None:
    """``spin=False`` (what bench/infer.py uses) must set onnxruntime's allow_spinning entry to "0" and change
    nothing in the numbers; the default leaves onnxruntime's own default (entry unset)."""
    images, _ = labelled_set()
    spinning = create_detector(exported_model_dir, "onnxruntime", threads=1)
    sleeping = create_detector(exported_model_dir, "onnxruntime", threads=1, spin=False)
    try:
        entry = "session.intra_op.allow_spinning"
        assert sleeping.session.get_session_options().get_session_config_entry(entry) == "0"  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="allow_spinning"):  # onnxruntime raises for an unset entry
            spinning.session.get_session_options().get_session_config_entry(entry)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(sleeping.detect(images).scores, spinning.detect(images).scores)
    finally:
        spinning.close()
        sleeping.close()


def test_an_explicit_provider_this_onnxruntime_lacks_is_refused_not_run_on_the_cpu(exported_model_dir: Path) -> None:
    """onnxruntime itself only warns for a missing provider and runs on the CPU; a line configured for the
    CUDA provider must not quietly run on the CPU instead."""
    missing = next(p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
                   if p not in ort.get_available_providers())
    with pytest.raises(BackendUnavailableError, match=missing):
        create_detector(exported_model_dir, "onnxruntime", providers=[missing, "CPUExecutionProvider"])
    det = create_detector(exported_model_dir, "onnxruntime", providers=["CPUExecutionProvider"])
    try:
        assert det.session.get_providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    finally:
        det.close()


def test_corrupted_onnx_is_refused_naming_the_file(exported_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "testnet" / "v1"
    shutil.copytree(exported_model_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=r"model\.onnx"):
        create_detector(copy, "onnxruntime")
    with pytest.raises(ModelDirError, match=r"model\.onnx"):
        load_model_dir(copy)  # the torch backends refuse the directory too


def test_parity_check_catches_a_different_model(exported_model_dir: Path, model_dir: Path) -> None:
    """The parity gate is real: the exported graph against other weights differs far above 1e-3."""
    import torch

    model, _ = load_model_dir(model_dir)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05)
    diff = max_score_difference(exported_model_dir / "model.onnx", model, (TEST_SIZE, TEST_SIZE), [noise_images(2)])
    assert diff > 1e-3
    assert issubclass(ExportError, RuntimeError)


def test_cli_export_with_fp16_variant(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "testnet" / "v1"
    shutil.copytree(model_dir, copy)
    proc = subprocess.run(
        [sys.executable, "-m", "linecam", "export", "--model", str(copy), "--max-batch", "8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "max |score onnxruntime - torch fp32|" in proc.stdout
    # the ONNX optimiser's INFO passes and torch's warnings about torchvision operators stay out of the output
    assert "onnx_ir" not in proc.stderr and "onnxscript" not in proc.stderr and "torchvision" not in proc.stderr
    card = json.loads((copy / "card.json").read_text())
    assert card["files"]["model.fp16.onnx"] == file_sha256(copy / "model.fp16.onnx")
    fp16 = onnx.load(str(copy / "model.fp16.onnx"))
    conv_weights = {n.input[1] for n in fp16.graph.node if n.op_type == "Conv"}
    dtypes = {i.data_type for i in fp16.graph.initializer if i.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    # the TensorRT input keeps the line's two outputs; only the fp32 graph carries evaluation's raw map
    assert [o.name for o in fp16.graph.output] == ["scores", "maps"]
    assert [o.name for o in onnx.load(str(copy / "model.onnx")).graph.output] == ["scores", "maps", "prob"]
    assert not list(copy.glob(".*.tmp"))
    # a corrupted weights file makes export fail with exit code 2 and the file's name
    (copy / "weights.pt").write_bytes(b"garbage")
    bad = subprocess.run(
        [sys.executable, "-m", "linecam", "export", "--model", str(copy)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "weights.pt" in bad.stderr


def test_onnxruntime_detector_rejects_a_foreign_graph(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ValueError, match="expected inputs"):
        OnnxRuntimeDetector(path, (TEST_SIZE, TEST_SIZE))
