"""Validation of what a caller hands to :meth:`Detector.detect`, shared by every backend.

The worker turns a ``ValueError`` from here into a ``bad_frame`` verdict, so every message names the
argument and what was wrong with it. Only cheap checks and dtype/layout normalisation happen here; the
actual preprocessing (channels, resize, /255) runs inside each backend's graph on its device.
"""

from __future__ import annotations

import numpy as np

ALLOWED_CHANNELS = (1, 3, 4)


def check_images(images: object) -> np.ndarray:
    """Return ``images`` as a C-contiguous uint8 (N, H, W, C) array, or raise ``ValueError`` saying why not."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy array of shape (N, H, W, C), got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must have dtype uint8, got {images.dtype} (shape {images.shape})")
    if images.ndim != 4:
        raise ValueError(
            f"images must be 4-D (N, H, W, C) with C in {ALLOWED_CHANNELS}, got {images.ndim}-D shape "
            f"{images.shape}"
        )
    n, h, w, c = images.shape
    if c not in ALLOWED_CHANNELS:
        raise ValueError(
            f"images must have 1 (gray), 3 (RGB) or 4 (RGBa) channels in the last axis, got shape {images.shape}"
        )
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"images must not be empty, got shape {images.shape}")
    return np.ascontiguousarray(images)


def check_masks(masks: object, n_images: int) -> np.ndarray | None:
    """Return masks as float32 (M, 1, h, w) in [0, 1] with M in {1, n_images}, or None when none given.

    Accepted: bool, uint8 (0/1 or 0/255) or float in [0, 1]; shape (h, w) (one mask for the whole batch),
    (1, h, w) or (N, h, w). The size need not match the images: the graph resizes masks to the model size.
    """
    if masks is None:
        return None
    if not isinstance(masks, np.ndarray):
        raise ValueError(f"masks must be a numpy array of shape (N, h, w) or (h, w), got {type(masks).__name__}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, h, w) or (h, w), got shape {masks.shape}")
    if masks.shape[0] not in (1, n_images):
        raise ValueError(f"masks hold {masks.shape[0]} masks for {n_images} images; give 1 or {n_images}")
    if masks.shape[1] == 0 or masks.shape[2] == 0:
        raise ValueError(f"masks must not be empty, got shape {masks.shape}")
    if masks.dtype == np.bool_:
        out = masks.astype(np.float32)
    elif masks.dtype == np.uint8:
        out = masks.astype(np.float32)
        if out.max() > 1.0:
            out *= 1.0 / 255.0
    elif np.issubdtype(masks.dtype, np.floating):
        out = masks.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0:
            raise ValueError("float masks must hold finite values in [0, 1]")
    else:
        raise ValueError(f"masks must be bool, uint8 or float, got dtype {masks.dtype}")
    return np.ascontiguousarray(out[:, None])
