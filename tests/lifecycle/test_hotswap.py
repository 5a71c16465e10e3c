"""Hot swap inside a real InferWorker (no sockets): registry pointer moves, checks, swap, rollback.

The worker and its detectors are real (torch-cpu on published 32 px versions); the watcher is driven by
calling ``check()`` directly instead of waiting for its thread, so each step is deterministic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linecam.backends.base import Detection, create_detector
from linecam.config import parse_config
from linecam.lifecycle import registry as reg
from linecam.runtime.infer import InferWorker
from linecam.runtime.messages import FrameHeader, encode_frame, now_ns

from .conftest import make_writable


def _config(registry: Path, tmp: Path, probation: int = 4, region: dict[str, Any] | None = None) -> Any:
    doc = {
        "line": {"name": "t", "station": "s1"},
        "runtime_dir": str(tmp),
        "models": {"demo": {"registry": str(registry)}},
        "cameras": [{"name": "cam1", "source": {"kind": "synthetic", "fps": 10, "width": 32, "height": 32},
                     "regions": [{"name": "vial", "box": None, "model": "demo", **(region or {})}]}],
        "infer": {"backend": "torch-cpu", "max_batch": 2, "threads": 1, "metrics_port": 0, "warmup": False,
                  "swap_probation_frames": probation},
        "gate": {"deadline_ms": 600000, "metrics_port": 0},
    }
    return parse_config(doc, "test", tmp)


def _batch(n: int, seq0: int = 0) -> list[tuple[list[Any], int]]:
    rng = np.random.default_rng(seq0)
    out = []
    for i in range(n):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        h = FrameHeader(camera="cam1", seq=seq0 + i, slot=seq0 + i, t_capture_ns=now_ns(), shape=img.shape,
                        dtype="uint8", pixel_format="RGB8")
        out.append((encode_frame(h, img), now_ns()))
    return out


def _count(worker: InferWorker, result: str) -> float:
    return float(worker.models.swap_counter.labels(model="demo", result=result)._value.get())


@pytest.fixture
def demo(tmp_path: Path, published: Path) -> Path:
    shutil.copytree(published, tmp_path / "reg")
    return tmp_path / "reg" / "demo"


def _worker(demo: Path, tmp: Path, region: dict[str, Any] | None = None, **kw: Any) -> InferWorker:
    return InferWorker(_config(demo, tmp, region=region), bind=False, metrics_port=-1, **kw)


def test_swap_between_batches_then_commit(demo: Path, tmp_path: Path) -> None:
    worker = _worker(demo, tmp_path)
    try:
        before = worker.process_batch(_batch(2))
        assert {v.model_version for v in before} == {"demo/1"}
        assert {v.thresholds["vial"] for v in before} == {0.5}
        assert worker.models.watchers["demo"].check() is None  # pointer unchanged: nothing to do
        reg.set_current(demo, "2")
        candidate = worker.models.watchers["demo"].check()
        assert candidate is not None and candidate.version == "2" and candidate.golden_max_diff <= 0.02
        assert worker.process_batch(_batch(2, 2))[0].model_version == "demo/1"  # not swapped until asked
        assert worker.models.apply_swaps() == ["demo"]
        after = worker.process_batch(_batch(2, 4))
        assert {v.model_version for v in after} == {"demo/2"}
        assert {v.thresholds["vial"] for v in after} == {0.6}  # the new card's threshold comes with it
        assert _count(worker, "swapped") == 1 and _count(worker, "committed") == 0
        worker.process_batch(_batch(2, 6))  # 4 frames served: probation over, previous released
        assert _count(worker, "committed") == 1 and not worker.models.probation
    finally:
        worker.close()


@pytest.mark.parametrize(("region", "expected"), [
    ({"thresholds": {"1": 0.3, "2": 0.7}}, (0.3, 0.7)),  # each version its own calibrated entry
    ({"thresholds": {"1": 0.3}}, (0.3, 0.6)),  # v2 not calibrated for this camera: its card's threshold
    ({"threshold": 0.45, "thresholds": {"2": 0.7}}, (0.45, 0.7)),  # a pinned value yields to a version's own
])
def test_threshold_follows_the_version(demo: Path, tmp_path: Path, region: dict[str, Any],
                                       expected: tuple[float, float]) -> None:
    worker = _worker(demo, tmp_path, region=region)
    try:
        assert {v.thresholds["vial"] for v in worker.process_batch(_batch(2))} == {expected[0]}
        reg.set_current(demo, "2")
        assert worker.models.watchers["demo"].check() is not None and worker.models.apply_swaps() == ["demo"]
        assert {v.thresholds["vial"] for v in worker.process_batch(_batch(2, 2))} == {expected[1]}
        worker.models.roll_back("demo", "test")  # rollback restores the previous version's threshold too
        assert {v.thresholds["vial"] for v in worker.process_batch(_batch(2, 4))} == {expected[0]}
    finally:
        worker.close()


def test_tampered_version_is_refused(demo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_writable(demo / "2")
    with open(demo / "2" / "weights.pt", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
    worker = _worker(demo, tmp_path)
    try:
        (demo / "CURRENT").write_text("2\n")  # someone bypassed `models promote`
        assert worker.models.watchers["demo"].check() is None
        assert worker.models.apply_swaps() == []
        assert _count(worker, "refused_hash") == 1
        assert "version 2 REFUSED" in caplog.text and "weights.pt" in caplog.text
        assert worker.process_batch(_batch(1))[0].model_version == "demo/1"
        assert worker.models.watchers["demo"].check() is None and _count(worker, "refused_hash") == 1  # not retried
        assert (demo / "CURRENT").read_text() == "2\n"  # the worker never rewrites the pointer
    finally:
        worker.close()


def test_golden_mismatch_is_refused(demo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_writable(demo / "2")
    card = json.loads((demo / "2" / "card.json").read_text())
    card["golden"]["images"][0]["score"] += 0.3  # recorded behaviour no longer matches the weights
    (demo / "2" / "card.json").write_text(json.dumps(card))
    worker = _worker(demo, tmp_path)
    try:
        reg.set_current(demo, "2")
        assert worker.models.watchers["demo"].check() is None
        assert _count(worker, "refused_golden") == 1
        assert "golden scores" in caplog.text
        assert worker.process_batch(_batch(1))[0].model_version == "demo/1"
    finally:
        worker.close()


class _BreaksInService:
    """A real detector that returns NaN once ``armed`` (after it passed its golden check)."""

    armed: list[bool] = [False]

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.backend, self.model_version, self.input_size = inner.backend, inner.model_version, inner.input_size

    def detect(self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False) -> Detection:
        d = self.inner.detect(images, masks, return_maps)
        return Detection(np.full_like(d.scores, np.nan), d.maps) if self.armed[0] else d

    def close(self) -> None:
        self.inner.close()


def test_failure_in_probation_rolls_back_and_redoes_the_batch(demo: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def factory(path: Path, **kw: Any) -> Any:
        det = create_detector(path, **kw)
        return _BreaksInService(det) if path.name == "2" else det

    _BreaksInService.armed[0] = False
    worker = _worker(demo, tmp_path, detector_factory=factory)
    try:
        reg.set_current(demo, "2")
        assert worker.models.watchers["demo"].check() is not None
        assert worker.models.apply_swaps() == ["demo"]
        _BreaksInService.armed[0] = True
        verdicts = worker.process_batch(_batch(2))
        assert [v.model_version for v in verdicts] == ["demo/1", "demo/1"]  # redone by the previous version
        assert all(v.reason in ("ok", "anomaly") and np.isfinite(v.scores["vial"]) for v in verdicts)
        assert _count(worker, "rolled_back") == 1
        assert "FAILED in service" in caplog.text
        assert reg.read_current(demo) == "2"  # pointer untouched
        assert worker.models.watchers["demo"].check() is None  # not re-loaded while CURRENT stays on the bad one
        assert worker.process_batch(_batch(1))[0].model_version == "demo/1"
    finally:
        _BreaksInService.armed[0] = False
        worker.close()
