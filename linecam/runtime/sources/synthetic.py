"""The synthetic camera as a line source: rendered BFS vial strips at a fixed rate, with ground truth.

It lets the whole line (acquire -> infer -> gate) run on any machine, and because every frame carries its
truth, the demo can count true and false rejects live.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any

import numpy as np

from linecam.config.sources import SyntheticSourceConfig
from linecam.runtime.messages import Truth
from linecam.runtime.sources.base import GrabbedFrame, Pacer, SourceError

log = logging.getLogger(__name__)

#: CPU priority (niceness) of the thread that pre-renders the bank. Pre-rendering is start-up work, but the first
#: camera of a line starts streaming while the others still render: on the 2-core demo machine their rendering
#: took the CPU from the inference worker, and the first camera's frames timed out for about a second.
PRERENDER_NICENESS = 19
#: how long opening the source waits for the whole bank before it streams what it has (see _render_bank).
PRERENDER_WAIT_S = 2.0


def lower_thread_priority(niceness: int) -> None:
    """Raise the calling thread's niceness to ``niceness`` (Linux keeps one per thread; elsewhere do nothing:
    there ``setpriority`` on a thread id could hit the process that happens to have that number)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # a sandbox may forbid it; rendering at normal priority is still correct
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))


class SyntheticSource:
    """A :class:`~linecam.runtime.sources.base.FrameSource` over :class:`linecam.synth.camera.SyntheticCamera`."""

    def __init__(self, config: SyntheticSourceConfig) -> None:
        self.config = config
        self._camera: Any = None
        self._pacer = Pacer(config.fps)
        self._pending: GrabbedFrame | None = None
        self._bank: list[GrabbedFrame] = []
        self._render_thread: threading.Thread | None = None
        self.frames = 0
        self.defects = 0

    def open(self) -> None:
        from linecam.synth.camera import SyntheticCamera  # renderer pulls in cv2 and the product geometry

        c = self.config
        try:
            self._camera = SyntheticCamera(seed=c.seed, width=c.width, height=c.height, defect_rate=c.defect_rate,
                                           area=c.area, channels=c.channels, outside_roi_rate=c.outside_roi_rate)
        except (ValueError, KeyError) as exc:
            raise SourceError(f"source (synthetic): {exc}") from exc
        self._bank = self._render_bank(c.prerender)

    def _render_bank(self, count: int) -> list[GrabbedFrame]:
        """``count`` frames rendered in a background thread: the first at the caller's priority (the camera must
        stream), the others at the lowest. The caller waits for the whole bank at most ``PRERENDER_WAIT_S``; then
        the camera streams what is rendered while the rest follows (the returned list keeps growing).

        Why not wait for all: on a machine whose cores are taken by other work at normal priority, the lowest
        priority gets almost no CPU, and waiting for 64 frames took minutes: with two busy loops running, no
        synthetic camera of the demo sent READY within 120 s and the line did not start. A render error before
        the first frame re-raises here; a later one is logged and the camera replays the frames it has."""
        if not count:
            return []
        bank: list[GrabbedFrame] = []
        first_done = threading.Event()
        errors: list[BaseException] = []

        def keep(frame: GrabbedFrame) -> None:
            frame.image.flags.writeable = False  # replayed frames are sent zero-copy again and again
            bank.append(frame)

        def work() -> None:
            try:
                keep(self._render_live())
                first_done.set()
                lower_thread_priority(PRERENDER_NICENESS)
                for _ in range(count - 1):
                    if self._camera is None:  # closed meanwhile
                        return
                    keep(self._render_live())
            except Exception as exc:  # noqa: BLE001 - reported below or logged: rendering is best effort after frame 1
                errors.append(exc)
                if first_done.is_set():
                    log.warning("synthetic camera: pre-rendering stopped after %d frames: %s", len(bank), exc)
            finally:
                first_done.set()

        thread = threading.Thread(target=work, name="prerender", daemon=True)
        thread.start()
        self._render_thread = thread
        first_done.wait()
        if not bank:
            raise errors[0]
        thread.join(PRERENDER_WAIT_S)
        if thread.is_alive():
            log.warning("synthetic camera: %d of %d frames pre-rendered after %.0f s (the CPU is busy); streaming "
                        "now, the rest follows at low priority", len(bank), count, PRERENDER_WAIT_S)
        return bank

    def _render(self) -> GrabbedFrame:
        """The next frame: live, or a pre-rendered one (read-only, so sending it zero-copy again is safe)."""
        if not self._bank:
            return self._render_live()
        banked = self._bank[self.frames % len(self._bank)]
        return GrabbedFrame(image=banked.image, pixel_format=banked.pixel_format, t_capture_ns=0,
                            truth=banked.truth)

    def _render_live(self) -> GrabbedFrame:
        sample = self._camera.next_frame()
        image = np.ascontiguousarray(sample.image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = np.ascontiguousarray(image[:, :, 0])
        pixel_format = "Mono8" if image.ndim == 2 else "RGB8"
        truth = Truth(line_label=sample.line_label, kind=str(sample.kind))
        return GrabbedFrame(image=image, pixel_format=pixel_format, t_capture_ns=0, truth=truth)

    def grab(self, timeout_s: float) -> GrabbedFrame | None:
        """Render ahead, then release the frame when the frame clock says it is exposed."""
        if self._camera is None:
            raise SourceError("synthetic source is not open")
        if self._pending is None:
            self._pending = self._render()
        if not self._pacer.wait(timeout_s):
            return None
        frame, self._pending = self._pending, None
        frame.t_capture_ns = time.time_ns()
        self.frames += 1
        if frame.truth is not None and frame.truth.line_label == "defect":
            self.defects += 1
        return frame

    def close(self) -> None:
        """Stop pre-rendering and wait for its thread: a daemon thread still inside the renderer when the
        interpreter exits aborted the process (exit code -6 under CPU load, when the bank was still filling)."""
        self._camera = None
        thread = self._render_thread
        if thread is not None and thread.is_alive():
            if sys.platform.startswith("linux") and thread.native_id is not None:
                with contextlib.suppress(OSError):  # let it finish its frame at our priority, not the lowest
                    os.setpriority(os.PRIO_PROCESS, thread.native_id,
                                   os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            thread.join(timeout=10.0)
        self._render_thread = None
        self._bank = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "synthetic", **self.config.model_dump(), "frames": self.frames, "defects": self.defects}
