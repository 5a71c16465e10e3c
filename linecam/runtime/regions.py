"""Inspection regions at run time: their masks read and their boxes cut out of a frame.

The regions themselves are configuration (:mod:`linecam.config.regions`). A frame that does not contain a
region's box cannot be inspected and is a ``bad_frame``, never a silently clipped crop.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from linecam.config.regions import RegionConfig, RegionError

__all__ = ["crop", "load_mask"]


def load_mask(path: Path) -> np.ndarray:
    """Read a mask PNG as uint8 (h, w), 0 = ignore; refuse a missing or unreadable file."""
    if not path.is_file():
        raise RegionError(f"{path}: mask file not found")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise RegionError(f"{path}: mask file is not a readable image")
    return mask


def crop(image: np.ndarray, region: RegionConfig) -> np.ndarray:
    """The region's pixels as (h, w, C) uint8 (a view when possible); ValueError if the box leaves the frame."""
    if image.ndim == 2:
        image = image[:, :, None]
    if region.box is None:
        return image
    x, y, w, h = region.box
    height, width = image.shape[:2]
    if x + w > width or y + h > height:
        raise ValueError(
            f"region {region.name!r} box {list(region.box)} does not fit a {width}x{height} frame"
        )
    return image[y : y + h, x : x + w]
