"""Perlin anomaly simulator: reproducibility, clean share, mask/pixel consistency, odd sizes."""

from __future__ import annotations

import pytest
import torch

from linecam.grdnet.perlin import AnomalySimulator, perlin_noise


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def test_perlin_noise_any_size_is_crop_of_padded_grid() -> None:
    a = perlin_noise((50, 47), (4, 4), torch.Generator().manual_seed(5))
    # cells span ceil(50/4)=13 and ceil(47/4)=12 px: the same noise as the padded 52x48 grid, cropped
    b = perlin_noise((52, 48), (4, 4), torch.Generator().manual_seed(5))
    assert a.shape == (50, 47)
    torch.testing.assert_close(a, b[:50, :47])
    # Perlin noise vanishes on the lattice points and stays bounded
    assert float(a[13 * 2, 12 * 3].abs()) < 1e-6 and float(a[0, 0].abs()) < 1e-6
    assert float(a.abs().max()) <= 1.05 and float(a.std()) > 0.05


def test_reproducible_from_generator() -> None:
    x = images(6, 40, 40)
    sim = AnomalySimulator()
    a1, m1 = sim(x, torch.Generator().manual_seed(7))
    a2, m2 = sim(x, torch.Generator().manual_seed(7))
    a3, m3 = sim(x, torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2) and torch.equal(m1, m2)
    assert not torch.equal(m1, m3)


@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (100, 30)])
def test_masks_binary_and_match_changed_pixels(shape: tuple[int, int]) -> None:
    h, w = shape
    x = images(24, h, w, seed=1)
    aug, mask = AnomalySimulator(clean_share=0.25)(x, torch.Generator().manual_seed(2))
    assert aug.shape == x.shape and mask.shape == (24, 1, h, w)
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert float(aug.min()) >= 0.0 and float(aug.max()) <= 1.0
    changed = (aug != x).any(dim=1, keepdim=True)
    inside = mask.bool()
    # outside the mask the image is bit-identical; inside (almost) every pixel changed
    assert not bool(changed[~inside].any())
    assert float(changed[inside].float().mean()) > 0.9
    # every sample is either untouched with an empty mask, or carries a non-empty anomaly
    per_sample = mask.flatten(1).sum(1)
    for i in range(24):
        if per_sample[i] == 0:
            assert torch.equal(aug[i], x[i])


def test_clean_share_respected() -> None:
    x = images(400, 24, 24, seed=3)
    for share in (0.0, 0.3, 1.0):
        _, mask = AnomalySimulator(clean_share=share)(x, torch.Generator().manual_seed(4))
        empty = float((mask.flatten(1).sum(1) == 0).float().mean())
        assert abs(empty - share) < 0.08, (share, empty)


def test_anomalies_cover_the_whole_frame() -> None:
    x = images(300, 32, 32, seed=5)
    _, mask = AnomalySimulator(clean_share=0.0)(x, torch.Generator().manual_seed(6))
    freq = mask.mean(dim=(0, 1))
    # every 8x8 tile of the frame (corners included) receives anomalies
    tiles = freq.view(4, 8, 4, 8).mean(dim=(1, 3))
    assert float(tiles.min()) > 0.4 * float(tiles.mean())
    # scales vary: both small and large blobs occur
    area = mask.flatten(1).mean(1)
    assert float(area.min()) < 0.05 and float(area.max()) > 0.2


def test_grayscale_and_bad_input() -> None:
    g = torch.Generator().manual_seed(0)
    aug, mask = AnomalySimulator(clean_share=0.0)(torch.rand(4, 1, 33, 33, generator=g), g)
    assert aug.shape == (4, 1, 33, 33) and bool((mask.flatten(1).sum(1) > 0).all())
    with pytest.raises(ValueError, match="float images"):
        AnomalySimulator()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), g)
    with pytest.raises(ValueError, match="clean_share"):
        AnomalySimulator(clean_share=1.5)
    with pytest.raises(ValueError, match="fill_modes"):
        AnomalySimulator(fill_modes=("texture",))


def test_gray_fill_changes_brightness_only() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.full((6, 3, 32, 32), 0.5)
    x[:, 0] = 0.45  # a tinted product, as the synthetic vials are
    aug, mask = AnomalySimulator(clean_share=0.0, fill_modes=("gray",), beta_range=(0.0, 0.0))(x, g)
    inside = mask.bool().expand_as(aug)
    filled = aug[inside].view(-1)
    assert filled.numel() > 0
    per_sample = aug.permute(0, 2, 3, 1)[mask[:, 0].bool()]  # (pixels, 3): every channel the same value
    assert torch.allclose(per_sample[:, 0], per_sample[:, 1]) and torch.allclose(per_sample[:, 1], per_sample[:, 2])
    assert torch.equal(aug[~inside], x[~inside])  # outside the mask the image is untouched


def _family_batch(family: str, n: int = 24, size: int = 128, seed: int = 11) -> tuple[torch.Tensor, ...]:
    x = torch.full((n, 3, size, size), 0.5) + 0.05 * images(n, size, size, seed=seed)
    sim = AnomalySimulator(clean_share=0.0, fill_modes=("solid",), shape_families=(family,))
    aug, mask = sim(x, torch.Generator().manual_seed(seed))
    return x, aug, mask


@pytest.mark.parametrize("family", ["perlin", "soft", "thin", "cluster"])
def test_every_family_marks_exactly_the_changed_pixels(family: str) -> None:
    x, aug, mask = _family_batch(family)
    changed = (aug != x).any(dim=1, keepdim=True)
    assert torch.equal(changed, mask.bool()), family
    assert bool((mask.flatten(1).sum(1) > 0).all()), f"{family}: a sample without an anomaly"


def test_thin_family_draws_lines_and_cluster_family_draws_several_small_specks() -> None:
    import cv2
    import numpy as np

    _, _, thin = _family_batch("thin")
    _, _, blobs = _family_batch("perlin")
    kernel = np.ones((3, 3), np.uint8)

    def eroded_share(masks: torch.Tensor) -> float:
        m = masks[:, 0].numpy().astype(np.uint8)
        kept = sum(int(cv2.erode(cv2.erode(s, kernel), kernel).sum()) for s in m)
        return kept / max(int(m.sum()), 1)

    # two 3x3 erosions remove (nearly) all of a 1-3 px line, little of a blob
    assert eroded_share(thin) < 0.1 < eroded_share(blobs)
    _, _, cluster = _family_batch("cluster")
    parts, spans = [], []
    for s in cluster[:, 0].numpy().astype(np.uint8):
        parts.append(cv2.connectedComponents(s)[0] - 1)
        ys, xs = np.nonzero(s)
        spans.append(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1)
    assert np.median(parts) >= 2  # several specks
    assert max(spans) <= 2 * (20 + 2.5) * 128 / 256 + 2  # within a few speck sizes of the centre


def test_soft_family_is_low_contrast_and_fades_at_the_edge() -> None:
    import cv2
    import numpy as np

    x, soft, soft_mask = _family_batch("soft")
    _, hard, hard_mask = _family_batch("perlin")
    delta_soft = (soft - x).abs().amax(dim=1)[soft_mask[:, 0].bool()]
    delta_hard = (hard - x).abs().amax(dim=1)[hard_mask[:, 0].bool()]
    assert float(delta_soft.mean()) < 0.6 * float(delta_hard.mean())
    # the change at the region's rim is smaller than in its core
    rim, core = [], []
    for i in range(len(x)):
        m = soft_mask[i, 0].numpy().astype(np.uint8)
        inner = cv2.erode(m, np.ones((9, 9), np.uint8)).astype(bool)
        d = (soft[i] - x[i]).abs().amax(dim=0).numpy()
        if inner.any() and (m.astype(bool) & ~inner).any():
            rim.append(d[m.astype(bool) & ~inner].mean())
            core.append(d[inner].mean())
    assert len(rim) >= 5 and np.mean(rim) < 0.7 * np.mean(core)


def test_default_simulator_unchanged_by_the_families() -> None:
    """A recipe without --shape-families draws exactly what it drew before the families existed."""
    x = images(8, 48, 48, seed=5)
    a1, m1 = AnomalySimulator()(x, torch.Generator().manual_seed(3))
    a2, m2 = AnomalySimulator(shape_families=("perlin",))(x, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2) and torch.equal(m1, m2)
    with pytest.raises(ValueError, match="shape_families"):
        AnomalySimulator(shape_families=("stripes",))


def test_a_repeated_family_name_weighs_that_family() -> None:
    """``perlin,perlin,perlin,soft,thin,cluster`` keeps blobs at half of the simulated defects."""
    sim = AnomalySimulator(shape_families=("perlin", "perlin", "perlin", "soft", "thin", "cluster"))
    masks, weight, family = sim.shapes(600, 32, 32, torch.Generator().manual_seed(9), torch.device("cpu"))
    assert family is not None and weight is not None
    names = [sim.shape_families[int(i)] for i in family]
    assert 0.44 < names.count("perlin") / 600 < 0.56
    assert all(0.12 < names.count(f) / 600 < 0.22 for f in ("soft", "thin", "cluster"))
    assert bool((masks.flatten(1).sum(1) > 0).all())
