"""`linecam run` as a real process tree: gate, infer and acquire children on a tiny random model.

Checks the line's core promise end to end: every announced frame gets exactly one audit line, the
supervisor exits 0 after a timed run or a Ctrl-C, every child is gone afterwards, and a child that dies
makes the run fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml


def _write_config(tmp_path: Path, model_dir: Path, rt: Any, **overrides: Any) -> Path:
    doc = rt.line_dict(model_dir, tmp_path / "unused", cameras=2)
    doc["runtime_dir"] = None  # the supervisor makes a temporary one, like the demo
    doc["gate"]["audit_log"] = str(tmp_path / "audit.jsonl")
    doc["acquire"] = {"metrics_base_port": 0}
    for cam in doc["cameras"]:
        cam["source"].update(fps=10, defect_rate=0.3, outside_roi_rate=0.1, prerender=8)
    doc.update(overrides)
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_run(tmp_path: Path, out: str) -> dict[str, Any]:
    summary = json.loads((tmp_path / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    seqs: dict[str, list[int]] = defaultdict(list)
    for r in records:
        seqs[r["camera"]].append(r["seq"])
    for camera, announced in summary["announced"].items():
        assert announced and announced > 0, summary
        got = sorted(seqs[camera])  # consecutive from the process's first id (ids are unique across restarts)
        assert got == list(range(got[0], got[0] + announced)), f"{camera}: audit lines != announced frames"
    assert set(seqs) == set(summary["announced"])
    assert all(r["decision"] in ("accept", "reject") and "latency_ms" in r for r in records)
    pids = [int(p) for p in re.findall(r"started \S+ pid (\d+)", out)]
    assert len(pids) == 4 and sorted(pids) == sorted(c["pid"] for c in summary["children"].values())
    assert not [p for p in pids if _alive(p)], "children left running"
    assert all(c["exit_code"] == 0 and not c["killed"] for c in summary["children"].values()), summary
    return summary


def test_timed_run_one_audit_line_per_frame(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    config = _write_config(tmp_path, tiny_model_dir, rt)
    done = subprocess.run(
        [sys.executable, "-m", "linecam", "run", "--config", str(config), "--duration", "8",
         "--rejects", str(tmp_path / "rejects"), "--summary", str(tmp_path / "summary.json")],
        capture_output=True, text=True, timeout=240, env=rt.child_env())
    assert done.returncode == 0, done.stdout + done.stderr
    summary = _check_run(tmp_path, done.stdout)
    assert summary["decisions"].get("reject", 0) > 0  # 30 % defects, untrained model: rejects happen
    assert summary["true_rejects"] + summary["false_rejects"] == summary["decisions"]["reject"]
    assert re.search(r"frames \d+ \([0-9.]+/s\) \| rejects \d+", done.stdout)  # the live status line


def test_ctrl_c_stops_the_line_in_order(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    config = _write_config(tmp_path, tiny_model_dir, rt)
    proc = subprocess.Popen([sys.executable, "-m", "linecam", "run", "--config", str(config), "--summary",
                             str(tmp_path / "summary.json")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=rt.child_env())
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the line runs and has produced some status
            lines.append(line)
            if line.startswith("frames ") and not line.startswith("frames 0 "):
                break
        proc.send_signal(signal.SIGINT)  # the supervisor alone: children live in their own process group
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    order = [m for m in re.findall(r"stopped (\S+) \(code", out)]
    assert order[-2:] == ["infer", "gate"] and all(n.startswith("acquire@") for n in order[:-2])
    _check_run(tmp_path, out)


def test_a_dying_child_fails_the_run(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    doc_path = _write_config(tmp_path, tiny_model_dir, rt)
    doc = yaml.safe_load(doc_path.read_text())
    doc["cameras"][1]["source"] = {"kind": "folder", "path": str(tmp_path / "no-such-folder"), "fps": 5}
    doc_path.write_text(yaml.safe_dump(doc))
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "linecam", "run", "--config", str(doc_path), "--duration", "30"],
                          capture_output=True, text=True, timeout=240, env=rt.child_env())
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "acquire@cam2" in out and "no-such-folder" in out  # the failure names the child and its cause
    assert time.monotonic() - t0 < 30  # it did not run out the duration
    pids = [int(p) for p in re.findall(r"started \S+ pid (\d+)", out)]
    assert pids and not [p for p in pids if _alive(p)]


def test_a_crashed_child_is_restarted_and_the_line_goes_on(tmp_path: Path, tiny_model_dir: Path, rt: Any) -> None:
    """kill -9 of the worker, then of one camera's acquire, under `linecam run`: each is restarted with the
    units' policy, the status line names it meanwhile, every announced product still gets exactly one audit
    line (its outage's products are rejected fail-safe) and no id repeats."""
    config = _write_config(tmp_path, tiny_model_dir, rt)
    proc = subprocess.Popen([sys.executable, "-m", "linecam", "run", "--config", str(config), "--duration", "25",
                             "--summary", str(tmp_path / "summary.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=rt.child_env())
    lines: list[str] = []
    pids: dict[str, int] = {}

    def read_until(pattern: str, timeout_s: float = 120.0) -> re.Match[str]:
        assert proc.stdout is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            started = re.match(r"started (\S+) pid (\d+)", line)
            if started:
                pids[started.group(1)] = int(started.group(2))
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(lines)}")

    try:
        read_until(r"^line test running")
        read_until(r"^frames [1-9]")
        os.kill(pids["infer"], signal.SIGKILL)
        read_until(r"^RESTARTING infer: exited with code -9; restart 1 of 5")
        read_until(r"restarting: infer")  # the status line says who is down
        read_until(r"^restarted infer")
        os.kill(pids["acquire@cam1"], signal.SIGKILL)
        read_until(r"^RESTARTING acquire@cam1: exited with code -9")
        read_until(r"^restarted acquire@cam1")
        rest, _ = proc.communicate(timeout=120)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out  # the supervisor's own check: announced == audit lines per camera
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["children"]["infer"]["restarts"] == 1 and summary["children"]["acquire@cam1"]["restarts"] == 1
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    keys = [(r["camera"], r["seq"]) for r in records]
    assert len(keys) == len(set(keys)) == sum(summary["announced"].values())
    assert summary["decisions"].get("accept", 0) > 0  # the restarted worker judged products again


def test_an_operator_page_that_keeps_crashing_is_left_down_and_the_line_goes_on(tmp_path: Path,
                                                                                tiny_model_dir: Path,
                                                                                rt: Any) -> None:
    """The page is optional: after the start limit it stays down instead of stopping the line (a gate or worker
    that keeps crashing still stops it)."""
    import io

    from linecam.config import load_config
    from linecam.runtime.supervisor import RESTART_BURST, LineFailure, Supervisor

    config = load_config(_write_config(tmp_path, tiny_model_dir, rt, ui={"port": 0}))
    out = io.StringIO()
    supervisor = Supervisor(config, rundir=tmp_path / "run", out=out)
    page, gate = supervisor._child("ui", "ui"), supervisor._child("gate", "gate")
    for _ in range(RESTART_BURST):
        supervisor._crashed(page, "exited with code 1")
        supervisor._crashed(gate, "exited with code 1")
    supervisor._crashed(page, "exited with code 1")  # one more: left down, no exception
    assert page.given_up and page.asked_to_stop and page.restart_at is None and not page.restarting
    assert "ui exited with code 1, its 6th crash in 60 s: left down; the line goes on without it" in out.getvalue()
    try:
        supervisor._crashed(gate, "exited with code 1")
    except LineFailure as exc:
        assert "gate" in str(exc) and "not restarted again" in str(exc)
    else:
        raise AssertionError("a gate that keeps crashing must stop the line")
