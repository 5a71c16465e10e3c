"""The inference worker: exactly one verdict per frame, malformed frames answered ``bad_frame`` with their
identity, a throwing backend answered ``error`` while the worker keeps serving, one detector call per model
per batch; then end to end with real processes (gate + infer) and a test acting as acquire."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zmq

from linecam.runtime.audit import read_audit
from linecam.runtime.infer import InferWorker
from linecam.runtime.messages import (
    Announcement,
    FrameHeader,
    Overload,
    decode_event,
    encode_event,
    encode_frame,
    now_ns,
)
from linecam.runtime.modelset import load_detectors
from linecam.runtime.transport import event_pull_bind, event_push, frame_push

REGIONS = [{"name": "left", "box": [0, 0, 32, 64], "model": "demo"},
           {"name": "right", "box": [32, 0, 32, 64], "model": "demo", "threshold": 0.9}]


def _parts(camera: str, seq: int, image: np.ndarray, pixel_format: str = "RGB8") -> list[Any]:
    header = FrameHeader(camera=camera, seq=seq, slot=seq + 100, t_capture_ns=now_ns(), t_sent_ns=now_ns(),
                         shape=image.shape, dtype=str(image.dtype), pixel_format=pixel_format)
    return encode_frame(header, np.ascontiguousarray(image))


def _halves(left: int, right: int, size: int = 64) -> np.ndarray:
    img = np.empty((size, size, 3), np.uint8)
    img[:, : size // 2] = left
    img[:, size // 2 :] = right
    return img


def _raw(header: dict[str, Any], payload: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), payload]


def _good_header(seq: int, **change: Any) -> dict[str, Any]:
    h = {"schema_version": 1, "camera": "cam1", "seq": seq, "slot": seq, "t_capture_ns": 1, "shape": [64, 64, 3],
         "dtype": "uint8", "pixel_format": "RGB8"}
    h.update(change)
    return h


def test_scores_thresholds_and_one_call_per_batch(make_config, rt) -> None:
    cfg = make_config(regions=REGIONS)
    det = rt.BrightnessDetector()
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    t = now_ns()
    msgs = [
        (_parts("cam1", 1, _halves(0, 0)), t),  # dark: accept
        (_parts("cam2", 2, _halves(160, 0)), t),  # left 0.63 > card threshold 0.5: reject
        (_parts("cam1", 3, _halves(0, 200)), t),  # right 0.78 < its own threshold 0.9: accept
        (_parts("cam2", 4, _halves(0, 240)[:, :, 0].copy(), "Mono8"), t),  # right 0.94 > 0.9 (gray frame)
    ]
    verdicts = worker.process_batch(msgs)
    assert [(v.camera, v.seq, v.slot, v.decision, v.reason) for v in verdicts] == [
        ("cam1", 1, 101, "accept", "ok"), ("cam2", 2, 102, "reject", "anomaly"),
        ("cam1", 3, 103, "accept", "ok"), ("cam2", 4, 104, "reject", "anomaly")]
    assert verdicts[1].scores == pytest.approx({"left": 160 / 255, "right": 0.0})
    assert verdicts[0].thresholds == {"left": 0.5, "right": 0.9}
    assert det.calls == [8]  # 4 frames x 2 regions in ONE detector call
    assert set(verdicts[0].timestamps) >= {"received", "batch_start", "infer_done", "capture", "acquire_sent"}
    assert worker.metrics.anomaly_score._sum.get() == pytest.approx(sum(sum(v.scores.values()) for v in verdicts))
    worker.close()


def test_malformed_frames_get_bad_frame_verdicts_with_identity(make_config, rt) -> None:
    cfg = make_config(regions=REGIONS)
    worker = InferWorker(cfg, detectors={"demo": rt.BrightnessDetector()}, metrics_port=-1, bind=False)
    good = _halves(0, 0).tobytes()
    t = now_ns()
    msgs = [
        (_parts("cam1", 10, _halves(0, 0)), t),
        (_parts("cam1", 11, np.zeros((32, 32, 3), np.uint8)), t),  # smaller than the region boxes
        (_raw(_good_header(12), good)[:1] + [b"{oops"], t),  # payload fine-sized? no: 5 bytes
        ([b"{not json", good], t),  # header is not JSON: identity unknown
        (_raw(_good_header(13, dtype="float32", shape=[64, 64, 3]), good * 4), t),
        (_raw(_good_header(14, pixel_format="YUV422"), good), t),
        (_raw(_good_header(15), good[:-7]), t),  # truncated payload
        (_parts("cam9", 16, _halves(0, 0)), t),  # camera not in the line
        ([b"{}"], t),  # one part only
        (_raw(_good_header(17, shape=[64, 64]), good[: 64 * 64]), t),  # RGB8 without channels
        (_parts("cam2", 18, _halves(255, 255)), t),
    ]
    verdicts = worker.process_batch(msgs)
    assert len(verdicts) == len(msgs)
    got = [(v.camera, v.seq, v.reason) for v in verdicts]
    assert got == [("cam1", 10, "ok"), ("cam1", 11, "bad_frame"), ("cam1", 12, "bad_frame"), ("?", -1, "bad_frame"),
                   ("cam1", 13, "bad_frame"), ("cam1", 14, "bad_frame"), ("cam1", 15, "bad_frame"),
                   ("cam9", 16, "bad_frame"), ("?", -1, "bad_frame"), ("cam1", 17, "bad_frame"),
                   ("cam2", 18, "anomaly")]
    assert all(v.decision == "reject" for v in verdicts[1:])
    assert "does not match camera cam1's configured 64x64 frames" in verdicts[1].detail
    assert "float32" in verdicts[4].detail
    assert "YUV422" in verdicts[5].detail and "payload" in verdicts[6].detail and "cam9" in verdicts[7].detail
    worker.close()


def test_backend_error_rejects_the_batch_and_the_worker_keeps_serving(make_config, rt) -> None:
    cfg = make_config(regions=REGIONS)
    det = rt.FailingDetector(rt.BrightnessDetector(), fail_calls={0})
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    batch = [(_parts("cam1", s, _halves(0, 0)), now_ns()) for s in range(3)]
    first = worker.process_batch(batch)
    assert [(v.decision, v.reason) for v in first] == [("reject", "error")] * 3
    assert "RuntimeError: backend failure on call 0" in first[0].detail
    second = worker.process_batch([(_parts("cam1", s, _halves(0, 0)), now_ns()) for s in range(3, 6)])
    assert [(v.seq, v.reason) for v in second] == [(3, "ok"), (4, "ok"), (5, "ok")]
    worker.close()


def test_non_finite_score_is_an_error_not_an_accept(make_config, rt) -> None:
    class NanDetector(rt.BrightnessDetector):  # type: ignore[name-defined,misc]
        def detect(self, images, masks=None, return_maps=False):  # type: ignore[no-untyped-def]
            d = super().detect(images, masks, return_maps)
            d.scores[:] = np.nan
            return d

    worker = InferWorker(make_config(), detectors={"demo": NanDetector()}, metrics_port=-1, bind=False)
    [v] = worker.process_batch([(_parts("cam1", 1, _halves(0, 0)), now_ns())])
    assert (v.decision, v.reason) == ("reject", "error") and "non-finite" in v.detail
    worker.close()


def test_rejects_are_saved_with_heatmap_overlays(make_config, rt, tmp_path: Path) -> None:
    cfg = make_config(regions=REGIONS)
    cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"reject_dir": tmp_path / "rej"})})
    worker = InferWorker(cfg, detectors={"demo": rt.BrightnessDetector()}, metrics_port=-1, bind=False)
    worker.process_batch([(_parts("cam2", 7, _halves(200, 0)), now_ns()), (_parts("cam1", 8, _halves(0, 0)), now_ns())])
    worker.close()  # waits for the writer
    import cv2

    files = sorted(p.name for p in (tmp_path / "rej").rglob("*") if p.is_file())
    assert files == ["000000007_107.json", "000000007_107.png", "000000007_107_overlay.png"]
    overlay = cv2.imread(str(tmp_path / "rej" / "cam2" / "000000007_107_overlay.png"))
    raw = cv2.imread(str(tmp_path / "rej" / "cam2" / "000000007_107.png"))
    assert overlay.shape == (64, 64, 3) and int(raw[10, 10, 0]) == 200
    assert not np.array_equal(overlay[10, 10], raw[10, 10])  # the jet colour map was blended in


def test_worker_over_sockets_with_the_real_tiny_model(make_config, tiny_model_dir: Path, rt) -> None:
    cfg = make_config(model_dir=tiny_model_dir, deadline_ms=60_000)  # a loaded CI box must not make frames stale
    ctx = zmq.Context()
    gate_sock = event_pull_bind(ctx, cfg.events_endpoint(), cfg.transport)
    worker = InferWorker(cfg, metrics_port=0)  # models opened through create_detector (backend auto)
    thread = threading.Thread(target=worker.run)
    thread.start()
    push = frame_push(ctx, cfg.frames_endpoint(), cfg.transport)
    push.setsockopt(zmq.SNDTIMEO, 10_000)
    rng = np.random.default_rng(0)
    n = 10
    try:
        for seq in range(n):
            if seq == 4:
                push.send_multipart([b"{bad", b"x"])
            elif seq == 7:
                push.send_multipart(_raw(_good_header(seq, camera="cam2", dtype="int32"), b"\0" * 64 * 64 * 3 * 4))
            else:
                push.send_multipart(_parts(f"cam{seq % 2 + 1}", seq, rng.integers(0, 255, (64, 64, 3), np.uint8)),
                                    copy=False)
        verdicts = []
        while len(verdicts) < n:
            assert gate_sock.poll(20_000), f"only {len(verdicts)} of {n} verdicts arrived"
            verdicts.append(decode_event(gate_sock.recv()))
    finally:
        worker.stop()
        thread.join(timeout=20)
        push.close(0)
        gate_sock.close(0)
        ctx.term()
    by_seq = {v.seq: v for v in verdicts}
    assert len(verdicts) == n and set(by_seq) == set(range(n)) - {4} | {-1}
    assert by_seq[-1].reason == "bad_frame" and (by_seq[7].camera, by_seq[7].reason) == ("cam2", "bad_frame")
    good = [v for v in verdicts if v.seq not in (-1, 7)]
    assert all(v.reason in ("ok", "anomaly") and v.model_version == "tiny/t1" for v in good)
    assert all(0.0 <= v.scores["vial"] <= 1.0 and v.thresholds == {"vial": 0.5} for v in good)
    assert all("sent" in v.timestamps for v in verdicts)


# -- end to end with real processes -------------------------------------------------------------------------

SLOW_WORKER = textwrap.dedent("""
    import signal, sys, time
    from linecam.backends.base import create_detector
    from linecam.config import load_config
    from linecam.runtime.infer import InferWorker

    class Slow:
        def __init__(self, inner, delay):
            self.inner, self.delay = inner, delay
            self.backend, self.model_version, self.input_size = inner.backend, inner.model_version, inner.input_size
        def detect(self, images, masks=None, return_maps=False):
            time.sleep(self.delay)
            return self.inner.detect(images, masks, return_maps)
        def close(self):
            self.inner.close()

    cfg = load_config(sys.argv[1])
    det = Slow(create_detector(cfg.models["demo"].path, backend="auto", threads=1), float(sys.argv[2]))
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=0)
    signal.signal(signal.SIGTERM, lambda *a: worker.stop())
    worker.run()
""")


class Line:
    """gate + infer as real child processes; the test itself plays acquire."""

    def __init__(self, cfg_path: Path, cfg: Any, rt: Any, tmp_path: Path, worker_delay: float | None) -> None:
        self.cfg = cfg
        env = rt.child_env()
        self.gate = subprocess.Popen([sys.executable, "-m", "linecam", "gate", "--config", str(cfg_path)], env=env,
                                     stderr=open(tmp_path / "gate.log", "w"))  # noqa: SIM115
        if worker_delay is None:
            cmd = [sys.executable, "-m", "linecam", "infer", "--config", str(cfg_path)]
        else:
            script = tmp_path / "slow_worker.py"
            script.write_text(SLOW_WORKER)
            cmd = [sys.executable, str(script), str(cfg_path), str(worker_delay)]
        self.infer = subprocess.Popen(cmd, env=env, stderr=open(tmp_path / "infer.log", "w"))  # noqa: SIM115
        runtime = cfg.runtime_path()
        rt.wait_for(lambda: (runtime / "events.sock").exists() and (runtime / "frames.sock").exists(),
                    timeout_s=120, what="gate and infer sockets")
        self.ctx = zmq.Context()
        self.events = event_push(self.ctx, cfg.events_endpoint(), cfg.transport)
        self.frames = frame_push(self.ctx, cfg.frames_endpoint(), cfg.transport)
        self.overloads = 0
        self.seq = 0
        time.sleep(0.2)  # let the frame connection complete (IMMEDIATE would refuse the first frames)

    def offer(self, image: np.ndarray, deadline_ms: float) -> None:
        """What acquire does: announce, then offer NOBLOCK; on a full worker tell the gate 'overload'."""
        seq, t = self.seq, now_ns()
        self.seq += 1
        self.events.send(encode_event(Announcement(camera="cam1", seq=seq, slot=seq, t_capture_ns=t,
                                                   deadline_ns=t + int(deadline_ms * 1e6))))
        try:
            self.frames.send_multipart(_parts("cam1", seq, image), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.overloads += 1
            self.events.send(encode_event(Overload(camera="cam1", seq=seq, slot=seq, t_ns=now_ns())))

    def audit(self) -> list[dict[str, Any]]:
        path = self.cfg.audit_log_path()
        return read_audit(path) if path.exists() else []

    def close(self) -> None:
        self.events.close(0)
        self.frames.close(0)
        self.ctx.term()
        for proc in (self.infer, self.gate):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.infer, self.gate):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _line(make_config, tiny_model_dir: Path, tmp_path: Path, rt, worker_delay: float | None, size: int = 64,
          deadline_ms: float = 2000) -> Line:
    cfg = make_config(model_dir=tiny_model_dir, cameras=1, width=size, height=size, deadline_ms=deadline_ms)
    doc = rt.line_dict(tiny_model_dir, cfg.runtime_path(), cameras=1, width=size, height=size,
                       deadline_ms=deadline_ms, warmup=True)
    doc["infer"]["max_batch"] = 2
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Line(path, cfg, rt, tmp_path, worker_delay)


def test_end_to_end_every_frame_gets_one_audit_line_and_killed_worker_times_out(
        make_config, tiny_model_dir: Path, tmp_path: Path, rt) -> None:
    line = _line(make_config, tiny_model_dir, tmp_path, rt, worker_delay=0.3, deadline_ms=4000)
    rng = np.random.default_rng(1)
    try:
        for _ in range(8):  # paced: the slow worker keeps up
            line.offer(rng.integers(0, 255, (64, 64, 3), np.uint8), 4000)
            time.sleep(0.2)
        rt.wait_for(lambda: len(line.audit()) == 8, timeout_s=60, what="8 audit lines")
        for _ in range(6):  # frames in flight when the worker dies
            line.offer(rng.integers(0, 255, (64, 64, 3), np.uint8), 4000)
        time.sleep(0.1)
        line.infer.send_signal(signal.SIGKILL)
        line.infer.wait(timeout=10)
        rt.wait_for(lambda: len(line.audit()) == 14, timeout_s=30, what="14 audit lines")
    finally:
        line.close()
    records = line.audit()
    assert sorted(r["seq"] for r in records) == list(range(14))  # exactly one line each, nothing lost
    first = [r["reason"] for r in records if r["seq"] < 8]
    assert set(first) <= {"ok", "anomaly"}
    late = {r["seq"]: r["reason"] for r in records if r["seq"] >= 8}
    assert "timeout" in late.values() and set(late.values()) <= {"ok", "anomaly", "timeout", "overload"}
    assert all(r["decision"] == "reject" for r in records if r["reason"] == "timeout")


def test_overloaded_worker_yields_overload_rejects_and_bounded_memory(
        make_config, tiny_model_dir: Path, tmp_path: Path, rt) -> None:
    size = 512  # 768 KiB frames: an unbounded queue of 300 would hold ~230 MiB
    line = _line(make_config, tiny_model_dir, tmp_path, rt, worker_delay=0.2, size=size, deadline_ms=5000)
    image = np.full((size, size, 3), 90, np.uint8)
    n = 300
    try:
        line.offer(image, 5000)
        rt.wait_for(lambda: len(line.audit()) == 1, timeout_s=60, what="the first verdict")
        baseline = rt.rss_kib(line.infer.pid)
        for _ in range(n - 1):
            line.offer(image, 5000)
        peak = rt.rss_kib(line.infer.pid)
        rt.wait_for(lambda: len(line.audit()) == n, timeout_s=90, what=f"{n} audit lines")
        peak = max(peak, rt.rss_kib(line.infer.pid))
    finally:
        line.close()
    records = line.audit()
    assert sorted(r["seq"] for r in records) == list(range(n))
    reasons = [r["reason"] for r in records]
    assert reasons.count("overload") == line.overloads and line.overloads > n // 2
    print(f"overloads={line.overloads}/{n} rss_baseline={baseline}KiB peak={peak}KiB")
    assert (peak - baseline) < 64 * 1024, f"worker RSS grew {(peak - baseline) / 1024:.0f} MiB"


def test_warm_up_runs_full_batches_before_serving_without_counting_them(make_config, rt) -> None:
    cfg = make_config(regions=REGIONS)
    cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"warmup": True})})
    det = rt.BrightnessDetector()
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    # every batch size 1..max_batch=4 (jit backends specialise per shape), 2 regions per frame, twice each,
    # then six full batches (one untimed, five timed) for the throughput the supervisor fits the demo's rate to
    assert det.calls == [2, 2, 4, 4, 6, 6, 8, 8] + [8] * 6
    assert worker.capacity is not None and worker.capacity.batch == 4 and worker.capacity.frames_per_s > 0
    assert worker.metrics.frames.labels(camera="cam1")._value.get() == 0
    worker.close()


def test_frames_past_their_deadline_are_not_inferred(make_config, rt) -> None:
    cfg = make_config(deadline_ms=300)
    det = rt.BrightnessDetector()
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    image = _halves(0, 0)
    old = FrameHeader(camera="cam1", seq=1, slot=1, t_capture_ns=now_ns() - 400_000_000, shape=image.shape,
                      dtype="uint8", pixel_format="RGB8")
    v_old, v_new = worker.process_batch([(encode_frame(old, image), now_ns()), (_parts("cam1", 2, image), now_ns())])
    assert (v_old.decision, v_old.reason) == ("reject", "timeout") and "stale" in v_old.detail
    assert v_new.reason == "ok" and det.calls == [1]  # only the fresh frame reached the detector
    worker.close()


def test_the_deadline_stamped_at_capture_decides_staleness(make_config, rt) -> None:
    """The worker sheds on the header's deadline (set by acquire), not on its own idea of the deadline."""
    cfg = make_config(deadline_ms=300)
    det = rt.BrightnessDetector()
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    image = _halves(0, 0)
    fresh_capture = now_ns()
    due_passed = FrameHeader(camera="cam1", seq=1, slot=1, t_capture_ns=fresh_capture, deadline_ns=fresh_capture - 1,
                             shape=image.shape, dtype="uint8", pixel_format="RGB8")
    v = worker.process_batch([(encode_frame(due_passed, image), now_ns())])[0]
    assert (v.decision, v.reason) == ("reject", "timeout") and det.calls == []
    worker.close()


def _aged(seq: int, age_ms: float, image: np.ndarray) -> list[Any]:
    header = FrameHeader(camera="cam1", seq=seq, slot=seq, t_capture_ns=now_ns() - int(age_ms * 1e6),
                         shape=image.shape, dtype="uint8", pixel_format="RGB8")
    return encode_frame(header, image)


def test_frames_that_would_finish_late_are_shed_earliest_due_first(make_config, rt) -> None:
    cfg = make_config(deadline_ms=1000)
    det = rt.BrightnessDetector()
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    worker.crop_cost_ns = 100e6  # as if live batches had cost 100 ms per crop
    image = _halves(0, 0)
    # due in ~250, ~200 (the earliest) and ~300 ms. Three crops would end at ~300 ms, after the 200 ms one;
    # without it two crops end at ~200 ms, before the other two are due: exactly one frame is shed.
    now = now_ns()
    verdicts = worker.process_batch([(_aged(1, 750, image), now), (_aged(2, 800, image), now),
                                     (_aged(3, 700, image), now)])
    assert [(v.seq, v.reason) for v in verdicts] == [(1, "ok"), (2, "timeout"), (3, "ok")]
    assert verdicts[1].detail.startswith("shed: inference would end") and "100.0 ms per crop" in verdicts[1].detail
    assert det.calls == [2]  # the shed frame never reached the detector
    worker.close()


def test_a_too_high_cost_estimate_still_infers_one_frame_per_batch_and_recovers(make_config, rt) -> None:
    cfg = make_config(deadline_ms=1000)
    det = rt.BrightnessDetector()
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    worker.crop_cost_ns = 5e9  # one slow batch made the estimate absurd: every frame looks late
    image = _halves(0, 0)
    for batch in range(3):
        now = now_ns()
        verdicts = worker.process_batch([(_aged(10 * batch + 1, 200, image), now),
                                         (_aged(10 * batch + 2, 100, image), now)])
        # the earliest-due frame is shed on the prediction; the latest-due one is inferred and measured
        assert [v.reason for v in verdicts] == ["timeout", "ok"]
        assert verdicts[0].detail.startswith("shed:")
    assert det.calls == [1, 1, 1]
    # each measured batch pulls the estimate toward the real cost (0.2 per batch): 5 s * 0.8^3 + measured
    assert worker.crop_cost_ns < 5e9 * 0.8**3 + 0.1e9
    # once the estimate has come down no frame is shed on prediction any more
    for _ in range(40):
        worker.process_batch([(_aged(99, 100, image), now_ns())])
    now = now_ns()
    verdicts = worker.process_batch([(_aged(100, 200, image), now), (_aged(101, 100, image), now)])
    assert [v.reason for v in verdicts] == ["ok", "ok"]
    worker.close()


def test_shed_late_false_sheds_only_frames_past_their_deadline(make_config, rt) -> None:
    cfg = make_config(deadline_ms=1000)
    cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"shed_late": False})})
    det = rt.BrightnessDetector()
    worker = InferWorker(cfg, detectors={"demo": det}, metrics_port=-1, bind=False)
    worker.crop_cost_ns = 100e6
    image = _halves(0, 0)
    now = now_ns()
    verdicts = worker.process_batch([(_aged(1, 750, image), now), (_aged(2, 800, image), now),
                                     (_aged(3, 1100, image), now)])
    assert [(v.seq, v.reason) for v in verdicts] == [(1, "ok"), (2, "ok"), (3, "timeout")]
    assert "stale" in verdicts[2].detail and det.calls == [2]
    worker.close()


def test_crop_cost_is_learned_from_live_batches_not_from_the_warm_up(make_config, rt) -> None:
    cfg = make_config(deadline_ms=1000)
    cfg = cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"warmup": True})})
    worker = InferWorker(cfg, detectors={"demo": rt.BrightnessDetector()}, metrics_port=-1, bind=False)
    assert worker.crop_cost_ns is None  # warm-up batches (compile time) leave no estimate behind
    image = _halves(0, 0)
    # with no estimate yet, a frame due soon is still inferred: only frames past their deadline are shed
    (v,) = worker.process_batch([(_aged(1, 900, image), now_ns())])
    assert (v.reason, v.detail) == ("ok", "")
    assert worker.crop_cost_ns is not None and worker.crop_cost_ns > 0
    worker.close()


def test_backend_options_reach_the_backend_and_bad_ones_name_the_field(make_config, tiny_model_dir: Path) -> None:
    cfg = make_config(model_dir=tiny_model_dir)
    exact = cfg.model_copy(update={"infer": cfg.infer.model_copy(
        update={"backend": "torch-cpu", "backend_options": {"precision": "fp32", "mode": "eager"}})})
    detectors = load_detectors(exact)
    try:
        det = detectors["demo"]
        assert (det.precision, det.mode) == ("fp32", "eager")  # type: ignore[attr-defined]
        image = np.random.default_rng(1).integers(0, 255, (1, 64, 64, 3), np.uint8)
        assert np.isfinite(det.detect(image).scores).all()
    finally:
        for det in detectors.values():
            det.close()
    wrong = cfg.model_copy(update={"infer": cfg.infer.model_copy(
        update={"backend": "torch-cpu", "backend_options": {"colour": "blue"}})})
    with pytest.raises(ValueError, match="infer.backend_options.*colour"):
        load_detectors(wrong)
