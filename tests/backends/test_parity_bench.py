"""bench/backend_parity.py as CI and a lent GPU run it: its verdict must fail a backend that misses a bar.

The script is what bench/gpu.sh uses to hold the GPU backends to the issue's bar (AUROC within 0.005 of the
CPU fp32 reference, scores within the tolerance of their precision), so its pass/fail logic is tested here on
the CPU backends and on a GPU backend that is absent on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from tests.backends.conftest import labelled_set

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "backend_parity.py"


@pytest.fixture(scope="module")
def parity() -> ModuleType:
    spec = importlib.util.spec_from_file_location("backend_parity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["backend_parity"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``test`` split in the folder layout: 12 clean and 12 blob-defect images."""
    root = tmp_path_factory.mktemp("parity_data")
    images, labels = labelled_set(count=12, seed=300)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "test" / ("spot" if label else "good")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


def test_cpu_backends_pass_the_check_and_every_row_is_written(
    parity: ModuleType, exported_model_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "parity.json"
    rc = parity.main(["--model", str(exported_model_dir), "--data", str(dataset), "--check", "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report["failures"]
    # The CPU decides which variants apply: bf16 only where it is native; the others are listed with a reason.
    here = [v for v in parity.CPU_VARIANTS if v.unavailable_here(exported_model_dir) is None]
    assert [r["variant"] for r in report["rows"]] == [v.title for v in here]
    assert [s["variant"] for s in report["skipped"]] == [v.title for v in parity.CPU_VARIANTS if v not in here]
    bf16 = [v for v in parity.CPU_VARIANTS if v.precision == "bf16"]
    assert report["cpu"]["model"] and report["cpu"]["native_bf16"] == all(v in here for v in bf16)
    assert all(v not in here for v in parity.CPU_VARIANTS if v.precision == "int8")  # this model is not quantized
    ref = report["rows"][0]
    assert ref["max_abs_diff"] == 0.0 and ref["auroc"] > 0.9  # the fixture model ranks the blobs
    for row in report["rows"]:
        assert row["max_abs_diff"] <= row["tolerance"]
        assert abs(row["auroc"] - ref["auroc"]) <= parity.AUROC_BAR


def test_on_an_avx2_cpu_the_bf16_variants_are_skipped_with_their_reason_not_failed(
    parity: ModuleType, exported_model_dir: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an AVX2-only EPYC sees (rehearsed here by capping the CPU flags linecam decides from)."""
    monkeypatch.setenv("LINECAM_CPU_ISA", "avx2")
    out = tmp_path / "parity.json"
    rc = parity.main(["--model", str(exported_model_dir), "--data", str(dataset), "--check", "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0 and report["failures"] == []
    bf16 = [v.title for v in parity.CPU_VARIANTS if v.precision == "bf16"]
    skipped = {s["variant"]: s["reason"] for s in report["skipped"]}
    assert bf16 and [t for t in skipped if t in bf16] == bf16
    assert all("bf16" in skipped[t] for t in bf16)
    assert all("INT8" in reason for t, reason in skipped.items() if t not in bf16)  # not quantized: said so
    assert [r["variant"] for r in report["rows"]] == [v.title for v in parity.CPU_VARIANTS if v.title not in skipped]
    assert report["cpu"]["native_bf16"] is False and "avx512f" not in report["cpu"]["flags"]


def test_a_required_gpu_backend_that_cannot_run_fails_the_check(
    parity: ModuleType, exported_model_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: torch-cuda can run here")
    out = tmp_path / "parity.json"
    argv = ["--model", str(exported_model_dir), "--data", str(dataset), "--gpu", "--cpu-variants", "reference",
            "--out", str(out)]
    assert parity.main(argv) == 0  # without --check the figures are only reported
    assert parity.main([*argv, "--check"]) == 1
    failures = json.loads(out.read_text())["failures"]
    required = [v.title for v in parity.GPU_VARIANTS if v.required]
    assert required and all(any(f.startswith(f"{t}: unavailable") for f in failures) for t in required)
    # the optional extras (onnxruntime's CUDA provider, TensorRT) are reported, never a failure
    optional = [v.title for v in parity.GPU_VARIANTS if not v.required]
    assert not [f for f in failures if any(f.startswith(t) for t in optional)]


def test_verdict_names_each_bar_a_backend_misses(parity: ModuleType) -> None:
    fp16 = parity.Variant("x fp16", "torch-cuda", "fp16")
    assert parity.verdict(fp16, auroc=0.990, max_abs_diff=0.01, ref_auroc=0.992) == []
    why = parity.verdict(fp16, auroc=0.980, max_abs_diff=0.05, ref_auroc=0.992)
    assert len(why) == 2 and "AUROC -0.0120" in why[0] and "above 0.02 (fp16)" in why[1]
    fp32 = parity.Variant("x fp32", "onnxruntime", "fp32")
    assert parity.verdict(fp32, auroc=0.992, max_abs_diff=np.float32(2e-3), ref_auroc=0.992) != []
