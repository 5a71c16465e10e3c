"""Backend registry, GPU backends on a CPU-only machine, and the TensorRT plan cache rules."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from linecam.backends import (
    BackendSpec,
    BackendUnavailableError,
    available_backends,
    backend_specs,
    create_detector,
    register_backend,
)
from linecam.backends.tensorrt_backend import EngineKey, check_plan, engine_cache_dir


def test_registry_lists_all_backends_and_the_cpu_ones_here(model_dir: Path, exported_model_dir: Path) -> None:
    assert {"torch-cpu", "onnxruntime", "torch-cuda", "tensorrt"} <= set(backend_specs())
    here = available_backends()
    assert here[0] == "torch-cpu" and "onnxruntime" in here  # fastest first (bench/infer.py)
    assert "onnxruntime" not in available_backends(model_dir)  # no model.onnx there yet
    assert "onnxruntime" in available_backends(exported_model_dir)


def test_auto_picks_the_fastest_available(model_dir: Path) -> None:
    det = create_detector(model_dir, "auto", precision="fp32", mode="eager")
    try:
        assert det.backend == "torch-cpu"
    finally:
        det.close()


def test_unknown_backend_and_duplicate_registration(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'mxnet'"):
        create_detector(model_dir, "mxnet")
    spec = backend_specs()["torch-cpu"]
    with pytest.raises(ValueError, match="already registered"):
        register_backend(BackendSpec(name="torch-cpu", factory=lambda p: None, probe=spec.probe, speed_rank=0))  # type: ignore[arg-type,return-value]


def test_gpu_backends_give_clear_errors_without_a_gpu(exported_model_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError, match="tensorrt backend needs the 'gpu' extra"):
        create_detector(exported_model_dir, "tensorrt")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="CUDA"):
            create_detector(exported_model_dir, "torch-cuda")


def test_gpu_modules_import_without_gpu_packages() -> None:
    code = (
        "import sys, linecam.backends.tensorrt_backend, linecam.backends.torch_cuda, linecam.commands.engine\n"
        "assert 'tensorrt' not in sys.modules and 'pycuda' not in sys.modules, sorted(sys.modules)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_build_engine_cli_without_tensorrt_exits_3(exported_model_dir: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "linecam", "build-engine", "--model", str(exported_model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3
    assert "'gpu' extra" in proc.stderr


def test_cuda_batch_buckets_cover_every_batch_size() -> None:
    from linecam.backends.torch_cuda import batch_buckets

    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batch_buckets(1) == (1,)
    with pytest.raises(ValueError, match="max_batch"):
        batch_buckets(0)


def test_engine_cache_lives_outside_the_model_version_folder(tmp_path: Path) -> None:
    version_dir = tmp_path / "model" / "vials" / "2026-11-28"
    cache = engine_cache_dir(version_dir)
    assert cache == (tmp_path / "model" / "vials" / ".engines" / "2026-11-28").resolve()
    assert version_dir.resolve() not in cache.parents
    assert engine_cache_dir(version_dir, tmp_path / "c") == tmp_path / "c"


def test_plan_for_another_gpu_or_tensorrt_is_refused(tmp_path: Path) -> None:
    key = EngineKey(
        gpu_name="NVIDIA H200",
        compute_capability="9.0",
        tensorrt_version="10.13.0",
        onnx_file="model.fp16.onnx",
        onnx_sha256="ab" * 32,
        precision="fp16",
        max_batch=64,
        max_side=512,
    )
    plan = tmp_path / f"{key.file_stem}.plan"
    assert key.file_stem == "nvidia-h200_sm90_trt10.13.0_fp16_b64_s512"
    plan.write_bytes(b"plan")
    with pytest.raises(ValueError, match="sidecar"):
        check_plan(plan, key)
    plan.with_suffix(".json").write_text(json.dumps(asdict(key)))
    check_plan(plan, key)  # same machine: accepted
    other = replace(key, gpu_name="NVIDIA L4", compute_capability="8.9")
    with pytest.raises(ValueError, match=r"gpu_name: plan 'NVIDIA H200', here 'NVIDIA L4'.*compute_capability"):
        check_plan(plan, other)
    with pytest.raises(ValueError, match="tensorrt_version"):
        check_plan(plan, replace(key, tensorrt_version="11.0.0"))
