"""The protocol every camera source implements, and the small pieces sources share.

acquire only ever talks to a :class:`FrameSource`, so the genicam, synthetic and folder sources are
interchangeable and a new kind (e.g. a vendor SDK) is one new module plus one config model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from linecam.runtime.messages import PIXEL_FORMATS, Truth


class SourceError(RuntimeError):
    """The source cannot continue (device lost, producer error, unreadable file): acquire exits non-zero
    and the service manager restarts it. Never retried in a loop inside the process."""


class EndOfStream(Exception):
    """A finite source (a folder replayed without ``loop``) has delivered every frame: a clean stop."""


@dataclass
class GrabbedFrame:
    """One frame as a source delivers it.

    ``image`` is C-contiguous and owned by the source until ``hold`` (if set) is given the ZeroMQ
    MessageTracker of the zero-copy send: a source that reuses its buffers must not overwrite this one
    before the tracker is done.
    """

    image: np.ndarray
    pixel_format: str
    t_capture_ns: int
    device_frame_id: int | None = None
    device_timestamp_ns: int | None = None
    truth: Truth | None = None
    hold: Callable[[Any], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        channels = PIXEL_FORMATS.get(self.pixel_format)
        if channels is None:
            raise ValueError(f"pixel format {self.pixel_format!r} not in {sorted(PIXEL_FORMATS)}")
        got = 1 if self.image.ndim == 2 else self.image.shape[2]
        if self.image.ndim not in (2, 3) or got != channels:
            raise ValueError(f"{self.pixel_format} needs {channels} channel(s), image shape is {self.image.shape}")
        if not self.image.flags.c_contiguous:
            raise ValueError("source delivered a non-contiguous image; sources must hand out C-contiguous buffers")


@runtime_checkable
class FrameSource(Protocol):
    """What acquire needs from a camera."""

    def open(self) -> None:
        """Connect and start streaming. Raises :class:`SourceError` with the device/file named."""

    def grab(self, timeout_s: float) -> GrabbedFrame | None:
        """The next frame, or ``None`` when none arrived within ``timeout_s`` (never blocks longer).

        Raises :class:`SourceError` when the source is gone, :class:`EndOfStream` when it is exhausted.
        """

    def close(self) -> None:
        """Stop streaming and release the device; safe to call twice or after a failed ``open``."""

    def describe(self) -> dict[str, Any]:
        """Facts for logs and status: device identity, settings applied, settings unavailable, counters."""


class Pacer:
    """Releases frames at a fixed rate on the monotonic clock, like a free-running camera.

    Frames are due at ``t0 + n / fps``; when the producer falls behind, the schedule is reset instead of
    bursting to catch up (a real camera drops frames, it does not deliver them late in a rush).
    """

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.period_s = 1.0 / fps
        self._next: float | None = None

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the next frame is due; ``False`` (after sleeping ``timeout_s``) if it is not due yet."""
        now = time.monotonic()
        if self._next is None or now - self._next > self.period_s:
            self._next = now
        delay = self._next - now
        if delay > timeout_s:
            time.sleep(max(0.0, timeout_s))
            return False
        if delay > 0:
            time.sleep(delay)
        self._next += self.period_s
        return True


class BufferRing:
    """Preallocated frame buffers reused round-robin, never overwritten while ZeroMQ still reads them.

    A camera driver overwrites its own buffer once it is requeued, so the pixels are copied once into a
    buffer owned here; that buffer is then sent zero-copy. Each slot remembers the MessageTracker of its
    last send; a slot whose send is not done is skipped, and if every slot is busy a fresh array is
    allocated (counted in ``fallbacks``) rather than corrupting a frame in flight.
    """

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"ring depth must be >= 1, got {depth}")
        self.depth = depth
        self._buffers: list[np.ndarray | None] = [None] * depth
        self._trackers: list[Any] = [None] * depth
        self._next = 0
        self.fallbacks = 0

    def _free(self, i: int) -> bool:
        tracker = self._trackers[i]
        return tracker is None or bool(tracker.done)

    def take(self, shape: tuple[int, ...], dtype: np.dtype[Any] | str) -> tuple[np.ndarray, Callable[[Any], None]]:
        """A writable buffer of ``shape``/``dtype`` and the ``hold`` callback that pins it to a send."""
        for step in range(self.depth):
            i = (self._next + step) % self.depth
            if not self._free(i):
                continue
            buf = self._buffers[i]
            if buf is None or buf.shape != tuple(shape) or buf.dtype != np.dtype(dtype):
                buf = np.empty(shape, dtype=dtype)
                self._buffers[i] = buf
            self._trackers[i] = None
            self._next = (i + 1) % self.depth
            return buf, self._holder(i)
        self.fallbacks += 1
        return np.empty(shape, dtype=dtype), _ignore

    def _holder(self, i: int) -> Callable[[Any], None]:
        def hold(tracker: Any) -> None:
            self._trackers[i] = tracker

        return hold


def _ignore(_tracker: Any) -> None:
    """Hold callback for a buffer nobody reuses: nothing to track."""


class GapCounter:
    """Counts frames lost between the camera and us from the device's frame counter.

    A jump of the frame id by more than one means the camera exposed frames nobody received (buffers
    exhausted, link errors): products that passed the camera without an image.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self.gaps = 0

    def reset(self) -> None:
        """Forget the last id (after a stream restart the device counter may restart)."""
        self._last = None

    def update(self, frame_id: int | None) -> int:
        """Record ``frame_id``; returns how many frames were missed just before it."""
        if frame_id is None:
            return 0
        missed = 0
        if self._last is not None and frame_id > self._last + 1:
            missed = frame_id - self._last - 1
            self.gaps += missed
        self._last = frame_id
        return missed
