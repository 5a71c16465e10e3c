"""GRD-Net losses on hand-computed cases (paper eq. 1-9 and the learned-silence target)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from linecam.grdnet.losses import (
    LossWeights,
    adversarial_loss,
    contextual_loss,
    discriminative_loss,
    discriminator_loss,
    encoder_loss,
    focal_loss,
    generator_loss,
    overlap_loss,
    ssim,
)
from linecam.grdnet.model import GeneratorOutput


def test_focal_gamma0_is_bce() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 1, 8, 8, generator=g) * 0.98 + 0.01
    t = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    torch.testing.assert_close(focal_loss(p, t, gamma=0.0), F.binary_cross_entropy(p, t))
    # soft targets too
    ts = torch.rand(2, 1, 8, 8, generator=g)
    torch.testing.assert_close(focal_loss(p, ts, gamma=0.0), F.binary_cross_entropy(p, ts))


def test_focal_hand_values() -> None:
    p = torch.tensor([0.8, 0.3])
    t = torch.tensor([1.0, 0.0])
    # -(1-0.8)^2 log 0.8 and -(0.3)^2 log 0.7, mean
    expected = (-(0.2**2) * math.log(0.8) - 0.3**2 * math.log(0.7)) / 2
    assert abs(float(focal_loss(p, t, gamma=2.0)) - expected) < 1e-7
    expected_alpha = (-0.25 * 0.2**2 * math.log(0.8) - 0.75 * 0.3**2 * math.log(0.7)) / 2
    assert abs(float(focal_loss(p, t, gamma=2.0, alpha=0.25)) - expected_alpha) < 1e-7
    # saturated probabilities stay finite
    assert math.isfinite(float(focal_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]))))


def test_ssim_identity_and_noise() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert abs(float(ssim(x, x)) - 1.0) < 1e-5
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = float(ssim(x, noisy))
    assert s < 0.9
    noisier = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert float(ssim(x, noisier)) < s


def test_contextual_loss_hand_value() -> None:
    # constant images: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.5, 0.6
    x = torch.full((1, 1, 3, 3), a)
    x_hat = torch.full((1, 1, 3, 3), b)
    c1 = 0.01**2
    ssim_val = (2 * a * b + c1) / (a * a + b * b + c1)
    assert abs(float(ssim(x, x_hat)) - ssim_val) < 1e-6
    expected = 2.0 * 0.1 + 3.0 * (1.0 - ssim_val)
    assert abs(float(contextual_loss(x, x_hat, wa=2.0, wb=3.0)) - expected) < 1e-6


def test_generator_loss_combines_with_paper_weights() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 16, 16, generator=g)
    out = GeneratorOutput(
        x_hat=torch.rand(2, 3, 16, 16, generator=g),
        z=torch.randn(2, 4, 2, 2, generator=g),
        z_hat=torch.randn(2, 4, 2, 2, generator=g),
    )
    fr, ff = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    w = LossWeights()
    assert (w.w1, w.w2, w.w3, w.wa, w.wb) == (1.0, 50.0, 1.0, 1.0, 1.0)
    total, parts = generator_loss(x, out, fr, ff, w)
    expected = (
        adversarial_loss(fr, ff) + 50.0 * contextual_loss(x, out.x_hat, 1.0, 1.0) + encoder_loss(out.z, out.z_hat)
    )
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"adv", "l1", "ssim_loss", "con", "enc", "total"}
    assert abs(parts["enc"] - float(((out.z - out.z_hat) ** 2).mean())) < 1e-6


def test_discriminator_loss() -> None:
    assert abs(float(discriminator_loss(torch.zeros(4), torch.zeros(4))) - math.log(2)) < 1e-6
    assert float(discriminator_loss(torch.full((4,), 10.0), torch.full((4,), -10.0))) < 1e-4


def _case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    prob = (torch.rand(2, 1, 8, 8, generator=g) * 0.9 + 0.05).requires_grad_(True)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 1:4, 1:4] = 1.0  # inside the ROI
    mask[:, :, 5:8, 5:8] = 1.0  # outside the ROI
    roi = torch.zeros(2, 1, 8, 8)
    roi[:, :, :5, :5] = 1.0
    return prob, mask, roi


def test_intersection_gives_no_gradient_outside_roi_learned_silence_does() -> None:
    prob, mask, roi = _case()
    discriminative_loss(prob, mask, roi, "intersection").backward()
    assert prob.grad is not None
    outside = roi == 0
    assert float(prob.grad[outside].abs().max()) == 0.0
    assert float(prob.grad[~outside].abs().min()) > 0.0

    prob2 = prob.detach().clone().requires_grad_(True)
    discriminative_loss(prob2, mask, roi, "learned_silence").backward()
    assert prob2.grad is not None
    assert float(prob2.grad[outside].abs().min()) > 0.0
    # learned silence: an anomaly outside the ROI has target 0, so the gradient pushes the map DOWN there
    assert float(prob2.grad[:, :, 6, 6].min()) > 0.0
    torch.testing.assert_close(discriminative_loss(prob2, mask, roi, "learned_silence"), focal_loss(prob2, mask * roi))


def test_overlap_hand_value() -> None:
    a = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).view(1, 1, 2, 2)
    roi = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    m = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    # |A n ROI| = 1, min(|A|=1.5, |ROI|=2) = 1.5 -> 0.5 * (1 - 1/1.5) = 1/6
    assert abs(float(overlap_loss(a, roi, 0.5)) - 1 / 6) < 1e-6
    total = discriminative_loss(a, m, roi, "overlap", overlap_weight=0.5)
    assert abs(float(total) - (float(focal_loss(a, m)) + 1 / 6)) < 1e-6
    inter = focal_loss(a * roi, m)
    io = discriminative_loss(a, m, roi, "intersection_overlap", overlap_weight=0.5)
    assert abs(float(io) - (float(inter) + 1 / 6)) < 1e-6
    # negated: 0.5 * |A n (1-ROI)| / min(|A|, |1-ROI|) = 0.5 * 0.5 / 1.5 = 1/6
    neg = discriminative_loss(a, m, roi, "negated_overlap", overlap_weight=0.5)
    assert abs(float(neg) - (float(inter) + 1 / 6)) < 1e-6


def test_no_roi_and_bad_variant() -> None:
    prob, mask, roi = _case()
    torch.testing.assert_close(discriminative_loss(prob, mask, None, "intersection"), focal_loss(prob, mask))
    with pytest.raises(ValueError, match="learned_silence"):
        discriminative_loss(prob, mask, roi, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="roi"):
        discriminative_loss(prob, mask, roi[:, :, :4], "intersection")
