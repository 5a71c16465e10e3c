"""No frame, however hostile, stops the worker: every one becomes a ``bad_frame`` verdict with its reason.

The decoder is fuzzed with Hypothesis (arbitrary bytes, and valid headers with arbitrary fields), the frames that
killed the worker before are checked one by one, and a real worker process is fed the corpus over its socket
while it goes on scoring good frames.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linecam.runtime.frames import frame_limits
from linecam.runtime.infer import InferWorker
from linecam.runtime.messages import (
    MAX_HEADER_BYTES,
    Announcement,
    BadFrame,
    FrameLimits,
    decode_frame,
    encode_event,
    now_ns,
)
from tests.runtime.test_infer import _halves, _line, _parts

LIMITS = FrameLimits(max_frame_bytes=64 * 64 * 8, sizes={"cam1": (64, 64)})


def _header(**fields: Any) -> bytes:
    base = {"schema_version": 1, "camera": "cam1", "seq": 1, "slot": 1, "t_capture_ns": now_ns(), "shape": [64, 64, 3],
            "dtype": "uint8", "pixel_format": "RGB8"}
    base.update(fields)
    return json.dumps(base).encode()


def hostile_corpus() -> list[tuple[str, list[bytes]]]:
    """(what, multipart) of the frames found to stop the worker or to cost it memory, and their relatives."""
    good_pixels = bytes(64 * 64 * 3)
    return [
        ("2**32 x 2**32 shape", [_header(shape=[2**32, 2**32, 3]), good_pixels]),
        ("100,000 nested [", [b"[" * 100_000, good_pixels]),
        ("nested [ inside the header", [b'{"camera": "cam1", "seq": 2, "x": ' + b"[" * 2000 + b"]" * 2000 + b"}",
                                       good_pixels]),
        ("header of 1 MB", [_header(camera="c" * 1_000_000), good_pixels]),
        ("unknown camera", [_header(camera="intruder"), good_pixels]),
        ("another frame size", [_header(shape=[32, 32, 3]), bytes(32 * 32 * 3)]),
        ("negative side", [_header(shape=[-64, 64, 3]), good_pixels]),
        ("seq beyond int64", [_header(seq=2**80), good_pixels]),
        ("shape of strings", [_header(shape=["64", "x"]), good_pixels]),
        ("short payload", [_header(), good_pixels[:100]]),
        ("three parts", [_header(), good_pixels, b"x"]),
        ("one part", [_header()]),
        ("not UTF-8", [b"\xff\xfe\x00", good_pixels]),
        ("JSON list", [b"[1, 2, 3]", good_pixels]),
        ("NaN time", [_header(t_capture_ns=float("nan")).replace(b"NaN", b"NaN"), good_pixels]),
    ]


@pytest.mark.parametrize(("what", "parts"), hostile_corpus(), ids=[w for w, _ in hostile_corpus()])
def test_each_hostile_frame_is_a_bad_frame_with_a_reason(what: str, parts: list[bytes]) -> None:
    with pytest.raises(BadFrame) as info:
        decode_frame(parts, LIMITS)
    assert info.value.reason and len(str(info.value)) < 2000, what


def test_a_header_claiming_a_huge_frame_allocates_nothing() -> None:
    with pytest.raises(BadFrame, match="longer than 4096"):
        decode_frame([b" " * (MAX_HEADER_BYTES + 1), b""])
    with pytest.raises(BadFrame, match="needs .* bytes, more than"):
        decode_frame([_header(shape=[60_000, 60_000, 3]), b""], FrameLimits(max_frame_bytes=2**20))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.binary(max_size=6000), payload=st.binary(max_size=512), parts=st.integers(1, 3))
def test_fuzz_arbitrary_bytes_never_raise_anything_but_bad_frame(header: bytes, payload: bytes, parts: int) -> None:
    message = [header, payload, b""][:parts]
    with contextlib.suppress(BadFrame):
        decode_frame(message, LIMITS)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
FIELDS = st.sampled_from(["schema_version", "camera", "seq", "slot", "t_capture_ns", "deadline_ns", "shape",
                          "dtype", "pixel_format", "truth", "t_sent_ns", "extra"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.dictionaries(FIELDS, JSON_VALUES, max_size=4),
       shape=st.lists(st.integers(-(2**66), 2**66), max_size=4), payload_size=st.integers(0, 64 * 64 * 3 + 10))
def test_fuzz_valid_headers_with_arbitrary_fields(overrides: dict[str, Any], shape: list[int],
                                                  payload_size: int) -> None:
    header = json.loads(_header(shape=shape))
    header.update(overrides)
    try:
        raw = json.dumps(header).encode()
    except ValueError:
        return
    try:
        got, image = decode_frame([raw, bytes(payload_size)], LIMITS)
    except BadFrame:
        return
    # what passes is exactly what the line accepts: a configured camera at its size, the buffer it needs
    assert got.camera == "cam1" and image.shape[:2] == (64, 64) and image.nbytes == payload_size


def test_random_camera_names_do_not_create_metric_series(make_config, rt) -> None:
    worker = InferWorker(make_config(cameras=1), detectors={"demo": rt.BrightnessDetector()}, metrics_port=-1,
                         bind=False)
    try:
        rng = np.random.default_rng(0)
        image = _halves(10, 10)
        for batch in range(100):
            messages = [(_parts(f"x{rng.integers(1 << 60)}", batch * 200 + i, image), now_ns()) for i in range(200)]
            assert {v.reason for v in worker.process_batch(messages)} == {"bad_frame"}
        series = {s.labels["camera"] for m in worker.metrics.registry.collect() if m.name == "linecam_frames"
                  for s in m.samples if s.name == "linecam_frames_total"}
        assert series == {"unknown"}  # 20,000 random names, one series
        assert worker.bad_frames.suppressed > 0  # and the log did not get 20,000 lines
    finally:
        worker.close()


def test_a_running_worker_scores_good_frames_between_hostile_ones(make_config, tiny_model_dir: Path,
                                                                   tmp_path: Path, rt) -> None:
    line = _line(make_config, tiny_model_dir, tmp_path, rt, worker_delay=None, deadline_ms=5000)
    raw = line.ctx.socket(zmq.PUSH)  # a second, hostile sender on the worker's frame socket
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(line.cfg.frames_endpoint())
    rng = np.random.default_rng(3)
    try:
        for _what, parts in hostile_corpus():
            seq = line.seq
            line.seq += 1
            line.events.send(encode_event(Announcement(camera="cam1", seq=seq, slot=seq, t_capture_ns=now_ns(),
                                                       deadline_ns=now_ns() + 5_000_000_000)))
            try:
                identified = json.loads(parts[0])
                identified = (isinstance(identified, dict) and identified.get("camera") == "cam1"
                              and identified.get("seq") == 1)  # the corpus's own id: give it this frame's
            except (ValueError, RecursionError):
                identified = False
            if identified and len(parts[0]) < MAX_HEADER_BYTES:
                parts = [_header(**{**json.loads(parts[0]), "seq": seq, "slot": seq}), *parts[1:]]
            raw.send_multipart(parts)
            line.offer(rng.integers(0, 255, (64, 64, 3), np.uint8), 5000)
            time.sleep(0.05)
        oversize = [_header(seq=line.seq), bytes(10 * 2**20)]  # far above MAXMSGSIZE: cut by ZeroMQ, unread
        raw.send_multipart(oversize)
        for _ in range(5):
            line.offer(rng.integers(0, 255, (64, 64, 3), np.uint8), 5000)
            time.sleep(0.05)
        rt.wait_for(lambda: len(line.audit()) >= line.seq, timeout_s=90, what="an audit line per announced frame")
        assert line.infer.poll() is None, (tmp_path / "infer.log").read_text()[-3000:]  # still serving
        by_seq = {r["seq"]: r for r in line.audit()}
        good = [r for r in by_seq.values() if r["reason"] in ("ok", "anomaly")]
        reasons = sorted(r["reason"] for r in by_seq.values())
        # every good frame was scored (or refused by acquire's own high-water mark, as on any busy line)
        assert len(good) + line.overloads == len(hostile_corpus()) + 5, reasons
        assert "error" not in reasons
        bad = [r for r in by_seq.values() if r["reason"] == "bad_frame"]
        assert bad and all(r["detail"] for r in bad)  # the reason reaches the audit line
        assert "bad frame camera=" in (tmp_path / "infer.log").read_text()  # and the worker's log
    finally:
        raw.close(0)
        line.close()


def test_the_frames_socket_cuts_messages_far_beyond_any_frame(make_config, rt) -> None:
    cfg = make_config(cameras=2, width=64, height=48)
    worker = InferWorker(cfg, detectors={"demo": rt.BrightnessDetector()}, metrics_port=-1)
    try:
        limits = frame_limits(cfg)
        assert limits.sizes == {"cam1": (48, 64), "cam2": (48, 64)} and limits.max_frame_bytes == 48 * 64 * 4 * 2
        assert worker.frames_sock is not None
        assert worker.frames_sock.getsockopt(zmq.MAXMSGSIZE) == max(4 * limits.max_frame_bytes, 2**20)
    finally:
        worker.close()
