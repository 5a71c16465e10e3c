"""The gate: one audit line and one PLC write per announced product; timeouts at the deadline; late and
duplicate verdicts counted and dropped; overload rejects at once; shutdown rejects what is pending."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
import zmq

from linecam.runtime.audit import AuditLog, read_audit
from linecam.runtime.gate import Gate, GateService
from linecam.runtime.messages import Announcement, Overload, Truth, Verdict, encode_event, now_ns
from linecam.runtime.metrics import LineMetrics
from linecam.runtime.plc.log import LogLink
from linecam.runtime.transport import event_push

MS = 1_000_000


def _ann(seq: int, t: int, deadline_ms: int = 300, camera: str = "cam1") -> Announcement:
    return Announcement(camera=camera, seq=seq, slot=seq + 1000, t_capture_ns=t, deadline_ns=t + deadline_ms * MS,
                        truth=Truth(line_label="good"))


def _verdict(seq: int, decision: str = "accept", reason: str = "ok", score: float = 0.1,
             camera: str = "cam1") -> Verdict:
    return Verdict(camera=camera, seq=seq, slot=seq + 1000, decision=decision, reason=reason,  # type: ignore[arg-type]
                   scores={"vial": score}, thresholds={"vial": 0.5}, model_version="v1")


def _gate(tmp_path: Path) -> tuple[Gate, io.StringIO, LineMetrics]:
    stream = io.StringIO()
    metrics = LineMetrics(deadline_s=0.3)
    gate = Gate(LogLink(stream, metrics), AuditLog(tmp_path / "audit.jsonl"), metrics,
                camera_index=lambda n: {"cam1": 0, "cam2": 1}.get(n, -1), hold_ns=500 * MS)
    return gate, stream, metrics


def _plc_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(x)["plc"] for x in stream.getvalue().splitlines()]


def test_matched_verdicts_give_one_line_and_one_plc_write_each(tmp_path: Path) -> None:
    gate, stream, metrics = _gate(tmp_path)
    t = 10_000 * MS
    for seq in range(10):
        gate.on_event(_ann(seq, t), t)
    for seq in range(10):
        v = _verdict(seq, "reject", "anomaly", 0.9) if seq % 3 == 0 else _verdict(seq)
        gate.on_event(v, t + 20 * MS)
    gate.sweep(t + 1000 * MS)
    records = read_audit(tmp_path / "audit.jsonl")
    assert [r["seq"] for r in records] == list(range(10))
    assert [r["decision"] for r in records].count("reject") == 4
    r0 = records[0]
    assert r0["reason"] == "anomaly" and r0["scores"] == {"vial": 0.9} and r0["thresholds"] == {"vial": 0.5}
    assert r0["latency_ms"] == 20.0 and r0["truth"] == {"line_label": "good", "kind": "good"} and r0["late"] is False
    plc = _plc_lines(stream)
    assert [p["seq"] for p in plc] == list(range(10)) and plc[0]["camera_index"] == 0 and plc[0]["slot"] == 1000
    assert metrics.verdicts.labels(decision="reject", reason="anomaly")._value.get() == 4
    assert metrics.end_to_end_latency._sum.get() == pytest.approx(10 * 0.02)


def test_missing_verdict_times_out_at_the_deadline_and_late_one_is_dropped(tmp_path: Path) -> None:
    gate, stream, metrics = _gate(tmp_path)
    t = 10_000 * MS
    gate.on_event(_ann(1, t), t)
    gate.on_event(_ann(2, t, deadline_ms=100), t)
    assert gate.sweep(t + 99 * MS) == 0
    assert gate.sweep(t + 100 * MS) == 1  # seq 2 at its own deadline
    assert gate.sweep(t + 300 * MS) == 1  # seq 1
    gate.on_event(_verdict(2), t + 400 * MS)  # too late
    records = read_audit(tmp_path / "audit.jsonl")
    assert [(r["seq"], r["reason"], r["decision"]) for r in records] == [(2, "timeout", "reject"),
                                                                        (1, "timeout", "reject")]
    assert records[0]["deadline_ns"] == t + 100 * MS and records[0]["t_decided_ns"] == t + 100 * MS
    assert gate.counts["late"] == 1 and metrics.late_verdicts._value.get() == 1
    assert metrics.deadline_misses._value.get() == 2 and len(_plc_lines(stream)) == 2


def test_verdict_after_deadline_but_before_sweep_is_a_timeout(tmp_path: Path) -> None:
    gate, _, metrics = _gate(tmp_path)
    t = 10_000 * MS
    gate.on_event(_ann(1, t, deadline_ms=50), t)
    gate.on_event(_verdict(1), t + 51 * MS)
    [record] = read_audit(tmp_path / "audit.jsonl")
    assert record["reason"] == "timeout" and gate.counts["late"] == 1


def test_duplicates_and_early_verdicts(tmp_path: Path) -> None:
    gate, stream, metrics = _gate(tmp_path)
    t = 10_000 * MS
    gate.on_event(_verdict(5, "reject", "anomaly", 0.8), t)  # before its announcement: held
    gate.on_event(_verdict(5), t + MS)  # a second one while held: duplicate
    gate.on_event(_ann(5, t), t + 2 * MS)
    gate.on_event(_verdict(5), t + 3 * MS)  # after the decision: duplicate
    gate.on_event(_ann(7, t), t + 4 * MS)
    gate.on_event(_ann(7, t), t + 4 * MS)  # duplicate announcement while pending: ignored
    gate.on_event(_verdict(7), t + 5 * MS)
    gate.on_event(_verdict(6), t)  # never announced: orphan after hold_ns
    gate.sweep(t + 600 * MS)
    records = read_audit(tmp_path / "audit.jsonl")
    assert [(r["seq"], r["reason"]) for r in records] == [(5, "anomaly"), (7, "ok")]
    assert gate.counts["duplicate"] == 2 and metrics.duplicate_verdicts._value.get() == 2
    assert gate.counts["orphan"] == 1 and len(_plc_lines(stream)) == 2


def test_reannounced_sequence_after_acquire_restart_is_a_new_product(tmp_path: Path) -> None:
    gate, stream, _ = _gate(tmp_path)
    t = 10_000 * MS
    gate.on_event(_ann(0, t), t)
    gate.on_event(_verdict(0), t + MS)
    gate.on_event(_ann(0, t + 5000 * MS), t + 5000 * MS)  # acquire restarted, counts from 0 again
    gate.sweep(t + 5400 * MS)
    records = read_audit(tmp_path / "audit.jsonl")
    assert [(r["seq"], r["reason"]) for r in records] == [(0, "ok"), (0, "timeout")]
    assert len(_plc_lines(stream)) == 2


def test_overload_rejects_at_once_even_without_announcement(tmp_path: Path) -> None:
    gate, stream, metrics = _gate(tmp_path)
    t = 10_000 * MS
    gate.on_event(_ann(1, t), t)
    gate.on_event(Overload(camera="cam1", seq=1, slot=1001, t_ns=t + MS), t + MS)
    gate.on_event(Overload(camera="cam2", seq=9, slot=9, t_ns=t + MS), t + MS)
    gate.on_event(_verdict(1), t + 5 * MS)  # cannot override the overload reject
    records = read_audit(tmp_path / "audit.jsonl")
    assert [(r["camera"], r["seq"], r["decision"], r["reason"]) for r in records] == [
        ("cam1", 1, "reject", "overload"), ("cam2", 9, "reject", "overload")]
    assert [p["camera_index"] for p in _plc_lines(stream)] == [0, 1]
    assert metrics.verdicts.labels(decision="reject", reason="overload")._value.get() == 2


def test_shutdown_rejects_pending_products(tmp_path: Path) -> None:
    gate, stream, _ = _gate(tmp_path)
    t = 10_000 * MS
    for seq in range(3):
        gate.on_event(_ann(seq, t), t)
    gate.on_event(_verdict(0), t + MS)
    assert gate.shutdown(t + 2 * MS) == 2
    records = read_audit(tmp_path / "audit.jsonl")
    assert [(r["seq"], r["reason"], r["detail"]) for r in records][1:] == [(1, "timeout", "shutdown"),
                                                                         (2, "timeout", "shutdown")]
    assert len(_plc_lines(stream)) == 3


def test_gate_service_over_real_sockets(make_config, short_dir: Path, tmp_path: Path, rt) -> None:
    cfg = make_config(deadline_ms=150)
    stream = io.StringIO()
    service = GateService(cfg, plc=LogLink(stream), metrics_port=0)
    thread = threading.Thread(target=service.run)
    thread.start()
    ctx = zmq.Context()
    push = event_push(ctx, cfg.events_endpoint(), cfg.transport)
    try:
        n = 20
        for seq in range(n):
            t = now_ns()
            push.send(encode_event(_ann(seq, t, deadline_ms=150)))
            if seq % 4 != 3:  # every 4th product never gets a verdict
                push.send(encode_event(_verdict(seq)))
        push.send(b"not json")  # counted and dropped
        rt.wait_for(lambda: service.audit.lines == n, what="20 audit lines")
    finally:
        push.close(0)
        ctx.term()
        service.stop()
        thread.join(timeout=10)
    records = read_audit(cfg.audit_log_path())
    assert sorted(r["seq"] for r in records) == list(range(n))
    reasons = {r["seq"]: r["reason"] for r in records}
    assert [s for s, r in reasons.items() if r == "timeout"] == [3, 7, 11, 15, 19]
    assert len(stream.getvalue().splitlines()) == n
    assert service.metrics.bad_messages.labels(socket="events")._value.get() == 1


def test_a_gate_killed_with_products_pending_leaves_them_for_the_next_one(tmp_path: Path) -> None:
    """kill -9 of the gate lost the products it held in memory; now the next gate rejects them (timeout)."""
    from linecam.runtime.audit import AuditLog, read_audit
    from linecam.runtime.messages import Announcement, now_ns
    from linecam.runtime.pending import PendingJournal, undecided

    journal, audit_path = tmp_path / "gate-pending.jsonl", tmp_path / "audit.jsonl"
    pending = PendingJournal(journal)
    t = now_ns()
    anns = [Announcement(camera="cam1", seq=s, slot=s, t_capture_ns=t, deadline_ns=t + 10**8) for s in range(4)]
    for ann in anns:
        pending.add(ann)
    audit = AuditLog(audit_path)
    audit.write({"camera": "cam1", "seq": 0, "decision": "accept"})  # the first two were decided before the kill
    audit.write({"camera": "cam1", "seq": 1, "decision": "reject"})
    audit.close()
    with journal.open("ab") as f:
        f.write(b'{"type": "announce", "camera": "cam1", "se')  # the kill cut the last line
    assert [a.seq for a in undecided(journal, audit_path)] == [2, 3]
    pending.compact([anns[3]], force=True)
    assert [a.seq for a in undecided(journal, audit_path)] == [3]
    pending.close()
    assert len(read_audit(audit_path)) == 2
