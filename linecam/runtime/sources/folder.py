"""Replays recorded images from a folder as a camera: for demos, regression runs and bench tests.

Files play in name order (or in ``labels.jsonl`` order for a linecam dataset, which also gives the truth
of each frame). An unreadable file stops the source with its name: a replay that silently skips frames
would report a pass rate for images it never inspected.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linecam.config.sources import FolderSourceConfig
from linecam.runtime.messages import Truth
from linecam.runtime.sources.base import EndOfStream, GrabbedFrame, Pacer, SourceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_replay(folder: Path) -> list[tuple[Path, Truth | None]]:
    """The files to replay with their truth, from ``labels.jsonl`` when present, else every image file."""
    if not folder.is_dir():
        raise SourceError(f"source.path: {folder} is not a directory")
    index = folder / "labels.jsonl"
    if index.is_file():
        items: list[tuple[Path, Truth | None]] = []
        for lineno, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                path = folder / entry["path"]
                truth = Truth(line_label=entry["line_label"], kind=str(entry.get("kind", entry["line_label"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise SourceError(f"{index}:{lineno}: bad entry ({exc})") from exc
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((path, truth))
    else:
        items = [(p, None) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not items:
        raise SourceError(f"source.path: {folder} holds no PNG/JPEG images")
    return items


def read_frame(path: Path) -> tuple[np.ndarray, str]:
    """Read one image as the camera would deliver it: Mono8/Mono16 (H, W), RGB8 or RGBa8 (H, W, C)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SourceError(f"{path}: not a readable image")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if image.dtype == np.uint8:
            return np.ascontiguousarray(image), "Mono8"
        if image.dtype == np.uint16:
            return np.ascontiguousarray(image), "Mono16"
    elif image.dtype == np.uint8 and image.shape[2] == 3:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), "RGB8"
    elif image.dtype == np.uint8 and image.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)), "RGBa8"
    raise SourceError(f"{path}: unsupported image layout {image.shape} {image.dtype}")


class FolderSource:
    """A :class:`~linecam.runtime.sources.base.FrameSource` replaying a folder at ``fps``."""

    def __init__(self, config: FolderSourceConfig) -> None:
        self.config = config
        self._items: list[tuple[Path, Truth | None]] = []
        self._pacer = Pacer(config.fps)
        self._index = 0
        self._pending: GrabbedFrame | None = None
        self.frames = 0
        self.loops = 0

    def open(self) -> None:
        self._items = list_replay(Path(self.config.path))

    def _load_next(self) -> GrabbedFrame:
        if self._index >= len(self._items):
            if not self.config.loop:
                raise EndOfStream(f"{self.config.path}: all {len(self._items)} images replayed")
            self._index = 0
            self.loops += 1
        path, truth = self._items[self._index]
        self._index += 1
        image, pixel_format = read_frame(path)
        return GrabbedFrame(image=image, pixel_format=pixel_format, t_capture_ns=0, truth=truth)

    def grab(self, timeout_s: float) -> GrabbedFrame | None:
        if not self._items:
            raise SourceError("folder source is not open")
        if self._pending is None:
            self._pending = self._load_next()
        if not self._pacer.wait(timeout_s):
            return None
        frame, self._pending = self._pending, None
        frame.t_capture_ns = time.time_ns()
        self.frames += 1
        return frame

    def close(self) -> None:
        self._items = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "path": str(self.config.path), "fps": self.config.fps, "loop": self.config.loop,
                "images": len(self._items), "frames": self.frames, "loops": self.loops}
