"""A received frame on its way to a verdict: decoded, checked against its camera's regions, converted to RGB.

Every later stage of the worker (shedding, inference, the verdict) fills in the same :class:`FrameItem`; a
frame that cannot be decoded or does not fit its regions carries its ``bad_frame`` reason from here on instead
of raising, so one hostile frame never stops the batch it arrived in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from linecam.config import LineConfig
from linecam.config.regions import RegionConfig
from linecam.runtime.messages import MAX_HEADER_BYTES, BadFrame, FrameHeader, FrameLimits, decode_frame
from linecam.runtime.regions import crop

__all__ = ["BadFrameLog", "FrameItem", "HasRegionConfig", "decode_item", "frame_limits", "to_rgb8"]

log = logging.getLogger(__name__)


def frame_limits(cfg: LineConfig) -> FrameLimits:
    """What a frame may claim on this line: only its cameras, each at its configured size where the config has
    one, and no buffer above the largest such frame (RGBa at 16 bit per channel, the widest layout) or, with a
    camera of unknown size, above ``transport.max_frame_bytes``."""
    sizes = {cam.name: cam.frame_size() for cam in cfg.cameras}
    cap = cfg.transport.max_frame_bytes
    known = [size for size in sizes.values() if size is not None]
    if len(known) == len(sizes):
        cap = min(cap, max(h * w * 4 * 2 for h, w in known))
    return FrameLimits(max_header_bytes=MAX_HEADER_BYTES, max_frame_bytes=cap, sizes=sizes)


class BadFrameLog:
    """Logs bad frames with their reason, at most ``burst`` lines per ``window_s`` seconds: a flood of hostile
    frames must not flood the journal (each one still gets its verdict and audit line)."""

    def __init__(self, burst: int = 10, window_s: float = 10.0) -> None:
        self.burst = burst
        self.window_s = window_s
        self._window_start = time.monotonic()
        self._logged = 0
        self.suppressed = 0

    def add(self, item: FrameItem) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            if self.suppressed:
                log.warning("%d more bad frame(s) in the last %.0f s were not logged", self.suppressed,
                            now - self._window_start)
            self._window_start, self._logged, self.suppressed = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning("bad frame camera=%.64s seq=%d: %s", item.camera, item.seq, item.detail[:300])
        else:
            self.suppressed += 1


def to_rgb8(image: np.ndarray, pixel_format: str) -> np.ndarray:
    """Any accepted camera frame -> (H, W, 3) uint8 RGB, the one layout the models and overlays use."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if pixel_format in ("Mono8", "Mono16"):
        return np.repeat(image, 3, axis=2)
    if pixel_format == "RGB8":
        return image
    if pixel_format == "BGR8":
        return image[:, :, ::-1]
    if pixel_format == "RGBa8":
        return image[:, :, :3]
    if pixel_format == "BGRa8":
        return image[:, :, 2::-1]
    raise ValueError(f"pixel_format {pixel_format!r} is not supported by the worker")


@dataclass
class FrameItem:
    """One received frame and what the worker found out about it so far."""

    camera: str
    seq: int
    slot: int
    received_ns: int
    header: FrameHeader | None = None
    rgb: np.ndarray | None = None
    reason: str = ""  # "" while inspectable; "bad_frame" / "error" / "timeout" once decided without a score
    detail: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)


class HasRegionConfig(Protocol):
    """A live region (the model set's) exposes its configuration."""

    config: RegionConfig


def decode_item(parts: Sequence[Any], received_ns: int, regions: Mapping[str, Sequence[HasRegionConfig]],
                limits: FrameLimits | None = None) -> FrameItem:
    """Decode one multipart frame into a :class:`FrameItem`; ``regions`` are the live regions per camera and
    ``limits`` what a frame may claim (:func:`frame_limits`). Never raises: a bad frame carries its reason."""
    try:
        header, image = decode_frame(parts, limits)
    except BadFrame as exc:
        return FrameItem(exc.camera, exc.seq, exc.slot, received_ns, reason="bad_frame", detail=exc.reason)
    item = FrameItem(header.camera, header.seq, header.slot, received_ns, header=header)
    camera_regions = regions.get(header.camera)
    if camera_regions is None:
        item.reason, item.detail = "bad_frame", f"camera {header.camera!r} is not in the line config"
        return item
    try:
        item.rgb = to_rgb8(image, header.pixel_format)
        for region in camera_regions:
            crop(item.rgb, region.config)  # checks the box fits this frame
    except ValueError as exc:
        item.reason, item.detail = "bad_frame", str(exc)
    return item
