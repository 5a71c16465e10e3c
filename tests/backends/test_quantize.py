"""INT8: a real quantization of the exported test model, the quality gate on a real test split, and backends that
load the INT8 graph only where its gate passed.

The model is the backend fixture (a U-Net fitted to segment discs), the dataset a linecam-layout folder of the
same smooth products with and without discs. The figures the gate reports are checked against scores computed
here with the backends, so the test fails if the gate measured something else than what the backends serve.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linecam.backends import create_detector
from linecam.backends import quantize as Q
from linecam.decision import rejects
from linecam.grdnet.modeldir import ModelDirError, file_sha256, read_card

from .conftest import TEST_SIZE


def _has_ov() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


GATE_BACKENDS = [b for b in Q.GATE_BACKENDS if b != "openvino" or _has_ov()]


@pytest.fixture(scope="module")
def dataset(blob_dataset: Path) -> Path:
    return blob_dataset


@pytest.fixture
def working_copy(exported_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "testnet" / "v1"
    shutil.copytree(exported_model_dir, copy)
    return copy


def _test_split(dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    return Q._split_images(dataset, "test", (TEST_SIZE, TEST_SIZE))


def test_quantize_keeps_the_int8_graph_where_the_gate_passed_and_the_backends_serve_it(
        working_copy: Path, dataset: Path) -> None:
    report = Q.quantize_model_dir(working_copy, dataset, calibration_images=24, backends=GATE_BACKENDS, threads=1)
    card = read_card(working_copy)
    record = card.int8  # type: ignore[attr-defined]
    assert set(record["gates"]) == set(GATE_BACKENDS) and record["calibration"]["good_images"] == 24
    assert record["float_nodes"] and record["threshold"] == card.threshold
    images, labels = _test_split(dataset)
    for backend, gate in report.gates.items():
        passed, why = Q.gate_result(gate["fp32"], gate["int8"])
        assert gate["passed"] == passed and gate["why"] == why  # the verdict follows the recorded figures
        fp32 = create_detector(working_copy, backend, threads=1, precision="fp32")
        try:  # the gate's fp32 figures are what the backend serves from model.onnx
            scores = fp32.detect(images).scores
            assert gate["fp32"]["escape_rate"] == pytest.approx(float((~rejects(scores, card.threshold))[labels == 1]
                                                                        .mean()))
        finally:
            fp32.close()
        if passed:
            int8 = create_detector(working_copy, backend, threads=1, precision="int8")
            try:
                assert int8.precision == "int8"  # type: ignore[attr-defined]
                got = int8.detect(images).scores
                assert gate["int8"]["false_reject_rate"] == pytest.approx(
                    float(rejects(got, card.threshold)[labels == 0].mean()))
                assert np.abs(got - scores).max() == pytest.approx(gate["max_abs_score_diff"], abs=1e-5)
            finally:
                int8.close()
        else:
            with pytest.raises(ModelDirError, match=f"failed its quality gate on {backend}"):
                create_detector(working_copy, backend, precision="int8")
    if report.passed:
        assert card.files["model.int8.onnx"] == file_sha256(working_copy / "model.int8.onnx")
    assert not list(working_copy.glob(".model.int8*"))  # no scratch files left behind


def test_a_gate_failed_everywhere_keeps_no_file_and_says_why(working_copy: Path, dataset: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Q, "AUROC_BAR", -1.0)  # no graph can meet it: the failure path, deterministic
    report = Q.quantize_model_dir(working_copy, dataset, calibration_images=8, backends=["onnxruntime"], threads=1)
    assert report.int8_path is None and report.passed == []
    assert not (working_copy / "model.int8.onnx").exists()
    card = read_card(working_copy)
    assert "model.int8.onnx" not in card.files
    assert card.int8["gates"]["onnxruntime"]["why"][0].startswith("image AUROC")  # type: ignore[attr-defined]
    with pytest.raises(ModelDirError, match=r"model\.int8\.onnx does not exist"):
        create_detector(working_copy, "onnxruntime", precision="int8")


def test_an_int8_graph_whose_gate_failed_on_a_backend_is_refused_there(working_copy: Path, dataset: Path) -> None:
    Q.quantize_model_dir(working_copy, dataset, calibration_images=8, backends=["onnxruntime"], threads=1)
    card = json.loads((working_copy / "card.json").read_text())
    if "model.int8.onnx" not in card["files"]:
        pytest.skip("the INT8 graph failed the gate on onnxruntime here; the refusal is covered above")
    card["int8"]["gates"]["onnxruntime"].update(passed=False, why=["escape rate 0.1 vs fp32 0.0 (bar 0.005)"])
    (working_copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match=r"failed its quality gate on onnxruntime: escape rate"):
        create_detector(working_copy, "onnxruntime", precision="int8")
    if _has_ov():
        with pytest.raises(ModelDirError, match="not run on openvino"):
            create_detector(working_copy, "openvino", precision="int8")


def test_quantize_cli_refuses_a_model_without_graph_or_threshold(model_dir: Path, working_copy: Path,
                                                                 dataset: Path, tmp_path: Path) -> None:
    no_graph = tmp_path / "plain"
    shutil.copytree(model_dir, no_graph)
    done = subprocess.run([sys.executable, "-m", "linecam", "quantize", "--model", str(no_graph), "--data",
                           str(dataset)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and "model.onnx does not exist" in done.stderr
    card = json.loads((working_copy / "card.json").read_text())
    card["threshold"] = None
    (working_copy / "card.json").write_text(json.dumps(card))
    done = subprocess.run([sys.executable, "-m", "linecam", "quantize", "--model", str(working_copy), "--data",
                           str(dataset)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and "no calibrated threshold" in done.stderr


def test_a_published_int8_version_passes_the_hot_swap_golden_check_on_its_own_scores(
        working_copy: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INT8 scores differ from fp32 by up to a tenth on single images; a worker serving INT8 must check a new
    version against the INT8 scores recorded at publish, or it would refuse every version."""
    from prometheus_client import CollectorRegistry

    from linecam.lifecycle.registry import publish
    from linecam.runtime.hotswap import ModelWatcher, swap_counter

    monkeypatch.setattr(Q, "AUROC_BAR", 1.0)  # this test is about publishing and loading, not the bars
    monkeypatch.setattr(Q, "RATE_BAR", 1.0)
    Q.quantize_model_dir(working_copy, dataset, calibration_images=8, backends=["onnxruntime"], threads=1)
    version = publish(working_copy, tmp_path / "reg", "blobs", fp16=False, golden=dataset)
    card = read_card(version)
    assert card.golden is not None and len(card.golden.int8_scores["onnxruntime"]) == len(card.golden.images)
    fp32 = np.array([g.score for g in card.golden.images])
    int8 = np.array(card.golden.int8_scores["onnxruntime"])
    assert not np.array_equal(fp32, int8)  # the INT8 graph's own behaviour was recorded
    counter = swap_counter(CollectorRegistry())
    watcher = ModelWatcher("blobs", tmp_path / "reg" / "blobs", "none",
                           lambda p: create_detector(p, "onnxruntime", precision="int8", threads=1), counter,
                           tolerance=1e-4)  # tight: only the INT8 graph's own recorded scores can pass
    candidate = watcher.check()
    assert candidate is not None and candidate.golden_max_diff <= 1e-4
    candidate.detector.close()
