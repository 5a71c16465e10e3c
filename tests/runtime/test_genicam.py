"""The GenICam source against the real simulated GenTL producer shipped in the genicam wheel (viky.cti)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import genicam
import pytest
import yaml
import zmq

from linecam.config import TransportConfig
from linecam.config.sources import GenicamSourceConfig, TriggerConfig
from linecam.runtime.messages import Announcement, Overload, decode_event, decode_frame
from linecam.runtime.sources import SourceError, create_source
from linecam.runtime.transport import event_pull_bind, frame_pull_bind

VIKY = Path(os.path.dirname(genicam.__file__)) / "viky.cti"
pytestmark = pytest.mark.skipif(not VIKY.is_file(), reason="viky.cti not shipped with this genicam wheel")


def test_source_settings_frame_ids_and_timeouts() -> None:
    cfg = GenicamSourceConfig(cti=VIKY, serial="1", pixel_format="Mono8", width=256, height=192, frame_rate=200,
                              trigger=TriggerConfig(mode="On", source="Software"), fetch_timeout_s=0.5)
    source = create_source(cfg)
    source.open()
    try:
        info = source.describe()
        assert info["device"]["id"] == "VikyTL_DEV_green"
        assert info["applied"] == {"PixelFormat": "Mono8", "Width": 256, "Height": 192, "AcquisitionFrameRate": 200.0}
        assert set(info["unavailable"]) == {"TriggerMode", "TriggerSource", "TriggerActivation"}
        frames = []
        while len(frames) < 60:
            frame = source.grab(0.5)
            if frame is not None:
                frames.append(frame)
        ids = [f.device_frame_id for f in frames]
        missing = (ids[-1] - ids[0] + 1) - len(ids)
        assert ids == sorted(set(ids))  # strictly increasing device frame ids
        # Every hole counted, exactly: how many a loaded CPU makes is the machine's business (bench/genicam_loss.py).
        assert source.describe()["frame_gaps"] == missing
        assert all(f.image.shape == (192, 256) and f.pixel_format == "Mono8" for f in frames)
        assert all(f.device_timestamp_ns is None for f in frames)  # viky: "timestamps not supported"
        assert frames[-1].t_capture_ns > frames[0].t_capture_ns  # host clock instead
        source.stop()  # acquisition stopped: no frame, and grab returns after its timeout
        t0 = time.monotonic()
        assert source.grab(0.2) is None
        assert 0.15 <= time.monotonic() - t0 < 1.5
        source.start()
        assert any(source.grab(0.5) is not None for _ in range(10))  # streaming again on the same acquirer
    finally:
        source.close()


def test_device_selection_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="serial='nope' matches 0"):
        create_source(GenicamSourceConfig(cti=VIKY, serial="nope")).open()
    with pytest.raises(SourceError, match="does not exist"):
        create_source(GenicamSourceConfig(cti=tmp_path / "none.cti")).open()
    with pytest.raises(ValueError, match="pixel_format"):
        create_source(GenicamSourceConfig(cti=VIKY, pixel_format="BayerRG8"))


def line_config(tmp_path: Path, formats: tuple[str, ...] = ("Mono8", "Mono8", "RGBa8")) -> Path:
    """A line config with one viky device per pixel format (cam0, cam1, ...) at 256x256 and 200 fps."""
    cameras = []
    for i, fmt in enumerate(formats):
        source = {"kind": "genicam", "cti": str(VIKY), "device_index": i, "pixel_format": fmt, "width": 256,
                  "height": 256, "frame_rate": 200, "fetch_timeout_s": 0.5, "num_buffers": 16}
        cameras.append({"name": f"cam{i}", "source": source,
                        "regions": [{"name": "all", "box": None, "model": "demo"}]})
    doc = {"line": {"name": "t", "station": "s"}, "runtime_dir": str(tmp_path / "run"),
           "models": {"demo": {"path": str(tmp_path / "model")}}, "cameras": cameras,
           "acquire": {"metrics_base_port": 0}}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class AcquireRun:
    """What the sockets of infer and gate saw from a set of acquire processes, and what each process said."""

    announced: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    overloads: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    outputs: dict[str, str] = field(default_factory=dict)
    returncodes: dict[str, int | None] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_acquire_processes(tmp_path: Path, formats: tuple[str, ...], seconds: float) -> AcquireRun:
    """Run one real acquire process per viky device for ``seconds`` into sockets bound here as infer and gate
    would bind them, then stop them with SIGTERM. Also used by bench/genicam_loss.py."""
    config = line_config(tmp_path, formats)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    ctx = zmq.Context()
    frames = frame_pull_bind(ctx, f"ipc://{run}/frames.sock", TransportConfig())
    events = event_pull_bind(ctx, f"ipc://{run}/events.sock", TransportConfig())
    names = [f"cam{i}" for i in range(len(formats))]
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "linecam", "acquire", "--config", str(config), "--camera", name, "--stats",
         str(tmp_path / f"{name}.json")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in names}
    result = AcquireRun()
    poller = zmq.Poller()
    poller.register(frames, zmq.POLLIN)
    poller.register(events, zmq.POLLIN)

    def pump(duration: float) -> None:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            for sock, _ in poller.poll(20):
                if sock is events:
                    event = decode_event(events.recv())
                    if isinstance(event, Announcement):
                        result.announced[event.camera].append(event.seq)
                    elif isinstance(event, Overload):
                        result.overloads[event.camera] += 1
                else:
                    header, image = decode_frame(frames.recv_multipart(copy=False))
                    result.received[header.camera].append((header.seq, image.shape, header.pixel_format))

    try:
        pump(seconds)
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            result.outputs[name], _ = proc.communicate(timeout=30)
        pump(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        frames.close(0)
        events.close(0)
        ctx.term()
    for name, proc in procs.items():
        result.returncodes[name] = proc.returncode
        stats_file = tmp_path / f"{name}.json"
        result.stats[name] = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    return result


def logged_gaps(output: str) -> int:
    """Frames an acquire process logged as lost (its ``N frame(s) lost before device frame`` lines)."""
    return sum(int(n) for n in re.findall(r"(\d+) frame\(s\) lost before device frame", output))


def test_three_devices_at_200_fps_through_acquire_processes(tmp_path: Path) -> None:
    """Three real acquire processes, one per simulated device, into sockets bound here as infer/gate would.

    What must hold on any machine: every frame announced once and in order, every gap in the device's frame ids
    counted and logged, exactly. How many frames a loaded 2-core machine loses is a figure of the machine, not
    a property of acquire: bench/genicam_loss.py measures it."""
    run = run_acquire_processes(tmp_path, ("Mono8", "Mono8", "RGBa8"), 5.0)
    for name, code in run.returncodes.items():
        assert code == 0, run.outputs[name]
        stats = run.stats[name]
        first = stats["first_seq"]  # every frame announced once, in order
        assert run.announced[name] == list(range(first, first + stats["announced"]))
        assert stats["announced"] == stats["offered"] + stats["overloads"]
        assert run.overloads[name] == stats["overloads"]
        assert stats["frame_gaps"] == logged_gaps(run.outputs[name]), run.outputs[name]  # counted = logged
        print(name, stats, "received", len(run.received[name]))
        assert stats["announced"] >= 50, stats  # the devices did stream (200 fps for 5 s)
        seqs = [s for s, _, _ in run.received[name]]
        assert seqs == sorted(set(seqs))  # no frame offered twice, none out of order
        assert len(seqs) >= stats["offered"] - 8  # at most the HWM lost at shutdown
        want = (256, 256, 4) if name == "cam2" else (256, 256)
        assert {(shape, fmt) for _, shape, fmt in run.received[name]} == {
            (want, "RGBa8" if name == "cam2" else "Mono8")}
