"""``backend="auto"``: a real timed trial over the installed backends, its parity bar, its cache, and the CPU rule.

Two test backends are registered for the trial: one that answers fast with wrong scores (it must be excluded by
the parity bar, never picked for its speed) and one that is correct but sleeps 40 ms per call (it must lose).
The others are the real backends on the exported test model.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linecam.backends import BackendSpec, Detection, create_detector
from linecam.backends import autoselect as A
from linecam.backends.base import BACKENDS


class _Wrapped:
    """A real onnxruntime detector with its scores shifted or its calls slowed down."""

    def __init__(self, path: Path, name: str, shift: float, delay_s: float, **options: Any) -> None:
        self.inner = create_detector(path, "onnxruntime", threads=options.get("threads"))
        self.backend, self.precision = name, "fp32"
        self.model_version, self.input_size = self.inner.model_version, self.inner.input_size
        self.shift, self.delay_s = shift, delay_s

    def detect(self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False) -> Detection:
        time.sleep(self.delay_s)
        out = self.inner.detect(images, masks, return_maps)
        return Detection(out.scores + np.float32(self.shift), out.maps)

    def close(self) -> None:
        self.inner.close()


def _spec(name: str, shift: float, delay_s: float) -> BackendSpec:
    return BackendSpec(name=name, factory=lambda p, precision="fp32", **o: _Wrapped(p, name, shift, delay_s, **o),
                       probe=lambda p: None, speed_rank=99, precisions=lambda p: ["fp32"])


@pytest.fixture
def model(exported_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models" / "testnet"
    shutil.copytree(exported_model_dir, copy)
    return copy


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS._targets, "test-wrong-fast", _spec("test-wrong-fast", 0.3, 0.0))
    monkeypatch.setitem(BACKENDS._targets, "test-slow", _spec("test-slow", 0.0, 0.04))


def test_the_trial_takes_the_fastest_variant_that_passes_parity(model: Path, fakes: None) -> None:
    det = create_detector(model, "auto", threads=1)
    try:
        choice = det.auto_choice  # type: ignore[attr-defined]
        rows = {(r.backend, r.precision): r for r in choice.trial}
        assert ("torch-cpu", "fp32") in rows and ("onnxruntime", "fp32") in rows
        wrong = rows[("test-wrong-fast", "fp32")]
        assert wrong.ms_per_image is None and "differ from fp32 by 0.3" in str(wrong.excluded)
        assert rows[("test-slow", "fp32")].ms_per_image >= 40  # type: ignore[operator]
        timed = [r for r in choice.trial if r.ms_per_image is not None]
        fastest = min(timed, key=lambda r: r.ms_per_image)
        assert (choice.backend, choice.precision) == (fastest.backend, fastest.precision)
        assert det.backend == choice.backend and choice.backend not in ("test-wrong-fast", "test-slow")
        assert f"{choice.ms_per_image:.0f} ms/img at batch 1" in choice.line()
        assert all(r.max_abs_diff is not None and r.max_abs_diff <= A.PARITY_TOLERANCE[r.precision]
                   for r in timed)
    finally:
        det.close()


def test_the_trial_is_cached_per_machine_model_and_threads(model: Path, fakes: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = create_detector(model, "auto", threads=1)
    first.close()
    files = list((model.parent / ".engines" / "testnet").glob("auto-*.json"))
    assert len(files) == 1
    again = create_detector(model, "auto", threads=1)
    try:
        cached = again.auto_choice  # type: ignore[attr-defined]
        assert cached.cached_in == str(files[0]) and "trial cached in" in cached.line()
        assert (cached.backend, cached.precision) == (first.auto_choice.backend,  # type: ignore[attr-defined]
                                                      first.auto_choice.precision)  # type: ignore[attr-defined]
    finally:
        again.close()
    monkeypatch.setenv(A.REFRESH_ENV, "refresh")
    fresh = create_detector(model, "auto", threads=1)
    fresh.close()
    assert fresh.auto_choice.cached_in is None  # type: ignore[attr-defined]
    monkeypatch.delenv(A.REFRESH_ENV)
    create_detector(model, "auto", threads=2).close()  # another thread count: its own trial
    assert len(list((model.parent / ".engines" / "testnet").glob("auto-*.json"))) == 2


def test_on_an_avx2_cpu_auto_never_tries_bf16(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINECAM_CPU_ISA", "avx2")
    variants = A.candidates(model)
    assert variants and all(v.precision != "bf16" for v in variants)
    assert {"torch-cpu", "onnxruntime"} <= {v.backend for v in variants}
    with pytest.raises(ValueError, match="no bf16 instructions"):
        create_detector(model, "auto", precision="bf16")


def test_an_explicit_precision_keeps_only_that_precision(model: Path, model_dir: Path) -> None:
    assert {v.precision for v in A.candidates(model, "fp32")} == {"fp32"}
    assert {v.backend for v in A.candidates(model_dir)} == {"torch-cpu"}  # no model.onnx: torch only
    det = create_detector(model_dir, "auto", precision="fp32", mode="eager")  # a torch-only option
    try:
        assert det.backend == "torch-cpu" and det.auto_choice.precision == "fp32"  # type: ignore[attr-defined]
    finally:
        det.close()
