"""acquire as a real process: every frame announced, offered without blocking, overload on a full worker,
clean exit on SIGTERM, counters that add up."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
import zmq

from linecam.config import TransportConfig
from linecam.runtime.messages import Announcement, Overload, decode_event, decode_frame
from linecam.runtime.transport import event_pull_bind, frame_pull_bind


def _config(tmp_path: Path, source: dict[str, Any], deadline_ms: float = 300) -> Path:
    doc = {
        "line": {"name": "t", "station": "s"},
        "runtime_dir": str(tmp_path / "run"),
        "models": {"demo": {"path": str(tmp_path / "model")}},
        "cameras": [{"name": "cam1", "source": source, "regions": [{"name": "all", "box": None, "model": "demo"}]}],
        "gate": {"deadline_ms": deadline_ms},
        "acquire": {"metrics_base_port": 0},
    }
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Bench:
    """The two sockets acquire talks to, bound by the test as infer and gate would bind them."""

    def __init__(self, run_dir: Path) -> None:
        self.ctx = zmq.Context()
        cfg = TransportConfig()
        self.frames = frame_pull_bind(self.ctx, f"ipc://{run_dir}/frames.sock", cfg)
        self.events = event_pull_bind(self.ctx, f"ipc://{run_dir}/events.sock", cfg)
        self.announced: list[Announcement] = []
        self.overloads: list[Overload] = []
        self.stopped: list[Any] = []  # CameraStopped: acquire's goodbye on a clean stop
        self.received: list[Any] = []

    def pump(self, seconds: float, take_frames: bool = True) -> None:
        poller = zmq.Poller()
        poller.register(self.events, zmq.POLLIN)
        if take_frames:
            poller.register(self.frames, zmq.POLLIN)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for sock, _ in poller.poll(20):
                if sock is self.events:
                    event = decode_event(self.events.recv())
                    if isinstance(event, Announcement):
                        self.announced.append(event)
                    elif isinstance(event, Overload):
                        self.overloads.append(event)
                    else:
                        self.stopped.append(event)
                else:
                    header, image = decode_frame(self.frames.recv_multipart(copy=False))
                    self.received.append((header, image.copy()))

    def close(self) -> None:
        self.frames.close(0)
        self.events.close(0)
        self.ctx.term()


def _start(config: Path, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "linecam", "acquire", "--config", str(config), "--camera", "cam1",
                             "--stats", str(tmp_path / "stats.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_announce_offer_overload_and_clean_stop(tmp_path: Path) -> None:
    source = {"kind": "synthetic", "fps": 40, "width": 256, "height": 256, "defect_rate": 0.3, "seed": 5,
              "prerender": 6}
    config = _config(tmp_path, source)
    (tmp_path / "run").mkdir()
    bench = Bench(tmp_path / "run")
    proc = _start(config, tmp_path)
    try:
        bench.pump(3.0)  # a worker that keeps up
        taken = len(bench.received)
        bench.pump(1.5, take_frames=False)  # a stalled worker: the high-water mark fills up
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        bench.pump(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        bench.close()
    assert proc.returncode == 0, out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["reason"] == "stopped by SIGTERM"
    # every frame was announced, in sequence, before anything else happened to it
    first = stats["first_seq"]
    assert [a.seq for a in bench.announced] == list(range(first, first + stats["announced"]))
    assert stats["announced"] == stats["offered"] + stats["overloads"]
    assert stats["overloads"] == len(bench.overloads) > 0
    assert [e.camera for e in bench.stopped] == ["cam1"]  # the clean stop says goodbye (no stall reported)
    assert taken >= 60  # ~3 s at 40 fps while the worker kept up
    by_seq = {a.seq: a for a in bench.announced}
    for header, image in bench.received:
        a = by_seq[header.seq]
        assert a.t_capture_ns == header.t_capture_ns and a.truth == header.truth
        assert a.deadline_ns - a.t_capture_ns == 300_000_000
        assert header.deadline_ns == a.deadline_ns  # worked out once, at capture; the worker reads it
        assert image.shape == (256, 256, 3) and header.pixel_format == "RGB8"
    assert not {o.seq for o in bench.overloads} & {h.seq for h, _ in bench.received}
    assert len({a.truth.line_label for a in bench.announced if a.truth}) == 2


def test_folder_replay_ends_cleanly_and_unknown_camera_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        assert cv2.imwrite(str(images / f"{i:03d}.png"), np.full((40, 50), i * 10, np.uint8))
    config = _config(tmp_path, {"kind": "folder", "path": "images", "fps": 50, "loop": False})
    (tmp_path / "run").mkdir()
    bench = Bench(tmp_path / "run")
    proc = _start(config, tmp_path)
    try:
        out, _ = proc.communicate(timeout=30)
        bench.pump(0.5)
    finally:
        bench.close()
    assert proc.returncode == 0, out
    assert "end of stream" in out
    first = bench.announced[0].seq
    assert [a.seq - first for a in bench.announced] == [0, 1, 2, 3, 4]
    # the first frame may meet a connection still being set up (IMMEDIATE): then it is an overload, not lost
    assert len(bench.received) + len(bench.overloads) == 5 and len(bench.received) >= 3
    assert all(int(img[0, 0]) == 10 * (h.seq - first) for h, img in bench.received)  # small: copied, not tracked

    bad = subprocess.run([sys.executable, "-m", "linecam", "acquire", "--config", str(config), "--camera", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no camera 'nope'" in bad.stderr


def test_missing_source_exits_nonzero_naming_it(tmp_path: Path) -> None:
    config = _config(tmp_path, {"kind": "folder", "path": "absent", "fps": 5})
    done = subprocess.run([sys.executable, "-m", "linecam", "acquire", "--config", str(config), "--camera", "cam1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "absent" in done.stderr and "not a directory" in done.stderr


def test_a_restarted_acquire_never_repeats_an_id(tmp_path: Path) -> None:
    """kill -9 and restart of one acquire process: no (camera, seq) or PLC slot is announced twice."""
    source = {"kind": "synthetic", "fps": 40, "width": 64, "height": 64, "seed": 5, "prerender": 4}
    config = _config(tmp_path, source)
    (tmp_path / "run").mkdir()
    bench = Bench(tmp_path / "run")
    try:
        first = _start(config, tmp_path)
        bench.pump(2.0)
        first.send_signal(signal.SIGKILL)  # no clean shutdown, no chance to save anything
        first.wait(timeout=20)
        before = len(bench.announced)
        second = _start(config, tmp_path)
        bench.pump(2.0)
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=20)
        bench.pump(0.3)
    finally:
        for proc in ("first", "second"):
            p = locals().get(proc)
            if p is not None and p.poll() is None:
                p.kill()
        bench.close()
    assert before > 10 and len(bench.announced) - before > 10  # both processes ran
    seqs = [a.seq for a in bench.announced]
    slots = [a.slot for a in bench.announced]
    assert len(set(seqs)) == len(seqs) and len(set(slots)) == len(slots)
    assert min(seqs[before:]) > max(seqs[:before])  # the restarted process continues above the first one
