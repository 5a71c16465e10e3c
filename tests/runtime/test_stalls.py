"""A camera that stops sending frames is noticed within a few of its periods, counted once, and named."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from linecam.runtime.stalls import MIN_STALL_S, StallWatch
from tests.runtime.test_line_e2e import _write_config


def test_stall_watch_on_a_given_clock() -> None:
    watch = StallWatch({"cam1": 10.0, "cam2": 2.0, "trig": None}, periods=5)
    assert watch.limits == {"cam1": MIN_STALL_S, "cam2": 2.5}  # a triggered camera has no rate: not watched
    assert watch.check(100.0) == []  # nothing is stalled before its first frame
    watch.frame("cam1", 0.0)
    watch.frame("cam2", 0.0)
    assert watch.check(0.4) == [] and watch.check(0.6) == ["cam1"] and watch.check(0.9) == []  # counted once
    assert watch.snapshot(1.0) == {"stalled": {"cam1": 1.0}, "counts": {"cam1": 1, "cam2": 0}}
    assert watch.frame("cam1", 1.5) == 1.5  # resumed after 1.5 s
    assert watch.check(2.6) == ["cam1", "cam2"] and watch.check(2.7) == []
    assert watch.counts == {"cam1": 2, "cam2": 1}


def test_a_stopped_camera_process_is_named_in_the_status_line(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    config = _write_config(tmp_path, tiny_model_dir, rt)
    proc = subprocess.Popen([sys.executable, "-m", "linecam", "run", "--config", str(config), "--duration", "12",
                             "--summary", str(tmp_path / "summary.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=rt.child_env())
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        acquire_pid = None
        for line in proc.stdout:
            lines.append(line)
            found = re.match(r"started acquire@cam1 pid (\d+)", line)
            acquire_pid = int(found.group(1)) if found else acquire_pid
            if line.startswith("frames ") and not line.startswith("frames 0 "):
                break
        assert acquire_pid is not None
        import os

        os.kill(acquire_pid, signal.SIGSTOP)
        time.sleep(3.0)
        os.kill(acquire_pid, signal.SIGCONT)
        rest, _ = proc.communicate(timeout=120)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert re.search(r"\| stalled: cam1 \([0-9.]+ s without frames\)", out), out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["camera_stalls"] == {"cam1": 1, "cam2": 0}
