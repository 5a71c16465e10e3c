"""The gate: every announced product gets exactly one verdict, in time, and exactly one PLC write.

Why a separate process with this one job: the worker may be slow, crash or be restarted; the gate is
small enough to stay up and keeps the promise alone. It matches announcements (from acquire) with
verdicts (from infer) by ``(camera, seq)``; a product without verdict at its deadline is rejected with
reason ``timeout``; an ``Overload`` notice rejects at once; a verdict that comes before its announcement
is held briefly; late and duplicate verdicts are counted and dropped. On shutdown, pending products are
rejected (``timeout``, detail ``shutdown``) so none is lost.

:class:`Gate` is the pure decision logic (it takes explicit times, so tests need no sleeps);
:class:`GateService` adds the socket, the sweep loop, the PLC link, metrics and systemd notify.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from linecam.config import ConfigError, LineConfig
from linecam.runtime import sdnotify
from linecam.runtime.audit import AuditLog
from linecam.runtime.capacity import camera_fps
from linecam.runtime.feed import FeedPublisher
from linecam.runtime.messages import (
    Announcement,
    BadMessage,
    CameraStopped,
    Overload,
    Verdict,
    decode_event,
    now_ns,
)
from linecam.runtime.metrics import LineMetrics, start_metrics_server
from linecam.runtime.pending import PENDING_FILE, PendingJournal, undecided
from linecam.runtime.plc import PlcLink, PlcResult, create_plc_link
from linecam.runtime.signals import stop_on_signals
from linecam.runtime.stalls import StallWatch, write_stalls
from linecam.runtime.transport import event_pull_bind, stop_authenticators

log = logging.getLogger(__name__)

Key = tuple[str, int]

#: how many decided frames are remembered to recognise late and duplicate verdicts.
DECIDED_MEMORY = 200_000


@dataclass
class _Held:
    verdict: Verdict
    received_ns: int


class Gate:
    """Decision logic of the gate; every method takes the current wall-clock time in ns."""

    def __init__(
        self,
        plc: PlcLink,
        audit: AuditLog,
        metrics: LineMetrics,
        camera_index: Callable[[str], int] | None = None,
        hold_ns: int = 1_000_000_000,
        plc_margin_ns: int = 0,
    ) -> None:
        self.plc = plc
        self._plc_margin_ns = plc_margin_ns
        self.audit = audit
        self.metrics = metrics
        self._camera_index = camera_index or (lambda _name: -1)
        self.hold_ns = hold_ns
        self.pending: dict[Key, Announcement] = {}
        self._deadlines: list[tuple[int, Key]] = []
        self.held: dict[Key, _Held] = {}
        self.decided: OrderedDict[Key, str] = OrderedDict()
        self.counts: dict[str, int] = {"late": 0, "duplicate": 0, "orphan": 0, "decided": 0}
        #: called with every audit record once it is written (the operator page's feed); never lets an error out.
        self.on_record: Callable[[dict[str, Any]], None] | None = None
        #: the model version of the latest verdict, and the last change of it (a hot swap seen from here).
        self.model_version = ""
        self.last_swap: dict[str, Any] | None = None
        self.last_verdict_ns = 0

    # -- events ----------------------------------------------------------------------------------------
    def on_event(self, event: Announcement | Overload | Verdict, t_ns: int) -> None:
        if isinstance(event, Announcement):
            self.on_announcement(event, t_ns)
        elif isinstance(event, Overload):
            self.on_overload(event, t_ns)
        else:
            self.on_verdict(event, t_ns)

    def on_announcement(self, ann: Announcement, t_ns: int) -> None:
        key = (ann.camera, ann.seq)
        if key in self.pending:
            log.warning("duplicate announcement camera=%s seq=%d ignored", *key)
            return
        if key in self.decided:
            # A restarted acquire counts from 0 again: this is a new product and gets its own verdict.
            log.warning("camera=%s seq=%d announced again after its decision (acquire restarted?): new product",
                        *key)
            del self.decided[key]
        held = self.held.pop(key, None)
        if held is not None:
            self._decide_verdict(ann, held.verdict, t_ns)
            return
        if t_ns >= ann.deadline_ns:
            self._decide(ann, "reject", "timeout", t_ns, detail="announced after its deadline")
            self.metrics.deadline_misses.inc()
            return
        self.pending[key] = ann
        heapq.heappush(self._deadlines, (ann.deadline_ns, key))

    def on_overload(self, ov: Overload, t_ns: int) -> None:
        key = (ov.camera, ov.seq)
        ann = self.pending.pop(key, None)
        if ann is None:
            if key in self.decided:
                log.warning("overload for already decided camera=%s seq=%d ignored", *key)
                return
            # Overload without announcement: still a product that must get its one verdict.
            ann = Announcement(camera=ov.camera, seq=ov.seq, slot=ov.slot, t_capture_ns=ov.t_ns,
                               deadline_ns=ov.t_ns)
        self._decide(ann, "reject", "overload", t_ns, detail="worker at its high-water mark")

    def on_verdict(self, verdict: Verdict, t_ns: int) -> None:
        key = (verdict.camera, verdict.seq)
        self.last_verdict_ns = t_ns
        if verdict.model_version and verdict.model_version != self.model_version:
            if self.model_version:
                self.last_swap = {"from": self.model_version, "to": verdict.model_version, "t_ns": t_ns}
            self.model_version = verdict.model_version
        ann = self.pending.get(key)
        if ann is not None:
            if t_ns > ann.deadline_ns:  # arrived, but after the deadline: the fail-safe wins
                del self.pending[key]
                self._timeout(ann, t_ns)
                self._count_late(key)
                return
            del self.pending[key]
            self._decide_verdict(ann, verdict, t_ns)
            return
        previous = self.decided.get(key)
        if previous is not None:
            if previous == "timeout":
                self._count_late(key)
            else:
                self.counts["duplicate"] += 1
                self.metrics.duplicate_verdicts.inc()
            return
        if key in self.held:
            self.counts["duplicate"] += 1
            self.metrics.duplicate_verdicts.inc()
            return
        self.held[key] = _Held(verdict, t_ns)

    def _count_late(self, key: Key) -> None:
        self.counts["late"] += 1
        self.metrics.late_verdicts.inc()
        log.info("late verdict camera=%s seq=%d dropped", *key)

    # -- time ------------------------------------------------------------------------------------------
    def sweep(self, t_ns: int) -> int:
        """Reject every pending product whose deadline has passed; returns how many."""
        n = 0
        while self._deadlines and self._deadlines[0][0] <= t_ns:
            _deadline, key = heapq.heappop(self._deadlines)
            ann = self.pending.pop(key, None)
            if ann is not None:
                self._timeout(ann, t_ns)
                n += 1
        if self.held:
            for key in [k for k, h in self.held.items() if t_ns - h.received_ns > self.hold_ns]:
                del self.held[key]
                self.counts["orphan"] += 1
                self.metrics.orphan_verdicts.inc()
                log.warning("verdict camera=%s seq=%d never announced; dropped", *key)
        self.metrics.queue_depth.labels(queue="gate_pending").set(len(self.pending))
        return n

    def reject_left_over(self, ann: Announcement, t_ns: int) -> None:
        """A product a killed gate announced but never decided (runtime.pending): rejected, reason timeout."""
        self._decide(ann, "reject", "timeout", t_ns, detail="gate restarted: no verdict in time")
        self.metrics.deadline_misses.inc()

    def shutdown(self, t_ns: int) -> int:
        """Reject everything still pending (reason timeout, detail "shutdown"); returns how many."""
        n = 0
        for ann in sorted(self.pending.values(), key=lambda a: a.deadline_ns):
            self._decide(ann, "reject", "timeout", t_ns, detail="shutdown")
            n += 1
        self.pending.clear()
        self._deadlines.clear()
        if self.held:
            self.counts["orphan"] += len(self.held)
            self.metrics.orphan_verdicts.inc(len(self.held))
            self.held.clear()
        return n

    # -- decisions -------------------------------------------------------------------------------------
    def _timeout(self, ann: Announcement, t_ns: int) -> None:
        self.metrics.deadline_misses.inc()
        self._decide(ann, "reject", "timeout", t_ns, detail="no verdict by the deadline")

    def _decide_verdict(self, ann: Announcement, verdict: Verdict, t_ns: int) -> None:
        sent = verdict.timestamps.get("sent")
        if sent is not None:
            self.metrics.stage_latency.labels(stage="to_gate").observe(max(0, t_ns - sent) / 1e9)
        self._decide(ann, verdict.decision, verdict.reason, t_ns, verdict=verdict)

    def _decide(self, ann: Announcement, decision: str, reason: str, t_ns: int, verdict: Verdict | None = None,
                detail: str = "") -> None:
        key = (ann.camera, ann.seq)
        scores = dict(verdict.scores) if verdict else {}
        record: dict[str, Any] = {
            "camera": ann.camera,
            "seq": ann.seq,
            "slot": ann.slot,
            "decision": decision,
            "reason": reason,
            "scores": scores,
            "thresholds": dict(verdict.thresholds) if verdict else {},
            "model_version": verdict.model_version if verdict else "",
            "t_capture_ns": ann.t_capture_ns,
            "t_decided_ns": t_ns,
            "latency_ms": round((t_ns - ann.t_capture_ns) / 1e6, 3),
            "deadline_ns": ann.deadline_ns,
            "truth": ann.truth.model_dump() if ann.truth else None,
            "late": False,
            "detail": detail or (verdict.detail if verdict else ""),
            "timestamps": dict(verdict.timestamps) if verdict else {},
        }
        self.audit.write(record)
        if self.on_record is not None:
            try:
                self.on_record(record)
            except Exception:  # the page must never stop a decision
                log.exception("feed failed for camera=%s seq=%d", *key)
        score = max(scores.values()) if scores else (1.0 if decision == "reject" else 0.0)
        try:
            self.plc.send(PlcResult(slot=ann.slot, decision=decision, reason=reason, score=score,
                                    camera=ann.camera, camera_index=self._camera_index(ann.camera), seq=ann.seq,
                                    write_by_ns=ann.deadline_ns + self._plc_margin_ns))
        except Exception:  # the PLC link must never stop the gate from deciding
            log.exception("PLC link failed for camera=%s seq=%d", *key)
        self.metrics.verdicts.labels(decision=decision, reason=reason).inc()
        self.metrics.end_to_end_latency.observe(max(0, t_ns - ann.t_capture_ns) / 1e9)
        self.decided[key] = reason
        if len(self.decided) > DECIDED_MEMORY:
            self.decided.popitem(last=False)
        self.counts["decided"] += 1


class GateService:
    """The gate process: events socket, sweep loop, PLC heartbeat, metrics, sd_notify."""

    def __init__(self, cfg: LineConfig, plc: PlcLink | None = None, metrics: LineMetrics | None = None,
                 metrics_port: int | None = None, ctx: zmq.Context[Any] | None = None) -> None:
        self.cfg = cfg
        self.endpoint = cfg.events_endpoint()  # config errors (no runtime dir) before anything starts
        self.audit_path: Path = cfg.audit_log_path()
        self.metrics = metrics or LineMetrics(deadline_s=cfg.gate.deadline_s)
        port = cfg.gate.metrics_port if metrics_port is None else metrics_port
        self.metrics_port = start_metrics_server(
            self.metrics, port, cfg.metrics_address, process="gate", key="gate.metrics_port",
            source=str(cfg.source_path or "the config")
        ) if port >= 0 else -1
        self.plc = plc if plc is not None else create_plc_link(cfg.gate.plc, self.metrics)
        self.audit = AuditLog(self.audit_path)
        names = [c.name for c in cfg.cameras]
        self.gate = Gate(self.plc, self.audit, self.metrics,
                         camera_index=lambda n: names.index(n) if n in names else -1,
                         hold_ns=int(cfg.gate.hold_ms * 1e6), plc_margin_ns=int(cfg.gate.plc_margin_ms * 1e6))
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = event_pull_bind(self.ctx, self.endpoint, cfg.transport)
        pending_path = cfg.runtime_path() / PENDING_FILE
        left = undecided(pending_path, self.audit_path)
        for ann in sorted(left, key=lambda a: a.deadline_ns):  # what a killed gate left undecided: fail-safe
            self.gate.reject_left_over(ann, now_ns())
        if left:
            log.warning("gate: %d product(s) left undecided by the previous gate rejected (timeout)", len(left))
        self.pending_journal = PendingJournal(pending_path)
        self.pending_journal.compact([], force=True)
        self.stalls = StallWatch({c.name: camera_fps(cfg, c.name) for c in cfg.cameras}, cfg.gate.stall_periods)
        for name in self.stalls.limits:
            self.metrics.camera_stalled.labels(camera=name).set(0)
        self.feed: FeedPublisher | None = None
        if cfg.ui is not None:
            self.feed = FeedPublisher(self.ctx, cfg)
            self.gate.on_record = self.feed.verdict
        self._next_health = 0.0
        self._stop = threading.Event()
        self.watchdog = sdnotify.Watchdog()
        log.info("gate: events on %s, audit log %s", self.endpoint, self.audit_path)

    def stop(self) -> None:
        self._stop.set()

    def _drain(self, limit: int = 1000) -> int:
        n = 0
        while n < limit:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            try:
                event = decode_event(data)
            except BadMessage as exc:
                self.metrics.bad_messages.labels(socket="events").inc()
                log.warning("events: %s", exc)
                continue
            if isinstance(event, CameraStopped):
                self.stalls.stopped(event.camera)
                continue
            if isinstance(event, Announcement):
                self.pending_journal.add(event)  # before it is handled: a kill now still leaves it on file
                self._camera_frame(event.camera)
            self.gate.on_event(event, now_ns())
        return n

    def _camera_frame(self, camera: str) -> None:
        stalled_for = self.stalls.frame(camera, time.monotonic())
        if stalled_for is not None:
            log.warning("camera %s resumed after %.1f s without frames", camera, stalled_for)
            self.metrics.camera_stalled.labels(camera=camera).set(0)
            self._write_stalls()

    def _check_stalls(self) -> None:
        for camera in self.stalls.check(time.monotonic()):
            log.warning("camera %s stalled: no frame for %.1f s (expected one every %.2f s); its products are not "
                        "being inspected", camera, self.stalls.limits[camera], self.stalls.limits[camera] /
                        self.cfg.gate.stall_periods)
            self.metrics.camera_stalls.labels(camera=camera).inc()
            self.metrics.camera_stalled.labels(camera=camera).set(1)
            self._write_stalls()

    def _publish_health(self) -> None:
        """Once a second: what the operator page's health bar and camera cards show."""
        if self.feed is None:
            return
        t = time.monotonic()
        if t < self._next_health:
            return
        self._next_health = t + 1.0
        stalled = set(self.stalls.stalled)
        cameras = {name: {"last_frame_s": round(t - self.stalls.last[name], 2) if name in self.stalls.last else None,
                          "stalled": name in stalled} for name in self.stalls.limits}
        now = now_ns()
        silent = (now - self.gate.last_verdict_ns) / 1e9 if self.gate.last_verdict_ns else None
        self.feed.health({"t_ns": now, "cameras": cameras, "plc": type(self.plc).__name__,
                          "plc_connected": getattr(self.plc, "connected", None),
                          "model_version": self.gate.model_version, "last_swap": self.gate.last_swap,
                          "worker_silent_s": round(silent, 2) if silent is not None else None,
                          "pending": len(self.gate.pending), "counts": dict(self.gate.counts),
                          "feed_failed_sends": self.feed.dropped, "line": self.cfg.line.name})

    def _write_stalls(self) -> None:
        try:
            write_stalls(self.cfg.runtime_path(), self.stalls.snapshot(time.monotonic()))
        except (OSError, ConfigError) as exc:
            log.debug("stalls not written: %s", exc)

    def run(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT via :func:`main`); then reject what is pending."""
        sweep_ms = max(1, round(self.cfg.gate.sweep_ms))
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        sdnotify.ready(f"gate on {self.endpoint}")
        try:
            while not self._stop.is_set():
                if poller.poll(sweep_ms):
                    self._drain()
                self.gate.sweep(now_ns())
                self.pending_journal.compact(self.gate.pending.values())
                self._check_stalls()
                self._publish_health()
                self.plc.heartbeat()
                self.watchdog.tick()
            self._drain(100_000)
            self.gate.sweep(now_ns())
        finally:
            sdnotify.stopping()
            n = self.gate.shutdown(now_ns())
            if n:
                log.warning("gate shutdown: %d pending products rejected", n)
            self.close()

    def close(self) -> None:
        self.pending_journal.compact(self.gate.pending.values(), force=True)
        self.pending_journal.close()
        if self.feed is not None:
            self.feed.close()
        self.sock.close(0)
        self.plc.close()
        self.audit.close()
        self.metrics.stop_servers()
        if self._own_ctx:
            stop_authenticators(self.ctx)
            self.ctx.term()


def main(config: LineConfig) -> int:
    """``linecam gate --config FILE``: run the gate until SIGTERM/SIGINT."""
    service = GateService(config)
    stop_on_signals("gate", service.stop)
    service.run()
    c = service.gate.counts
    log.info("gate: %d decided, %d late, %d duplicate, %d orphan", c["decided"], c["late"], c["duplicate"],
             c["orphan"])
    return 0
