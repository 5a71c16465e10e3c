"""The fault suite: the demo line under injected faults, one row per fault, the figures users read.

Each row runs ``linecam run`` on the demo config (its synthetic cameras fitted to what this machine judges in
time, a Modbus PLC simulator that journals every write with its own clock) and injects one fault a few seconds
after the line runs. It then reads the gate's audit log, the supervisor's summary and the PLC's journal:

- announced: products the acquire processes announced (the supervisor checks each start's ids against the audit);
- audit lines, lost (announced without an audit line), duplicated ids (a (camera, seq) twice);
- late PLC writes: results validated in the PLC after their product's deadline (must be 0);
- not written: results the link dropped (late, or the PLC was down): the PLC rejected those by its window;
- recovery: seconds from the end of the fault to the next product the model judged, and to the next result the
  PLC took.

    .venv/bin/python bench/faults.py                    # every fault, ~20 s of line each
    .venv/bin/python bench/faults.py --only plc-hung --seconds 12

Results: ``bench/results/faults.json`` with the CPU named. No row is a test assertion; tests/ checks the same
properties (tests/runtime/test_line_e2e.py, test_plc_modbus.py, test_hostile_frames.py, test_stalls.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from linecam.hardware import cpu_summary  # noqa: E402
from linecam.runtime.plc import registers as R  # noqa: E402
from tests.runtime.test_hostile_frames import hostile_corpus  # noqa: E402

BASE, HEARTBEAT = 100, 99


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Plc:
    """The Modbus simulator process with its write journal."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.journal = folder / "plc.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "linecam.runtime.plc.sim_server", "--port",
                                      str(self.port), "--journal", str(self.journal)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(1.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Run:
    """One ``linecam run`` with its output read in a thread (pids of the children, the 'running' moment)."""

    def __init__(self, config: Path, seconds: float, summary: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "linecam", "run", "--config", str(config), "--duration",
                                      str(seconds), "--summary", str(summary)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.pids: dict[str, int] = {}
        self.running = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.match(r"started (\S+) pid (\d+)", line)
            if found:
                self.pids[found.group(1)] = int(found.group(2))
            if line.startswith("line ") and " running:" in line:
                self.running.set()

    def wait(self) -> int:
        code = self.proc.wait(timeout=600)
        self._thread.join(timeout=10)
        return code


def _signal(run: Run, child: str, sig: signal.Signals) -> None:
    os.kill(run.pids[child], sig)


def _stop_continue(run: Run, child: str, seconds: float = 3.0) -> None:
    _signal(run, child, signal.SIGSTOP)
    time.sleep(seconds)
    _signal(run, child, signal.SIGCONT)


def _send_hostile(runtime: Path) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(f"ipc://{runtime / 'frames.sock'}")
    for _ in range(20):
        for _what, parts in hostile_corpus():
            sock.send_multipart(parts)
    sock.send_multipart([b"{}", bytes(50 * 2**20)])  # far above MAXMSGSIZE
    sock.close()
    ctx.term()


#: fault name -> (what it does, the injection, called once the line runs; returns when the fault has ended)
FAULTS: dict[str, tuple[str, Callable[[Run, Plc, Path], None]]] = {
    "none": ("the line as configured, no fault (baseline)", lambda run, plc, rt: None),
    "kill-acquire": ("kill -9 of acquire@cam1", lambda run, plc, rt: _signal(run, "acquire@cam1", signal.SIGKILL)),
    "kill-infer": ("kill -9 of the worker", lambda run, plc, rt: _signal(run, "infer", signal.SIGKILL)),
    "kill-gate": ("kill -9 of the gate", lambda run, plc, rt: _signal(run, "gate", signal.SIGKILL)),
    "stop-acquire": ("SIGSTOP/SIGCONT of acquire@cam1 (3 s)", lambda run, plc, rt: _stop_continue(run, "acquire@cam1")),
    "stop-infer": ("SIGSTOP/SIGCONT of the worker (3 s)", lambda run, plc, rt: _stop_continue(run, "infer")),
    "stop-gate": ("SIGSTOP/SIGCONT of the gate (3 s)", lambda run, plc, rt: _stop_continue(run, "gate")),
    "plc-killed": ("PLC killed, restarted 3 s later", lambda run, plc, rt: (plc.stop(), time.sleep(3.0), plc.start())),
    "plc-hung": ("PLC stopped (SIGSTOP) for 3 s and continued",
                 lambda run, plc, rt: (plc.proc.send_signal(signal.SIGSTOP), time.sleep(3.0),  # type: ignore[union-attr]
                                       plc.proc.send_signal(signal.SIGCONT))),  # type: ignore[union-attr]
    "hostile-frames": ("300 hostile frames (the fuzz corpus) and a 50 MB message to the worker",
                       lambda run, plc, rt: _send_hostile(rt)),
}


def _config(folder: Path, plc: Plc, overload: bool) -> Path:
    doc = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    base = ROOT / "config"
    doc["models"] = {k: {"path": str((base / v["path"]).resolve())} for k, v in doc["models"].items()}
    for cam in doc["cameras"]:
        cam["regions"] = str((base / cam["regions"]).resolve())
        if overload:
            cam["source"]["fps"] = 3 * cam["source"]["fps"]
    doc["runtime_dir"] = str(folder / "rt")
    doc.pop("ui", None)  # the fault rows measure the line itself; the page has its own tests
    doc["gate"].update(audit_log=str(folder / "audit.jsonl"), metrics_port=0,
                       plc={"kind": "modbus", "port": plc.port, "base_register": BASE,
                            "heartbeat_register": HEARTBEAT, "heartbeat_period_s": 0.5, "timeout_s": 0.3,
                            "reconnect_min_s": 0.1, "reconnect_max_s": 1.0})
    doc["infer"]["metrics_port"] = 0
    doc["acquire"] = {"metrics_base_port": 0, "fit_synthetic_fps": not overload}
    path = folder / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _plc_validations(journal: Path, due_by_slot: dict[int, int]) -> tuple[int, list[int]]:
    """(validations after their result's time, the times of all validations) from the PLC's own journal."""
    writes = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()] if journal.is_file() \
        else []
    late = 0
    times = []
    slot = None
    for w in sorted(writes, key=lambda w: w["t_ns"]):
        if w["address"] == BASE:
            slot = (w["values"][R.SLOT_HI] << 16) | w["values"][R.SLOT_LO]
        elif w["address"] == BASE + R.VALID_TOGGLE and slot is not None:
            times.append(w["t_ns"])
            due = due_by_slot.get(slot)
            if due is not None and w["t_ns"] > due:
                late += 1
    return late, times


def run_fault(name: str, seconds: float, settle_s: float) -> dict[str, Any]:
    what, inject = FAULTS[name]
    with tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as tmp:
        folder = Path(tmp)
        plc = Plc(folder)
        plc.start()
        spinners: list[subprocess.Popen[bytes]] = []
        try:
            config = _config(folder, plc, overload=name == "overload")
            if name == "startup-busy":
                spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
            t_start = time.monotonic()
            run = Run(config, seconds, folder / "summary.json")
            if not run.running.wait(300):
                run.proc.kill()
                raise SystemExit(f"{name}: the line did not start:\n{''.join(run.lines)[-3000:]}")
            startup_s = time.monotonic() - t_start
            time.sleep(settle_s)
            inject(run, plc, folder / "rt")
            fault_end_ns = time.time_ns()
            code = run.wait()
        finally:
            for spinner in spinners:
                spinner.kill()
            plc.stop()
        records = [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines() if line.strip()]
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
        keys = [(r["camera"], r["seq"]) for r in records]
        announced = sum(v or 0 for v in summary.get("announced", {}).values())
        due = {int(r["slot"]) & 0xFFFFFFFF: int(r["deadline_ns"]) for r in records if "slot" in r}
        late, validated = _plc_validations(folder / "plc.jsonl", due)
        valid = len(validated)
        plc_after = [t for t in validated if t > fault_end_ns]
        judged_after = sorted(r["t_decided_ns"] for r in records
                              if r["reason"] in ("ok", "anomaly") and r["t_decided_ns"] > fault_end_ns)
        recovery = (judged_after[0] - fault_end_ns) / 1e9 if judged_after else None
        reasons: dict[str, int] = {}
        for r in records:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        problems = [line.strip() for line in run.lines if line.startswith(("problem:", "LINE FAILURE"))]
        return {"fault": name, "what": what, "exit_code": code, "announced": announced, "audit_lines": len(records),
                "lost": max(0, announced - len(set(keys))), "duplicated_ids": len(keys) - len(set(keys)),
                "late_plc_writes": late, "plc_results_written": valid,
                "plc_results_not_written": max(0, len(records) - valid),
                "recovery_s": round(recovery, 2) if recovery is not None else None,
                "plc_recovery_s": round((plc_after[0] - fault_end_ns) / 1e9, 2) if plc_after else None,
                "startup_s": round(startup_s, 1), "reasons": reasons, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=14.0, help="line time per row (the fault comes after --settle)")
    ap.add_argument("--settle", type=float, default=4.0)
    ap.add_argument("--only", nargs="*", default=None, help=f"faults to run: {', '.join(ALL)}")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.json"))
    args = ap.parse_args(argv)
    cpu = cpu_summary()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}")  # type: ignore[arg-type]
    rows = []
    for name in args.only or ALL:
        row = run_fault(name, args.seconds, args.settle)
        rows.append(row)
        print(f"{name:15s} announced {row['announced']:4d}  audit {row['audit_lines']:4d}  lost {row['lost']}  "
              f"dup {row['duplicated_ids']}  late PLC {row['late_plc_writes']}  not written "
              f"{row['plc_results_not_written']:3d}  recovery {row['recovery_s']} s (PLC {row['plc_recovery_s']} s)  "
              f"start {row['startup_s']} s  "
              f"exit {row['exit_code']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu, "seconds": args.seconds, "rows": rows}, indent=1) + "\n")
    return 0


FAULTS["overload"] = ("the cameras at 3x the configured rate, fit off", lambda run, plc, rt: None)
FAULTS["startup-busy"] = ("start-up and run with two busy loops on the two cores", lambda run, plc, rt: None)
ALL = list(FAULTS)

if __name__ == "__main__":
    sys.exit(main())
