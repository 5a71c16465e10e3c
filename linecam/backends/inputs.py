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


def to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 with C in 1, 3, 4 -> contiguous (N, H, W, 3): gray replicated, alpha dropped."""
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 1:
        return np.ascontiguousarray(np.broadcast_to(images, (*images.shape[:3], 3)))
    return np.ascontiguousarray(images[..., :3])


class GraphFeeds:
    """The two inputs of the exported graph for one :meth:`Detector.detect` call, for backends that run
    ``model.onnx`` (onnxruntime, OpenVINO): validated RGB images and a float (N, 1, h, w) mask.

    The exported graph has a fixed channel count and always takes a mask; without a caller mask a cached
    all-ones mask at the model size is fed, so one graph serves both cases.
    """

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._ones: dict[int, np.ndarray] = {}

    def __call__(self, images: np.ndarray, masks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        imgs = to_rgb(check_images(images))
        n = imgs.shape[0]
        mask = check_masks(masks, n)
        if mask is None:
            mask = self._ones.get(n)
            if mask is None:
                mask = self._ones[n] = np.ones((n, 1, *self.input_size), dtype=np.float32)
        elif mask.shape[0] != n:
            mask = np.ascontiguousarray(np.broadcast_to(mask, (n, *mask.shape[1:])))
        return imgs, mask

    def clear(self) -> None:
        self._ones.clear()
