"""The message codec: round trips, zero-copy views, and every way a frame can be malformed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from linecam.runtime.messages import (
    Announcement,
    BadFrame,
    BadMessage,
    FrameHeader,
    Overload,
    Truth,
    Verdict,
    decode_event,
    decode_frame,
    encode_event,
    encode_frame,
    now_ns,
)


def _header(**over: object) -> FrameHeader:
    base: dict[str, object] = dict(camera="cam1", seq=7, slot=3, t_capture_ns=now_ns(), shape=(6, 5, 3),
                                   dtype="uint8", pixel_format="RGB8")
    base.update(over)
    return FrameHeader.model_validate(base)


def test_frame_round_trip_over_a_real_socket_keeps_pixels_and_identity() -> None:
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    image = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    header = _header(truth=Truth(line_label="defect", kind="particle"))
    push.send_multipart(encode_frame(header, image), copy=False)
    assert pull.poll(5000)
    got_header, got_image = decode_frame(pull.recv_multipart(copy=False))
    push.close(0)
    pull.close(0)
    assert got_header == header
    np.testing.assert_array_equal(got_image, image)
    assert not got_image.flags.writeable  # a view of the received buffer, not a copy


def test_encode_refuses_non_contiguous_and_mismatched_images() -> None:
    image = np.zeros((6, 10, 3), np.uint8)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        encode_frame(_header(), image)
    with pytest.raises(ValueError, match="header says"):
        encode_frame(_header(), np.zeros((6, 5), np.uint8))


def _parts(header: dict[str, object], payload: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), payload]


GOOD = dict(camera="cam2", seq=11, slot=4, t_capture_ns=1, shape=[2, 3], dtype="uint8", pixel_format="Mono8")


@pytest.mark.parametrize(
    ("change", "payload", "needle"),
    [
        ({}, b"\0" * 5, "payload has 5 bytes"),
        ({"dtype": "float32"}, b"\0" * 24, "dtype 'float32'"),
        ({"pixel_format": "YUV422"}, b"\0" * 6, "pixel_format 'YUV422'"),
        ({"pixel_format": "RGB8"}, b"\0" * 6, "needs 3 channels"),
        ({"schema_version": 99}, b"\0" * 6, "schema_version 99"),
        ({"shape": [0, 3]}, b"", "shape"),
        ({"seq": "x"}, b"\0" * 6, "header invalid (seq"),
    ],
)
def test_malformed_frames_raise_bad_frame_with_identity(change: dict[str, object], payload: bytes,
                                                        needle: str) -> None:
    header = {**GOOD, **change}
    with pytest.raises(BadFrame) as info:
        decode_frame(_parts(header, payload))
    assert needle in str(info.value)
    assert info.value.camera == "cam2"
    if "seq" not in change:
        assert info.value.seq == 11 and info.value.slot == 4


def test_garbage_header_and_wrong_part_count() -> None:
    with pytest.raises(BadFrame, match="not JSON"):
        decode_frame([b"\xff\x00garbage", b""])
    with pytest.raises(BadFrame, match="expected 2 message parts, got 1"):
        decode_frame([b"{}"])


def test_events_round_trip_and_bad_events_are_named() -> None:
    events = [
        Announcement(camera="c", seq=1, slot=1, t_capture_ns=5, deadline_ns=10),
        Overload(camera="c", seq=2, slot=2, t_ns=6),
        Verdict(camera="c", seq=1, slot=1, decision="reject", reason="anomaly", scores={"r": 0.9},
                thresholds={"r": 0.5}, model_version="demo/1", timestamps={"infer_done": 9}),
    ]
    for event in events:
        assert decode_event(encode_event(event)) == event
    with pytest.raises(BadMessage):
        decode_event(b'{"type": "verdict", "camera": "c"}')
    with pytest.raises(BadMessage):
        decode_event(b'{"type": "verdict", "camera": "c", "seq": 1, "slot": 1, "decision": "maybe", "reason": "ok"}')
