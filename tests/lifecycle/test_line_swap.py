"""The whole loop on real processes: `linecam run` on a registry model, versions promoted mid-run.

Checks the issue's acceptance points: every announced frame gets exactly one audit line, the verdicts
switch from demo/1 to demo/2 at exactly one point of the audit log, the swap causes no deadline misses
(timeouts after the switch are not more than before), a version with a tampered weight file and a version
whose golden scores do not match are both refused (logged) while the line keeps running demo/2, and a version
that passes every check but yields NaN on live frames is rolled back across processes without one of its
verdicts reaching the audit log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from linecam.lifecycle import registry as reg

from .conftest import build_model_dir, make_writable


def _audit(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _wait(pred: Any, what: str, proc: Any, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the line exited (code {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_promote_mid_run_swaps_once_and_refuses_bad_versions(tmp_path: Path, published: Path) -> None:
    rundir = Path(tempfile.mkdtemp(prefix="lc-"))  # ipc socket paths must stay short
    try:
        _run_line(tmp_path, published, rundir)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _build_fails_in_service(path: Path, golden: Path) -> Path:
    """A model folder that passes publishing, hashes, golden check and warm-up but fails on live frames.

    The U-Net's first conv multiplies the input image by 3e38: on any lit pixel the sum overflows to inf and
    the next conv (weights of both signs) turns inf into NaN. Its golden images (written to ``golden``) are
    black, where the product is exactly 0, and the warm-up runs blank frames. The ONNX file is exported from
    the healthy weights first (export refuses NaN, as it should); the CPU line runs ``weights.pt``.
    """
    import cv2
    import numpy as np
    import torch

    from linecam.backends.export import export_model_dir
    from linecam.grdnet.modeldir import load_model_dir, save_model_dir

    build_model_dir(path, seed=5)
    export_model_dir(path, fp16=False)
    model, card = load_model_dir(path)
    stem = model.unet.stem[0]
    channels = model.profile.in_channels
    with torch.no_grad():
        stem.weight.zero_()
        stem.weight[:, :channels] = 3e38  # x only; the reconstruction's channels stay 0
        stem.bias.zero_()
    save_model_dir(path, model, card, extra_files={"model.onnx": (path / "model.onnx").read_bytes()})
    golden.mkdir()
    for i in range(3):
        cv2.imwrite(str(golden / f"black{i}.png"), np.zeros((8, 8, 3), np.uint8))
    return path


def _run_line(tmp_path: Path, published: Path, rundir: Path) -> None:
    root = tmp_path / "model"
    shutil.copytree(published, root)
    demo = root / "demo"
    # version 3: tampered weights; version 4: recorded golden scores do not match its weights
    for v, src_seed in (("3", 3), ("4", 4)):
        reg.publish(build_model_dir(tmp_path / f"src{v}", seed=src_seed), root, "demo", version=v, fp16=False)
        make_writable(demo / v)
    with open(demo / "3" / "weights.pt", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x01\x02\x03\x04")
    # version 5: passes every check, then yields NaN on live frames -> rolled back during its probation
    reg.publish(_build_fails_in_service(tmp_path / "src5", tmp_path / "black"), root, "demo", version="5",
                golden=tmp_path / "black", fp16=False)
    card = json.loads((demo / "4" / "card.json").read_text())
    for g in card["golden"]["images"]:
        g["score"] = 0.05
    (demo / "4" / "card.json").write_text(json.dumps(card))
    audit = tmp_path / "audit.jsonl"
    doc = {
        "line": {"name": "t", "station": "s1"},
        "runtime_dir": str(rundir),
        "models": {"demo": {"registry": str(demo)}},
        "cameras": [{"name": f"cam{i}", "source": {"kind": "synthetic", "fps": 8, "width": 64, "height": 64,
                                                    "seed": i, "prerender": 8},
                     "regions": [{"name": "vial", "box": None, "model": "demo"}]} for i in (1, 2)],
        # Version 5 must really produce NaN: in fp32 (bf16 saturates where fp32 overflows to inf) and without
        # oneDNN graph fusion, whose fused ReLU maps NaN to 0 (the line would then score it like a black frame).
        "infer": {"backend": "torch-cpu", "backend_options": {"precision": "fp32", "fuse": False}, "max_batch": 4,
                  "max_wait_ms": 4, "threads": 1, "metrics_port": 0, "warmup": True, "swap_poll_s": 0.5,
                  "swap_probation_frames": 20},
        "gate": {"deadline_ms": 1000, "metrics_port": 0, "audit_log": str(audit), "plc": {"kind": "log"}},
        "acquire": {"metrics_base_port": 0},
    }
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run_log = tmp_path / "run.log"
    log_path = rundir / "logs" / "infer.log"  # the supervisor writes each child's output there
    with open(run_log, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "linecam", "run", "--config", str(config), "--duration",
                                 "60", "--summary", str(tmp_path / "summary.json")], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        try:
            _wait(lambda: len(_audit(audit)) >= 30, "30 frames on version 1", proc)
            subprocess.run([sys.executable, "-m", "linecam", "models", "--registry", str(root), "promote", "demo",
                            "2"], check=True, env=env, capture_output=True)
            _wait(lambda: any(r["model_version"] == "demo/2" for r in _audit(audit)), "verdicts of demo/2", proc)
            n_at_swap = len(_audit(audit))
            _wait(lambda: len(_audit(audit)) >= n_at_swap + 30, "30 frames after the swap", proc)
            (demo / "CURRENT").write_text("3\n")  # bypassing `promote`, which would refuse it
            _wait(lambda: "version 3 REFUSED" in _text(log_path), "the tampered version refused", proc)
            (demo / "CURRENT").write_text("4\n")
            _wait(lambda: "version 4 REFUSED" in _text(log_path), "the golden mismatch refused", proc)
            n_after_refusals = len(_audit(audit))
            _wait(lambda: len(_audit(audit)) >= n_after_refusals + 10, "frames after the refusals", proc)
            (demo / "CURRENT").write_text("5\n")
            _wait(lambda: "version 5 FAILED in service" in _text(log_path), "the NaN version rolled back", proc)
            n_after_rollback = len(_audit(audit))
            _wait(lambda: len(_audit(audit)) >= n_after_rollback + 10, "frames after the rollback", proc)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    out = log_path.read_text()
    assert proc.returncode == 0, run_log.read_text()[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = _audit(audit)
    seqs: dict[str, list[int]] = defaultdict(list)
    for r in records:
        seqs[r["camera"]].append(r["seq"])
    for camera, announced in summary["announced"].items():
        got = sorted(seqs[camera])  # consecutive from the process's first id (ids are unique across restarts)
        assert got == list(range(got[0], got[0] + announced)), f"{camera}: not exactly one audit line per frame"
    versions = [r["model_version"] for r in records if r["model_version"]]
    switch = versions.index("demo/2")
    assert switch > 0 and set(versions[:switch]) == {"demo/1"} and set(versions[switch:]) == {"demo/2"}
    t_switch = next(r["t_capture_ns"] for r in records if r["model_version"] == "demo/2")
    timeouts_before = sum(r["reason"] == "timeout" and r["t_capture_ns"] < t_switch for r in records)
    timeouts_after = sum(r["reason"] == "timeout" and r["t_capture_ns"] >= t_switch for r in records)
    assert timeouts_after <= timeouts_before, (timeouts_before, timeouts_after)
    assert "weights.pt" in out and "golden scores" in out
    assert "swapped 2 -> 5" in out  # it really was swapped in
    assert "non-finite scores" in out and "rolled back to 2" in out
    assert not any(r["reason"] == "error" for r in records)  # the previous version redid the failed batch
    assert (demo / "CURRENT").read_text() == "5\n"  # the worker never rewrites the pointer
