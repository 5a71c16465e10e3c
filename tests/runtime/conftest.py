"""Shared fixtures of the runtime tests: a tiny real model directory, line configs, small detectors.

The model dir is a random-initialised ``fast`` GRD-Net at 64 px saved with the real model-dir writer, so
the worker loads it through the real backend registry. ``BrightnessDetector`` is a deterministic detector
(score = mean brightness of the crop) for tests that need known scores; ``FailingDetector`` and
``SlowDetector`` wrap a detector to raise or to take time, for the error and overload tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linecam.backends.base import Detection
from linecam.config import LineConfig, parse_config

MODEL_SIZE = 64


def build_model_dir(path: Path, size: int = MODEL_SIZE, threshold: float = 0.5, seed: int = 0) -> Path:
    """Write a random-init ``fast`` GRD-Net model directory of ``size`` px to ``path``."""
    import torch

    from linecam.grdnet.model import build_grdnet
    from linecam.grdnet.modeldir import ModelCard, save_model_dir
    from linecam.grdnet.profiles import get_profile

    torch.manual_seed(seed)
    profile = get_profile("fast", image_size=size)
    model = build_grdnet(profile).eval()
    card = ModelCard(name="tiny", version="t1", profile=profile, input_size=(size, size),
                     roi_variant="learned_silence", threshold=threshold)
    save_model_dir(path, model, card)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 64x64 model directory (card.json threshold 0.5 + weights.pt)."""
    pytest.importorskip("linecam.grdnet.modeldir")
    return build_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temporary folder: ipc socket paths must stay under ~107 bytes, pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="lc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def line_dict(model_dir: Path, runtime_dir: Path, cameras: int = 2, width: int = 64, height: int = 64,
              regions: list[dict[str, Any]] | None = None, deadline_ms: float = 300.0,
              warmup: bool = False) -> dict[str, Any]:
    """A line config document: synthetic cameras, one full-frame region each (or ``regions``)."""
    regs = regions or [{"name": "vial", "box": None, "model": "demo"}]
    return {
        "line": {"name": "test", "station": "s1"},
        "runtime_dir": str(runtime_dir),
        "models": {"demo": {"path": str(model_dir)}},
        "cameras": [
            {"name": f"cam{i + 1}",
             "source": {"kind": "synthetic", "fps": 20, "width": width, "height": height, "seed": i},
             "regions": regs}
            for i in range(cameras)
        ],
        "infer": {"max_batch": 4, "max_wait_ms": 4, "threads": 1, "metrics_port": 0,
                  "warmup": warmup},
        "gate": {"deadline_ms": deadline_ms, "metrics_port": 0, "plc": {"kind": "log"}},
    }


def write_stub_card(model_dir: Path, threshold: float = 0.5) -> Path:
    """A valid card without weights, for workers whose detectors are stubs: they read only its threshold."""
    from linecam.grdnet.modeldir import ModelCard, write_card
    from linecam.grdnet.profiles import get_profile

    card = ModelCard(name="stub", version="", profile=get_profile("fast", image_size=MODEL_SIZE),
                     input_size=(MODEL_SIZE, MODEL_SIZE), roi_variant="learned_silence", threshold=threshold)
    write_card(model_dir, card)
    return model_dir


@pytest.fixture
def make_config(short_dir: Path, tmp_path: Path) -> Callable[..., LineConfig]:
    """``make_config(model_dir=None, **line_dict kwargs) -> LineConfig`` rooted in a short runtime dir."""

    def make(model_dir: Path | None = None, **kwargs: Any) -> LineConfig:
        if model_dir is None:
            model_dir = tmp_path / "model"
            model_dir.mkdir(exist_ok=True)
            write_stub_card(model_dir)
        return parse_config(line_dict(model_dir, short_dir, **kwargs), "test-config", tmp_path)

    return make


class BrightnessDetector:
    """Deterministic detector: score = mean of the crop / 255 (so a white crop scores 1, black 0)."""

    backend = "brightness"
    model_version = "b1"
    input_size = (MODEL_SIZE, MODEL_SIZE)

    def __init__(self) -> None:
        self.calls: list[int] = []

    def detect(self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False) -> Detection:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        self.calls.append(images.shape[0])
        scores = images.reshape(images.shape[0], -1).mean(axis=1).astype(np.float32) / 255.0
        maps = images.mean(axis=3).astype(np.float32) / 255.0 if return_maps else None
        return Detection(scores=scores, maps=maps)

    def close(self) -> None:
        pass


class FailingDetector:
    """Wraps a detector; raises RuntimeError on the calls whose index is in ``fail_calls``."""

    def __init__(self, inner: Any, fail_calls: set[int]) -> None:
        self.inner = inner
        self.fail_calls = fail_calls
        self.backend = inner.backend
        self.model_version = inner.model_version
        self.input_size = inner.input_size
        self.n = 0

    def detect(self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False) -> Detection:
        i = self.n
        self.n += 1
        if i in self.fail_calls:
            raise RuntimeError(f"backend failure on call {i}")
        return self.inner.detect(images, masks, return_maps)

    def close(self) -> None:
        self.inner.close()


class SlowDetector(FailingDetector):
    """Wraps a detector and sleeps ``delay_s`` per call (an overloaded or stuck backend)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        super().__init__(inner, set())
        self.delay_s = delay_s

    def detect(self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False) -> Detection:
        time.sleep(self.delay_s)
        return super().detect(images, masks, return_maps)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail naming ``what`` (not a timing assertion: a hang guard)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def child_env(runtime_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    if runtime_dir is not None:
        env["LINECAM_RUNTIME_DIR"] = str(runtime_dir)
    return env


class Helpers:
    """The helper classes and functions above, handed to tests through the ``rt`` fixture.

    (Tests do not ``import conftest``: several test folders have one, and the module name would clash.)
    """

    BrightnessDetector = BrightnessDetector
    FailingDetector = FailingDetector
    SlowDetector = SlowDetector
    build_model_dir = staticmethod(build_model_dir)
    write_stub_card = staticmethod(write_stub_card)
    free_port = staticmethod(free_port)
    line_dict = staticmethod(line_dict)
    rss_kib = staticmethod(rss_kib)
    wait_for = staticmethod(wait_for)
    child_env = staticmethod(child_env)


@pytest.fixture
def rt() -> type[Helpers]:
    return Helpers
