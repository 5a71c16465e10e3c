"""Source plumbing: config validation, the pacer, the buffer ring with real ZeroMQ trackers, gap counting."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from pydantic import TypeAdapter, ValidationError

from linecam.config.sources import FolderSourceConfig, GenicamSourceConfig, SyntheticSourceConfig
from linecam.runtime.sources import GrabbedFrame, SourceConfig, create_source
from linecam.runtime.sources.base import BufferRing, GapCounter, Pacer

ADAPTER: TypeAdapter[object] = TypeAdapter(SourceConfig)


def test_union_picks_kind_and_refuses_unknown_keys() -> None:
    cfg = ADAPTER.validate_python({"kind": "genicam", "cti": "/x.cti", "trigger": {"mode": "On"}})
    assert isinstance(cfg, GenicamSourceConfig) and cfg.trigger is not None and cfg.trigger.source == "Line1"
    with pytest.raises(ValidationError, match="folder.bogus"):
        ADAPTER.validate_python({"kind": "folder", "path": "/tmp", "bogus": 1})
    with pytest.raises(ValidationError, match="synthetic.fps"):
        ADAPTER.validate_python({"kind": "synthetic", "fps": 0})
    with pytest.raises(ValidationError, match="trigger.mode"):
        ADAPTER.validate_python({"kind": "genicam", "cti": "x", "trigger": {"mode": "Maybe"}})


def test_create_source_maps_every_config_type() -> None:
    assert type(create_source(SyntheticSourceConfig())).__name__ == "SyntheticSource"
    assert type(create_source(FolderSourceConfig(path="/tmp"))).__name__ == "FolderSource"  # type: ignore[arg-type]
    assert type(create_source(GenicamSourceConfig(cti="/x.cti"))).__name__ == "GenicamSource"  # type: ignore[arg-type]


def test_grabbed_frame_refuses_inconsistent_images() -> None:
    with pytest.raises(ValueError, match="Mono8 needs 1"):
        GrabbedFrame(image=np.zeros((4, 4, 3), np.uint8), pixel_format="Mono8", t_capture_ns=1)
    with pytest.raises(ValueError, match="non-contiguous"):
        GrabbedFrame(image=np.zeros((4, 8), np.uint8)[:, ::2], pixel_format="Mono8", t_capture_ns=1)
    with pytest.raises(ValueError, match="pixel format"):
        GrabbedFrame(image=np.zeros((4, 4), np.uint8), pixel_format="Bayer", t_capture_ns=1)


def test_pacer_holds_rate_and_times_out() -> None:
    pacer = Pacer(50.0)
    t0 = time.monotonic()
    released = sum(pacer.wait(1.0) for _ in range(11))
    elapsed = time.monotonic() - t0
    assert released == 11
    assert elapsed == pytest.approx(10 / 50.0, abs=0.08)  # ten periods between eleven frames
    slow = Pacer(1.0)
    assert slow.wait(0.01)  # the first frame is due at once
    t0 = time.monotonic()
    assert slow.wait(0.05) is False  # the next one is a second away: give up after the timeout
    assert time.monotonic() - t0 >= 0.05


def test_gap_counter() -> None:
    gaps = GapCounter()
    assert [gaps.update(i) for i in (1, 2, 3, 7, 8, None, 9)] == [0, 0, 0, 3, 0, 0, 0]
    gaps.reset()
    assert gaps.update(1) == 0 and gaps.gaps == 3


def test_buffer_ring_never_reuses_a_buffer_zeromq_still_holds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Zero-copy sends queued towards a peer that is not there yet keep their buffers busy."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    pull = ctx.socket(zmq.PULL)
    endpoint = f"ipc://{tmp_path}/ring.sock"
    try:
        push.connect(endpoint)  # nobody bound yet: messages wait in the pipe, referencing our buffers
        ring = BufferRing(3)
        shape = (256, 512)  # 128 KiB: above zmq.COPY_THRESHOLD
        sent = []
        for value in range(3):
            buf, hold = ring.take(shape, np.uint8)
            buf.fill(value)
            hold(push.send(buf, copy=False, track=True))
            sent.append(buf)
        fresh, _ = ring.take(shape, np.uint8)
        assert ring.fallbacks == 1 and not any(fresh is b for b in sent)
        fresh.fill(99)  # scribbling on the fallback buffer must not touch the queued frames
        pull.bind(endpoint)
        pull.setsockopt(zmq.RCVTIMEO, 5000)
        got = [np.frombuffer(pull.recv(), np.uint8) for _ in range(3)]
        assert [int(g[0]) for g in got] == [0, 1, 2] and all((g == g[0]).all() for g in got)
        deadline = time.monotonic() + 5
        while not all(ring._free(i) for i in range(3)) and time.monotonic() < deadline:
            time.sleep(0.01)
        again, _ = ring.take(shape, np.uint8)  # ZeroMQ is done: the ring reuses its own buffers
        assert any(again is b for b in sent) and ring.fallbacks == 1
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
