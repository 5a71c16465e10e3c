"""Input validation shared by every backend: clear ValueErrors (the worker's bad_frame), mask conversions."""

from __future__ import annotations

import numpy as np
import pytest

from linecam.backends.inputs import check_images, check_masks


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((1, 8, 8, 3), np.float32), "dtype uint8"),
        (np.zeros((8, 8, 3), np.uint8), "4-D"),
        (np.zeros((1, 8, 8, 2), np.uint8), "channels"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
    ],
)
def test_bad_images_raise_value_error_naming_the_problem(images: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_images(images)


def test_images_become_c_contiguous() -> None:
    base = np.zeros((2, 8, 8, 4), np.uint8)
    out = check_images(base[:, :, ::2])
    assert out.flags.c_contiguous and out.shape == (2, 8, 4, 4)


def test_mask_conversions() -> None:
    m255 = np.zeros((8, 8), np.uint8)
    m255[:4] = 255
    out = check_masks(m255, n_images=3)
    assert out is not None and out.shape == (1, 1, 8, 8) and out.dtype == np.float32
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 7, 0] == 0.0
    m01 = check_masks((m255 > 0).astype(np.uint8)[None].repeat(3, 0), n_images=3)
    assert m01 is not None and m01.shape == (3, 1, 8, 8) and m01.max() == 1.0
    mbool = check_masks(m255 > 0, n_images=1)
    assert mbool is not None and np.array_equal(mbool, out)
    assert check_masks(None, n_images=2) is None


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        (np.ones((2, 8, 8), np.uint8), "2 masks for 3 images"),
        (np.ones((1, 1, 8, 8), np.uint8), "shape"),
        (np.full((8, 8), 2.0, np.float32), r"\[0, 1\]"),
        (np.ones((8, 8), np.int32), "dtype"),
    ],
)
def test_bad_masks_raise(masks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_masks(masks, n_images=3)
