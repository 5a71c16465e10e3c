"""The operator page's data, without a browser: the live state and its alerts, the feed's never-blocking send, and
the audit-log search."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from linecam.config import parse_config
from linecam.runtime.feed import FeedPublisher
from linecam.runtime.transport import feed_sub_connect
from linecam.runtime.ui.server import search_audit
from linecam.runtime.ui.state import LiveState

from .conftest import line_dict


def _verdict(camera: str, seq: int, reason: str = "ok", decision: str = "accept") -> dict[str, Any]:
    return {"type": "verdict", "camera": camera, "seq": seq, "slot": seq, "decision": decision, "reason": reason,
            "score": 0.1, "threshold": 0.2, "latency_ms": 20.0, "t_ns": time.time_ns(), "image": None}


def _health(**cams: bool) -> dict[str, Any]:
    cameras = {c: {"last_frame_s": 9.0 if s else 0.1, "stalled": s} for c, s in cams.items()}
    return {"type": "health", "cameras": cameras, "plc_connected": True, "model_version": "demo/8",
            "worker_silent_s": 0.1, "pending": 2}


def test_counts_rejects_and_the_alerts_an_operator_must_see() -> None:
    state = LiveState(["cam1", "cam2"], window=50, min_in_time_share=0.9)
    now = time.time()
    assert [a["kind"] for a in state.alerts(now)] == ["gate"]  # nothing heard yet: the gate is not reporting
    state.apply(_health(cam1=False, cam2=False), now)
    for i in range(20):
        state.apply(_verdict("cam1", i), now)
        state.apply(_verdict("cam2", i, "timeout" if i % 4 == 0 else "ok", "reject" if i % 4 == 0 else "accept"),
                    now)
    snap = state.snapshot(now)
    assert snap["total"] == 40 and snap["cameras"]["cam1"]["decided"] == 20
    assert snap["cameras"]["cam2"]["rejects"] == {"timeout": 5} and snap["cameras"]["cam2"]["in_time_share"] == 0.75
    assert [r["seq"] for r in snap["rejects"]][:2] == [16, 12]  # newest first
    assert [(a["kind"], a.get("camera")) for a in snap["alerts"]] == [("in_time", "cam2")]
    state.apply({**_health(cam1=True, cam2=False), "plc_connected": False, "worker_silent_s": 8.0}, now)
    kinds = {(a["kind"], a.get("camera")) for a in state.snapshot(now)["alerts"]}
    assert {("stall", "cam1"), ("plc", None), ("worker", None)} <= kinds
    assert [a["kind"] for a in state.alerts(now + 10)] == ["gate"]  # health 10 s old: the gate stopped reporting
    for i in range(100):  # the window is bounded: memory does not grow with the shift
        state.apply(_verdict("cam1", 100 + i, "anomaly", "reject"), now)
    assert len(state.verdicts) == 50 and state.snapshot(now)["cameras"]["cam1"]["decided"] == 120


def test_the_feed_never_blocks_the_gate_without_a_page_or_with_a_slow_one(tiny_model_dir: Path, short_dir: Path,
                                                                          tmp_path: Path) -> None:
    doc = line_dict(tiny_model_dir, short_dir, cameras=1)
    doc["ui"] = {"port": 0}
    cfg = parse_config(doc, "test", tmp_path)
    ctx = zmq.Context()
    feed = FeedPublisher(ctx, cfg)
    sub = feed_sub_connect(ctx, cfg.feed_endpoint(), cfg.transport)  # subscribed, but never reading
    try:
        time.sleep(0.3)
        record = {"camera": "cam1", "seq": 1, "slot": 1, "decision": "reject", "reason": "anomaly",
                  "scores": {"vial": 0.7}, "thresholds": {"vial": 0.5}, "latency_ms": 12.0, "t_decided_ns": 1}
        sender = threading.Thread(target=lambda: [feed.verdict(record) for _ in range(50_000)])
        sender.start()
        sender.join(timeout=120)
        assert not sender.is_alive()  # it returned while nobody read: a blocking send would hang here
        assert feed.sent + feed.dropped == 50_000
        first = json.loads(sub.recv())
        assert first["score"] == 0.7 and first["threshold"] == 0.5 and first["region"] == "vial"
        assert first["image"] is None  # no reject_dir configured: no image promised
        received = 1
        while sub.poll(500):
            sub.recv()
            received += 1
        assert received < 50_000  # the reader's excess beyond its high-water mark was dropped, not queued
    finally:
        sub.close(0)
        feed.close()
        ctx.term()


def test_search_finds_a_product_by_camera_and_seq_or_by_slot(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with log.open("w") as f:
        for i in range(5000):
            f.write(json.dumps({"camera": f"cam{i % 3 + 1}", "seq": i // 3, "slot": (1 << 40) + i,
                                "decision": "accept", "reason": "ok"}) + "\n")
    hit = search_audit(log, camera="cam2", seq=100)
    assert [(m["camera"], m["seq"]) for m in hit["matches"]] == [("cam2", 100)] and hit["whole_log"]
    by_slot = search_audit(log, slot=((1 << 40) + 4321) & 0xFFFFFFFF)  # the PLC sees 32 bits of the slot
    assert [m["slot"] for m in by_slot["matches"]] == [(1 << 40) + 4321]
    tail = search_audit(log, camera="cam1", seq=0, tail_bytes=4096)  # only the end of a long log is read
    assert tail["matches"] == [] and not tail["whole_log"] and tail["searched_bytes"] == 4096
