"""A CPU too slow for the configured rate: the demo fits its synthetic cameras, real cameras get one warning.

Unit checks of the plan on fixed figures, then `linecam run` as a real process tree whose cameras ask for far
more frames than the worker measures it can judge.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from linecam.config import parse_config
from linecam.runtime.capacity import UTILISATION, Capacity, plan_rate, read_capacity, write_capacity


def _config(tmp_path: Path, model_dir: Path, rt: Any, fps: float, **acquire: Any) -> Any:
    doc = rt.line_dict(model_dir, tmp_path / "run", cameras=3)
    for cam in doc["cameras"]:
        cam["source"]["fps"] = fps
    doc["acquire"] = {"metrics_base_port": 0, **acquire}
    return doc


def test_plan_fits_synthetic_cameras_and_warns_for_real_ones(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    capacity = Capacity(frames_per_s=12.0, ms_per_frame=83.3, batch=2, backends="torch-cpu fp32")
    cfg = parse_config(_config(tmp_path, tiny_model_dir, rt, fps=10.0), "line.yaml", tmp_path)
    plan = plan_rate(cfg, capacity)
    assert plan.fitted and plan.message is not None
    rates = [c.source.fps for c in plan.config.cameras]  # type: ignore[union-attr]
    assert rates == [2.4, 2.4, 2.4]  # floor(10 * 10 * 0.6 * 12 / 30) / 10
    assert sum(rates) <= UTILISATION * capacity.frames_per_s
    assert "would send 30.0 frames/s" in plan.message and "2.4 fps each" in plan.message
    assert plan.config.cameras[0].source.seed == cfg.cameras[0].source.seed  # type: ignore[union-attr]

    kept = parse_config(_config(tmp_path, tiny_model_dir, rt, fps=10.0, fit_synthetic_fps=False), "l.yaml", tmp_path)
    plan = plan_rate(kept, capacity)
    assert not plan.fitted and plan.config is kept and plan.message is not None
    assert plan.message.startswith("warning:") and "expect about 60% of the products" in plan.message
    assert "fail-safe reject" in plan.message

    doc = _config(tmp_path, tiny_model_dir, rt, fps=10.0)
    doc["cameras"][0]["source"] = {"kind": "folder", "path": str(tmp_path), "fps": 10.0}
    real = parse_config(doc, "line.yaml", tmp_path)  # not all synthetic: the rate is the machine's, never changed
    assert not plan_rate(real, capacity).fitted

    fast = Capacity(frames_per_s=100.0, ms_per_frame=10.0, batch=2, backends="x")
    assert plan_rate(cfg, fast).message is None and plan_rate(cfg, fast).config is cfg
    slow_frame = Capacity(frames_per_s=100.0, ms_per_frame=400.0, batch=64, backends="x")  # deadline 300 ms
    plan = plan_rate(cfg, slow_frame)
    assert not plan.fitted and "longer than the 300 ms deadline" in plan.message  # type: ignore[operator]


def test_capacity_file_round_trip_and_garbage(tmp_path: Path) -> None:
    cap = Capacity(frames_per_s=41.5, ms_per_frame=24.1, batch=2, backends="torch-cpu bf16")
    write_capacity(tmp_path, cap)
    assert read_capacity(tmp_path) == cap
    (tmp_path / "infer-capacity.json").write_text('{"frames_per_s": "fast"}')
    assert read_capacity(tmp_path) is None
    assert read_capacity(tmp_path / "missing") is None


@pytest.mark.parametrize("fit", [True, False])
def test_run_fits_or_warns_before_the_cameras_start(tmp_path: Path, tiny_model_dir: Path, rt: Any,
                                                   fit: bool) -> None:
    doc = _config(tmp_path, tiny_model_dir, rt, fps=2000.0, fit_synthetic_fps=fit)  # far above any 2-core CPU
    doc["runtime_dir"] = None
    doc["infer"]["warmup"] = True  # the worker measures its throughput after the warm-up
    doc["gate"]["audit_log"] = str(tmp_path / "audit.jsonl")
    for cam in doc["cameras"]:
        cam["source"]["prerender"] = 4
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = subprocess.run([sys.executable, "-m", "linecam", "run", "--config", str(path), "--duration", "2"],
                          capture_output=True, text=True, timeout=240, env=rt.child_env())
    out = done.stdout
    judged = re.search(r"this CPU judges about ([0-9.]+) frames/s \(([0-9.]+) ms per frame at batch 4", out)
    assert judged, out + done.stderr
    capacity = float(judged.group(1))
    lines = [line for line in out.splitlines() if "this CPU judges" in line]
    assert len(lines) == 1  # said once
    before_cameras = out.index(lines[0]) < out.index("started acquire@cam1")
    assert before_cameras
    if fit:
        fitted = re.search(r"so they run at ([0-9.]+) fps each", lines[0])
        assert fitted and 0.1 <= float(fitted.group(1)) < 2000.0, lines[0]
        assert 3 * float(fitted.group(1)) <= UTILISATION * capacity * 1.01 + 0.3
        assert done.returncode == 0, out + done.stderr
    else:
        assert lines[0].startswith("warning:") and "rejected by timeout" in lines[0]
