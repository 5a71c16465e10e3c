"""``linecam run``: the whole line as child processes of one command, for development and the demo.

It mirrors what systemd does in production, with the same protocol: each child gets its own
``NOTIFY_SOCKET`` and a ``WATCHDOG_USEC``, is started only after the previous stage reported ``READY=1``
(gate, then infer, then one acquire per camera), and is declared hung when its watchdog pings stop. A child
that crashes or hangs once the line runs is restarted with the units' policy (``Restart=on-failure``, at most
``RESTART_BURST`` restarts in ``RESTART_WINDOW_S``, with back-off); the line stops only when one keeps crashing.
While a child is down its products are still rejected fail-safe (the gate times them out, acquire reports
overload) and the status line names it. A child that fails before the line first runs stops the start-up: that
is a configuration problem, not a crash to retry.
Shutdown is ordered so no product is left without a verdict: acquire stops first, the gate drains (every
announced frame is decided or timed out by its deadline), then infer and finally the gate stop.
Children run in their own process group so a Ctrl-C reaches only the supervisor, which then shuts the
line down in order; they also get SIGTERM from the kernel if the supervisor itself dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

import yaml

from linecam.config import RUNTIME_DIR_ENV, LineConfig, load_config
from linecam.runtime.capacity import camera_fps, plan_rate, read_capacity
from linecam.runtime.metrics import PortInUseError
from linecam.runtime.ports import busy_port_messages
from linecam.runtime.stalls import read_stalls
from linecam.runtime.status import AuditTail, LineStatus
from linecam.runtime.ui.address import read_ui_url

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this child if the supervisor dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class NotifyListener:
    """A ``$NOTIFY_SOCKET`` for one child: the sd_notify datagrams systemd would receive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.ready = False
        self.stopping = False
        self.status = ""
        self.last_ping = time.monotonic()

    def poll(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            for line in data.decode(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    self.ready = True
                    self.last_ping = time.monotonic()
                elif key == "WATCHDOG" and value == "1":
                    self.last_ping = time.monotonic()
                elif key == "STOPPING" and value == "1":
                    self.stopping = True
                elif key == "STATUS":
                    self.status = value

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class Child:
    """One line process under supervision."""

    name: str
    argv: list[str]
    log_path: Path
    notify: NotifyListener
    proc: subprocess.Popen[bytes] | None = None
    asked_to_stop: bool = False
    killed: bool = False
    #: monotonic times of this child's crashes inside the restart window (the start limit counts them).
    crashes: list[float] = field(default_factory=list)
    #: when a crashed child is started again (None: it is not waiting for a restart).
    restart_at: float | None = None
    #: True from a restart until the restarted child reports READY.
    restarting: bool = False
    #: an optional child (the operator page) that kept crashing and is left down: the line goes on without it.
    given_up: bool = False
    started_at: float = 0.0
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class LineFailure(RuntimeError):
    """A child failed to start, or kept crashing (or hanging) beyond the restart limit."""


#: the restart policy the systemd units declare (Restart=on-failure, StartLimitBurst=5 in
#: StartLimitIntervalSec=60), with a back-off: the n-th restart in the window waits RESTART_DELAYS_S[n].
RESTART_BURST = 5
RESTART_WINDOW_S = 60.0
#: children the line does not depend on: one that keeps crashing is left down instead of stopping the line.
OPTIONAL_CHILDREN = frozenset({"ui"})
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)


class Supervisor:
    """Starts, watches and stops the line's processes; see the module docstring for the order."""

    def __init__(self, config: LineConfig, *, rundir: Path, duration_s: float | None = None,
                 status_interval_s: float = 1.0, watchdog_s: float = 30.0, grace_s: float = 5.0,
                 ready_timeout_s: float = 120.0, out: TextIO | None = None) -> None:
        self.config = config
        self.rundir = rundir
        self.duration_s = duration_s
        self.status_interval_s = status_interval_s
        self.watchdog_s = watchdog_s
        self.grace_s = grace_s
        self.ready_timeout_s = ready_timeout_s
        self.out = out or sys.stdout
        self.children: list[Child] = []
        self.status = LineStatus()
        self.audit = AuditTail(config.audit_log_path(), from_end=True)  # an appended log keeps old runs
        self.stop_requested = ""
        self.failures: list[str] = []
        self.final_summary: dict[str, Any] = {}
        self._stats_files: dict[str, list[Path]] = {}
        self.config_path = rundir / "line.yaml"
        (rundir / "logs").mkdir(parents=True, exist_ok=True)
        (rundir / "notify").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config_document(config), sort_keys=False))

    # -- children -----------------------------------------------------------------------------
    def _child(self, name: str, *args: str) -> Child:
        argv = [sys.executable, "-m", "linecam", *args]
        safe = name.replace("@", "-")
        child = Child(name=name, argv=argv, log_path=self.rundir / "logs" / f"{safe}.log",
                      notify=NotifyListener(self.rundir / "notify" / f"{safe}.sock"))
        self.children.append(child)
        return child

    def _start(self, child: Child) -> None:
        env = dict(os.environ)
        env.update({RUNTIME_DIR_ENV: str(self.rundir), "NOTIFY_SOCKET": str(child.notify.path),
                    "WATCHDOG_USEC": str(int(self.watchdog_s * 1e6)), "PYTHONUNBUFFERED": "1"})
        env.pop("WATCHDOG_PID", None)
        if "--stats" in child.argv:  # acquire: its counters for this start
            i = child.argv.index("--stats") + 1
            child.argv[i] = str(self._next_stats_path(child.name.split("@", 1)[1]))
        child._log_file = child.log_path.open("ab")
        child.started_at = time.monotonic()
        child.proc = subprocess.Popen(child.argv, stdin=subprocess.DEVNULL, stdout=child._log_file,
                                      stderr=subprocess.STDOUT, env=env, process_group=0,
                                      preexec_fn=_die_with_parent)
        self._say(f"started {child.name} pid {child.pid}")

    def _wait_ready(self, children: list[Child]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            pending = []
            for child in children:
                child.notify.poll()
                rc = child.returncode()
                if rc is not None:
                    raise LineFailure(f"{child.name} exited with code {rc} during start-up:\n{child.log_tail()}")
                if not child.notify.ready:
                    pending.append(child.name)
            if not pending:
                return
            if self.stop_requested:
                raise LineFailure(f"stopped ({self.stop_requested}) while waiting for {pending}")
            if time.monotonic() > deadline:
                raise LineFailure(f"{pending} sent no READY=1 within {self.ready_timeout_s:.0f} s")
            time.sleep(0.05)

    def start_all(self) -> None:
        cfg = str(self.config_path)
        gate = self._child("gate", "gate", "--config", cfg)
        self._start(gate)
        self._wait_ready([gate])
        if self.config.ui is not None:  # before the cameras: the page sees the line's first product
            ui = self._child("ui", "ui", "--config", cfg)
            self._start(ui)
            self._wait_ready([ui])
            url = read_ui_url(self.rundir)
            self._say(f"operator page: {url}" if url else "operator page: started (no URL written)")
        infer = self._child("infer", "infer", "--config", cfg)
        self._start(infer)
        self._wait_ready([infer])
        self._fit_camera_rate()
        acquires = [self._child(f"acquire@{cam.name}", "acquire", "--config", cfg, "--camera", cam.name,
                                "--stats", "") for cam in self.config.cameras]
        for child in acquires:
            self._start(child)
        self._wait_ready(acquires)
        self._say(f"line {self.config.line.name} running: {len(acquires)} camera(s), audit log "
                  f"{self.config.audit_log_path()}")

    def _fit_camera_rate(self) -> None:
        """Before the cameras start: fit synthetic cameras to the worker's measured throughput, or say once that
        this CPU cannot judge the configured rate in time (see :mod:`linecam.runtime.capacity`)."""
        capacity = read_capacity(self.rundir)
        if capacity is None:
            return
        if capacity.choice:
            self._say(f"model {capacity.choice}")
        plan = plan_rate(self.config, capacity)
        if plan.fitted:
            self.config = plan.config
            self.config_path.write_text(yaml.safe_dump(config_document(plan.config), sort_keys=False))
        if plan.message:
            self._say(plan.message)

    def _next_stats_path(self, camera: str) -> Path:
        """A fresh counters file for each start of a camera's acquire process (a restart must not overwrite
        what the crashed one counted)."""
        paths = self._stats_files.setdefault(camera, [])
        paths.append(self.rundir / f"acquire-{camera}-{len(paths) + 1}.json")
        return paths[-1]

    def check_children(self) -> None:
        """Restart a child that exited or stopped pinging its watchdog, with back-off; raise :class:`LineFailure`
        when one crashed more than ``RESTART_BURST`` times in ``RESTART_WINDOW_S``."""
        now = time.monotonic()
        for child in self.children:
            child.notify.poll()
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    self._start(child)
                continue
            rc = child.returncode()
            if rc is not None and not child.asked_to_stop:
                self._crashed(child, f"exited with code {rc}")
            elif rc is None and child.notify.ready and now - child.notify.last_ping > self.watchdog_s:
                if child.proc is not None:
                    child.proc.kill()
                    child.proc.wait()
                self._crashed(child, f"sent no watchdog ping for {now - child.notify.last_ping:.1f} s (killed)")
            elif child.restarting and child.notify.ready:
                child.restarting = False
                self._say(f"restarted {child.name} (pid {child.pid})")
            elif child.restarting and rc is None and now - child.started_at > self.ready_timeout_s:
                if child.proc is not None:
                    child.proc.kill()
                    child.proc.wait()
                self._crashed(child, f"sent no READY=1 within {self.ready_timeout_s:.0f} s of its restart (killed)")

    def _crashed(self, child: Child, why: str) -> None:
        now = time.monotonic()
        child.crashes = [t for t in child.crashes if now - t < RESTART_WINDOW_S]
        if len(child.crashes) >= RESTART_BURST and child.name in OPTIONAL_CHILDREN:
            child.given_up = child.asked_to_stop = True  # nothing on the line depends on it
            child.restart_at = None
            child.restarting = False
            self._say(f"{child.name} {why}, its {len(child.crashes) + 1}th crash in {RESTART_WINDOW_S:.0f} s: left "
                      f"down; the line goes on without it\n{child.log_tail()}")
            return
        if len(child.crashes) >= RESTART_BURST:
            raise LineFailure(f"{child.name} (pid {child.pid}) {why}, its {len(child.crashes) + 1}th crash in "
                              f"{RESTART_WINDOW_S:.0f} s: not restarted again:\n{child.log_tail()}")
        delay = RESTART_DELAYS_S[min(len(child.crashes), len(RESTART_DELAYS_S) - 1)]
        child.crashes.append(now)
        child.restart_at = now + delay
        child.restarting = True
        child.notify.ready = False
        if child._log_file is not None:
            child._log_file.close()
            child._log_file = None
        self._say(f"RESTARTING {child.name}: {why}; restart {len(child.crashes)} of {RESTART_BURST} in "
                  f"{RESTART_WINDOW_S:.0f} s, in {delay:g} s (its products are rejected meanwhile)")

    def restarting(self) -> list[str]:
        """The children that crashed and are not serving again yet."""
        return [c.name for c in self.children if c.restarting]

    def _stop(self, children: list[Child]) -> None:
        """SIGTERM, wait ``grace_s``, then SIGKILL what is left; a child that needed SIGKILL is a failure."""
        for child in children:
            child.asked_to_stop = True
            child.restart_at = None  # a crashed child waiting for its restart stays down
            if child.returncode() is None and child.proc is not None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
                child.killed = True
                self.failures.append(f"{child.name} ignored SIGTERM for {self.grace_s:.0f} s and was killed")
            rc = child.proc.returncode
            if rc != 0 and not child.killed and not child.restarting and not child.given_up:
                self.failures.append(f"{child.name} exited with code {rc} on shutdown:\n{child.log_tail()}")
            self._say(f"stopped {child.name} (code {rc})")

    def stop_all(self) -> None:
        by_role: dict[str, list[Child]] = {"acquire": [], "infer": [], "gate": [], "ui": []}
        for child in self.children:
            by_role[child.name.split("@")[0]].append(child)
        self._stop(by_role["acquire"])
        # Drain: every announced frame is decided (verdict or timeout) by its deadline.
        drain_until = time.monotonic() + self.config.gate.deadline_s + 0.5
        while time.monotonic() < drain_until:
            self._tail()
            time.sleep(0.05)
        self._stop(by_role["infer"])
        self._stop(by_role["gate"])
        self._stop(by_role["ui"])
        self._tail()
        for child in self.children:
            child.notify.close()
            if child._log_file is not None:
                child._log_file.close()

    # -- status --------------------------------------------------------------------------------
    def _tail(self) -> None:
        self.status.add(self.audit.read_new())

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_requested:  # a second Ctrl-C: no more patience
            self.grace_s = 0.5
        self.stop_requested = name

    def run(self) -> int:
        """Start the line, show the status until the duration ends or a signal arrives, stop, summarise."""
        try:
            self.start_all()
            started = time.monotonic()  # the duration counts line time, not start-up (model loading)
            next_status = time.monotonic() + self.status_interval_s
            while not self.stop_requested:
                if self.duration_s is not None and time.monotonic() - started >= self.duration_s:
                    break
                self.check_children()
                self._tail()
                if time.monotonic() >= next_status:
                    down = self.restarting()
                    stalled: Any = read_stalls(self.rundir).get("stalled") or {}
                    self._say(self.status.line() + (f" | restarting: {', '.join(down)}" if down else "")
                              + (" | stalled: " + ", ".join(f"{c} ({s} s without frames)" for c, s in stalled.items())
                                 if stalled else ""))
                    next_status += self.status_interval_s
                time.sleep(0.05)
        except LineFailure as exc:
            self.failures.append(str(exc))
            self._say(f"LINE FAILURE: {exc}")
        finally:
            self.stop_all()
        self.final_summary = summary = self.summary()
        self._say("summary: " + json.dumps(summary, sort_keys=True))
        for problem in self.failures:
            self._say(f"problem: {problem.splitlines()[0]}")
        return 0 if not self.failures else 1

    def summary(self) -> dict[str, Any]:
        """Status totals plus, per camera, announced frames vs audit lines (they must be equal)."""
        summary = self.status.summary()
        announced: dict[str, int | None] = {}
        seqs: dict[str, list[int]] = {}  # this run's audit lines, read once here rather than kept per product
        for record in AuditTail(self.audit.path, offset=self.audit.start).read_new():
            seqs.setdefault(str(record["camera"]), []).append(int(record["seq"]))
        for cam in self.config.cameras:
            announced[cam.name], problems = self._check_announced(cam.name, seqs.get(cam.name, []))
            self.failures += problems
        summary["announced"] = announced
        summary["camera_fps"] = {cam.name: camera_fps(self.config, cam.name) for cam in self.config.cameras}
        summary["children"] = {c.name: {"pid": c.pid, "exit_code": c.returncode(), "killed": c.killed,
                                        "restarts": len(c.crashes)} for c in self.children}
        summary["audit_log"] = str(self.config.audit_log_path())
        summary["camera_stalls"] = read_stalls(self.rundir).get("counts", {})
        return summary

    def _check_announced(self, camera: str, audit_seqs: list[int]) -> tuple[int | None, list[str]]:
        """Frames a camera's acquire processes announced, checked against the audit log: each start's ids run
        from its first id without a hole, one audit line each; a cleanly stopped process counted exactly that
        many, a killed one at least its last counters snapshot. -> (announced, problems)."""
        runs = []
        for path in self._stats_files.get(camera, []):
            try:
                stats = json.loads(path.read_text())
                runs.append((int(stats["first_seq"]), int(stats["announced"]), bool(stats.get("complete"))))
            except (FileNotFoundError, ValueError, KeyError):
                continue  # killed before its first snapshot: its ids are checked as part of the audit below
        if not runs:
            return None, []
        runs.sort()
        seqs = sorted(audit_seqs)
        problems = []
        if len(seqs) != len(set(seqs)):
            problems.append(f"camera {camera}: {len(seqs) - len(set(seqs))} ids have more than one audit line")
        total = 0  # what acquire counted (a killed process: at least its last snapshot, or what the audit shows)
        for i, (first, count, complete) in enumerate(runs):
            end = runs[i + 1][0] if i + 1 < len(runs) else None
            mine = [q for q in seqs if q >= first and (end is None or q < end)]
            total += count if complete else max(count, len(mine))
            if mine != list(range(first, first + len(mine))):
                problems.append(f"camera {camera}: ids from {first} have holes in the audit log")
            if (complete and len(mine) != count) or (not complete and len(mine) < count):
                problems.append(f"camera {camera}: {count} frames announced from id {first} but {len(mine)} audit "
                                "lines")
        return total, problems


def config_document(config: LineConfig) -> dict[str, Any]:
    """The resolved config as a YAML-able document with absolute paths, for the children to load."""
    doc = config.model_dump(mode="json", exclude={"source_path"})
    return doc


def prepare_config(config: LineConfig, rundir: Path, rejects_dir: Path | None) -> LineConfig:
    """The config the children get: runtime dir fixed, ``--rejects`` applied."""
    update: dict[str, Any] = {}
    if config.runtime_dir is None:
        update["runtime_dir"] = rundir
    if rejects_dir is not None:
        update["infer"] = config.infer.model_copy(update={"reject_dir": rejects_dir.resolve(),
                                                          "save_rejects": True})
    return config.model_copy(update=update)


def main(config_path: str | Path, duration_s: float | None = None, rejects_dir: str | Path | None = None, *,
         keep_runtime: bool = False, watchdog_s: float = 30.0, grace_s: float = 5.0,
         summary_path: str | Path | None = None) -> int:
    """``linecam run``: returns 0 on a clean run, 1 when a child failed or a product lacked its verdict."""
    config = load_config(config_path)
    busy = busy_port_messages(config, config.metrics_address)
    if busy:  # before any child starts: one line per port, naming its config key
        raise PortInUseError("\n".join(busy))
    temp_rundir = config.runtime_dir is None
    rundir = Path(tempfile.mkdtemp(prefix="linecam-")) if temp_rundir else Path(config.runtime_dir or "")
    rundir.mkdir(parents=True, exist_ok=True)
    config = prepare_config(config, rundir, Path(rejects_dir) if rejects_dir is not None else None)
    supervisor = Supervisor(config, rundir=rundir, duration_s=duration_s, watchdog_s=watchdog_s, grace_s=grace_s)
    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, supervisor.request_stop)
    try:
        code = supervisor.run()
        if summary_path is not None:
            Path(summary_path).write_text(json.dumps(supervisor.final_summary, sort_keys=True) + "\n")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if temp_rundir and not keep_runtime:
            shutil.rmtree(rundir, ignore_errors=True)
        elif temp_rundir:
            print(f"runtime dir kept: {rundir}", flush=True)
    return code
