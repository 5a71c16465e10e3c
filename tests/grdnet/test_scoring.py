"""The one scoring head: 21x21 mean (zero padding counted) of map*mask, then the maximum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linecam.grdnet.scoring import POOL_KERNEL, ScoringHead, score_maps, smooth_map


def brute_force_smooth(m: np.ndarray) -> np.ndarray:
    """Reference: 21x21 window mean with zeros outside the image, divisor always 441."""
    r = POOL_KERNEL // 2
    h, w = m.shape
    padded = np.zeros((h + 2 * r, w + 2 * r), dtype=np.float64)
    padded[r : r + h, r : r + w] = m
    out = np.empty((h, w))
    for y in range(h):
        for x in range(w):
            out[y, x] = padded[y : y + POOL_KERNEL, x : x + POOL_KERNEL].sum() / POOL_KERNEL**2
    return out


@pytest.mark.parametrize("shape", [(64, 64), (33, 47), (9, 13)])
def test_single_hot_pixel_scores_one_over_441(shape: tuple[int, int]) -> None:
    h, w = shape
    m = torch.zeros(2, 1, h, w)
    m[0, 0, h // 2, w // 2] = 1.0
    scores, smoothed = score_maps(m)
    torch.testing.assert_close(scores, torch.tensor([1 / 441, 0.0]), atol=1e-7, rtol=0)
    assert smoothed.shape == m.shape
    # the hot pixel spreads to its 21x21 neighbourhood (clipped to the frame)
    assert int((smoothed[0] > 0).sum()) == min(h, 21) * min(w, 21)


def test_hot_pixel_outside_mask_scores_zero() -> None:
    m = torch.zeros(1, 1, 40, 40)
    m[0, 0, 5, 5] = 1.0
    mask = torch.zeros(40, 40)
    mask[10:, 10:] = 1.0  # the hot pixel is 5 px from the mask, well within the 21x21 window
    scores, smoothed = score_maps(m, mask)
    assert float(scores[0]) == 0.0
    assert float(smoothed.abs().max()) == 0.0
    # without the mask the pixel scores, also inside the masked region (so the mask really acts before pooling)
    scores_nomask, smoothed_nomask = score_maps(m)
    assert float(smoothed_nomask[0, 0, 12, 12]) > 0


def test_agrees_with_brute_force_numpy() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 1, 30, 37)).astype(np.float32) ** 4
    mask = (rng.random((3, 1, 30, 37)) > 0.3).astype(np.float32)
    scores, smoothed = score_maps(torch.from_numpy(maps), torch.from_numpy(mask))
    for i in range(3):
        ref = brute_force_smooth(maps[i, 0].astype(np.float64) * mask[i, 0])
        np.testing.assert_allclose(smoothed[i, 0].numpy(), ref, atol=1e-6)
        assert abs(float(scores[i]) - ref.max()) < 1e-6


def test_module_matches_function_and_mask_forms() -> None:
    m = torch.rand(2, 1, 25, 25)
    mask = (torch.rand(25, 25) > 0.5).float()
    s1, _ = ScoringHead()(m, mask)
    s2, _ = score_maps(m, mask[None, None])
    s3, _ = score_maps(m, mask.expand(2, 1, 25, 25))
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(s1, s3)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        score_maps(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="mask shape"):
        score_maps(torch.rand(2, 1, 8, 8), torch.ones(8, 9))
    with pytest.raises(ValueError, match="smooth_map"):
        smooth_map(torch.rand(8, 8))
