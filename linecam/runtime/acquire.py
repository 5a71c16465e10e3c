"""acquire@<camera>: one process per camera, from the source to the worker, announcing every frame.

Order matters and is the point of this module: each frame is first ANNOUNCED to the gate (with its
deadline), then offered to the worker without blocking. If the worker's high-water mark is reached the
frame is not queued: the gate is told ``overload`` at once and rejects that product. So the gate knows
every product that passed the camera, whatever happens downstream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from linecam.config import GateConfig, LineConfig
from linecam.files import atomic_write
from linecam.runtime import sdnotify
from linecam.runtime.messages import Announcement, CameraStopped, FrameHeader, Overload, encode_event, encode_frame
from linecam.runtime.metrics import LineMetrics, start_metrics_server
from linecam.runtime.sources import EndOfStream, FrameSource, GrabbedFrame, SourceError, create_source
from linecam.runtime.sources.base import GapCounter

log = logging.getLogger(__name__)

#: exit codes: 0 clean stop, 2 bad config/start-up, 3 source lost (systemd restarts the unit).
EXIT_OK, EXIT_START, EXIT_SOURCE_LOST = 0, 2, 3
#: longest wait inside one grab, so signals and the watchdog are served promptly.
MAX_GRAB_WAIT_S = 0.25
#: how long start-up waits for the worker's frame socket before streaming anyway.
WORKER_WAIT_S = 2.0


@dataclass
class AcquireStats:
    """Counters of one acquire run; written to ``--stats`` on exit so tests and the supervisor can check
    that the gate produced exactly one audit line per announced frame."""

    camera: str
    announced: int = 0
    offered: int = 0
    overloads: int = 0
    announce_failed: int = 0
    frame_gaps: int = 0
    first_seq: int = 0
    exit_code: int = 0
    reason: str = ""
    #: False in the snapshots written while running (a process killed with SIGKILL leaves its last one).
    complete: bool = False


class _StopFlag:
    """SIGTERM/SIGINT set a flag the loop checks: the frame in hand is finished, then the loop exits."""

    def __init__(self) -> None:
        self.stop = False
        self.signal_name = ""

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.stop = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


def boot_seq() -> int:
    """The first sequence number of this process: the wall clock in microseconds at start.

    Why: a restarted acquire process (kill -9, device loss, systemd restart) used to count from 0 again, so the
    audit log held the same (camera, seq) twice and the PLC was sent slot ids it had already seen. A camera sends
    far fewer than a million frames per second, so a process started later always starts above every id an
    earlier one used; nothing has to be stored. The PLC's 32-bit slot register takes the low bits, which repeat
    only after 71 minutes, far beyond any tracking window.
    """
    return time.time_ns() // 1000


class FrameSender:
    """Announce-then-offer for one camera over two already-connected sockets.

    Frames at or above ``zmq.COPY_THRESHOLD`` are sent zero-copy with a MessageTracker handed to the
    source's buffer ring (the ring must not reuse the buffer before ZeroMQ has sent it); smaller frames
    are copied, which is cheaper than tracking.
    """

    def __init__(self, camera: str, frames: zmq.Socket[Any], events: zmq.Socket[Any], gate: GateConfig,
                 metrics: LineMetrics) -> None:
        self.camera = camera
        self.frames = frames
        self.events = events
        self.gate = gate
        self.metrics = metrics
        self.stats = AcquireStats(camera=camera)
        self._gaps = GapCounter()
        self.seq = boot_seq()
        self.stats.first_seq = self.seq

    def handle(self, frame: GrabbedFrame) -> str:
        """Announce and offer one frame; returns ``offered``, ``overload`` or ``unannounced``."""
        seq = slot = self.seq
        self.metrics.frames.labels(camera=self.camera).inc()
        missed = self._gaps.update(frame.device_frame_id)
        if missed:
            self.stats.frame_gaps += missed
            self.metrics.frame_gaps.labels(camera=self.camera).inc(missed)
            log.warning("camera %s: %d frame(s) lost before device frame %s", self.camera, missed,
                        frame.device_frame_id)
        due_ns = self.gate.due_ns(frame.t_capture_ns)
        announcement = Announcement(camera=self.camera, seq=seq, slot=slot, t_capture_ns=frame.t_capture_ns,
                                    deadline_ns=due_ns, truth=frame.truth)
        try:
            self.events.send(encode_event(announcement), zmq.NOBLOCK)
        except zmq.Again:
            # The gate cannot even take events: offering the frame would create a verdict the gate never
            # expected. Drop it loudly; the PLC rejects the product for lack of a result.
            self.stats.announce_failed += 1
            log.error("camera %s seq %d: gate event queue full, frame dropped unannounced", self.camera, seq)
            return "unannounced"
        self.seq += 1
        self.stats.announced += 1
        t_sent_ns = time.time_ns()
        header = FrameHeader(camera=self.camera, seq=seq, slot=slot, t_capture_ns=frame.t_capture_ns,
                             deadline_ns=due_ns, t_sent_ns=t_sent_ns, shape=tuple(frame.image.shape),
                             dtype=str(frame.image.dtype), pixel_format=frame.pixel_format, truth=frame.truth)
        parts = encode_frame(header, frame.image)
        zero_copy = frame.image.nbytes >= zmq.COPY_THRESHOLD
        try:
            if zero_copy:
                tracker = self.frames.send_multipart(parts, flags=zmq.NOBLOCK, copy=False, track=True)
                if frame.hold is not None:
                    frame.hold(tracker)
            else:
                self.frames.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.stats.overloads += 1
            self.metrics.overload.labels(camera=self.camera).inc()
            overload = Overload(camera=self.camera, seq=seq, slot=slot, t_ns=time.time_ns())
            try:
                self.events.send(encode_event(overload), zmq.NOBLOCK)
            except zmq.Again:  # announced but neither offered nor rejected: the gate times it out
                log.error("camera %s seq %d: overload notice not sent, gate event queue full", self.camera, seq)
            return "overload"
        self.stats.offered += 1
        self.metrics.stage_latency.labels(stage="acquire").observe(max(0, t_sent_ns - frame.t_capture_ns) / 1e9)
        return "offered"


#: how often a running acquire writes its counters (a process killed without warning leaves the last ones).
SNAPSHOT_PERIOD_S = 0.5


def run_loop(source: FrameSource, sender: FrameSender, stop: _StopFlag, grab_timeout_s: float,
             watchdog: sdnotify.Watchdog, snapshot: Callable[[], None] | None = None) -> tuple[int, str]:
    """Grab and send until stopped; returns (exit code, reason)."""
    next_snapshot = time.monotonic()
    while not stop.stop:
        watchdog.tick()
        if snapshot is not None and time.monotonic() >= next_snapshot:
            snapshot()
            next_snapshot = time.monotonic() + SNAPSHOT_PERIOD_S
        try:
            frame = source.grab(grab_timeout_s)
        except EndOfStream as exc:
            return EXIT_OK, f"end of stream: {exc}"
        except SourceError as exc:
            return EXIT_SOURCE_LOST, f"source lost: {exc}"
        if frame is not None:
            sender.handle(frame)
    return EXIT_OK, f"stopped by {stop.signal_name or 'request'}"


def main(config: LineConfig, camera_name: str, stats_path: Path | None = None) -> int:
    """Run acquire for ``camera_name`` until SIGTERM/SIGINT, end of stream, or loss of the source."""
    camera = config.camera(camera_name)
    index = config.camera_index(camera_name)
    metrics = LineMetrics(deadline_s=config.gate.deadline_s)
    base = config.acquire.metrics_base_port
    port = start_metrics_server(metrics, base + index if base else 0, config.metrics_address,
                                process=f"acquire@{camera_name}",
                                key=f"acquire.metrics_base_port (+{index} for camera {camera_name})",
                                source=str(config.source_path or "the config"))
    log.info("acquire@%s: metrics on port %d", camera_name, port)

    ctx: zmq.Context[Any] = zmq.Context()
    source = create_source(camera.source)
    stats = AcquireStats(camera=camera_name)
    frames_sock = events_sock = None
    try:
        from linecam.runtime.transport import event_push, frame_push

        frames_sock = frame_push(ctx, config.frames_endpoint(), config.transport)
        events_sock = event_push(ctx, config.events_endpoint(), config.transport)
        stop = _StopFlag()
        stop.install()
        # With IMMEDIATE set, POLLOUT means a worker is connected: wait briefly (before the camera streams)
        # so the first frames are not overloads only because the connection was still being set up.
        if not frames_sock.poll(int(WORKER_WAIT_S * 1000), zmq.POLLOUT):
            log.warning("acquire@%s: no worker on %s after %.0f s; frames are overloads until it connects",
                        camera_name, config.frames_endpoint(), WORKER_WAIT_S)
        try:
            source.open()
        except SourceError as exc:
            log.error("acquire@%s: cannot open source: %s", camera_name, exc)
            stats.exit_code, stats.reason = EXIT_START, f"open failed: {exc}"
            return EXIT_START
        stop.install()  # again: creating a GenICam acquirer may have replaced the SIGINT handler
        log.info("acquire@%s: source %s", camera_name, json.dumps(source.describe(), default=str))
        sender = FrameSender(camera_name, frames_sock, events_sock, config.gate, metrics)
        grab_timeout = min(MAX_GRAB_WAIT_S, getattr(camera.source, "fetch_timeout_s", MAX_GRAB_WAIT_S))
        sdnotify.ready(f"acquire {camera_name}")
        snapshot = None
        if stats_path is not None:
            path = stats_path

            def snapshot() -> None:
                atomic_write(path, (json.dumps(asdict(sender.stats)) + "\n").encode())

        code, reason = run_loop(source, sender, stop, grab_timeout, sdnotify.Watchdog(), snapshot)
        sdnotify.stopping()
        stats = sender.stats
        stats.exit_code, stats.reason = code, reason
        log_fn = log.info if code == EXIT_OK else log.error
        log_fn("acquire@%s: %s; %s", camera_name, reason, json.dumps(asdict(stats)))
        return code
    finally:
        try:
            source.close()
        except Exception as exc:  # a failing close must not hide the real exit reason
            log.warning("acquire@%s: source close failed: %s", camera_name, exc)
        if events_sock is not None:  # on purpose: the gate stops watching this camera for stalls
            with contextlib.suppress(zmq.ZMQError):
                events_sock.send(encode_event(CameraStopped(camera=camera_name, t_ns=time.time_ns())), zmq.NOBLOCK)
        # Flush what is already queued (announced frames, overload notices) for at most one deadline:
        # bounded, so a dead peer cannot hang the exit, but a clean stop loses no announced frame.
        for sock in (events_sock, frames_sock):
            if sock is not None:
                sock.close(linger=int(config.gate.deadline_s * 1000))
        ctx.term()
        if stats_path is not None:
            stats.complete = True
            atomic_write(stats_path, (json.dumps(asdict(stats)) + "\n").encode())
