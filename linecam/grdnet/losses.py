"""GRD-Net losses, as in the paper (eq. 1-9) plus the learned-silence ROI target.

Generator (eq. 2): ``w1*L_adv + w2*L_con + w3*L_enc`` with ``L_con = wa*L1 + wb*(1-SSIM)`` (eq. 1) and the
paper's weights (w1, w2, w3, wa, wb) = (1, 50, 1, 1, 1) (eq. 3). Discriminative U-Net: focal loss (eq. 4) with
one of the ROI variants of section 4.4.2 (see ``discriminative_loss``).

All losses compute in float32 even under bf16 autocast: SSIM variances and log-probabilities lose too much
precision in bf16.
"""

from __future__ import annotations

from typing import Literal, get_args

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from linecam.grdnet.model import GeneratorOutput

RoiVariant = Literal["overlap", "intersection", "intersection_overlap", "negated_overlap", "learned_silence"]
ROI_VARIANTS: tuple[str, ...] = get_args(RoiVariant)

_EPS = 1e-6


class LossWeights(pydantic.BaseModel, extra="forbid"):
    """Generator loss weights (paper eq. 3)."""

    w1: float = 1.0  # adversarial (feature matching)
    w2: float = 50.0  # contextual
    w3: float = 1.0  # encoder
    wa: float = 1.0  # L1 inside the contextual loss
    wb: float = 1.0  # 1-SSIM inside the contextual loss


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, window_size: int = 11) -> Tensor:
    """Mean SSIM of two (N,C,H,W) images in [0,1]: Gaussian window (sigma 1.5), valid region, data range 1.

    The one SSIM of the project (training loss, evaluation, reports). The window shrinks to the image for
    inputs smaller than ``window_size`` so tiny test tensors work.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim: expected two (N,C,H,W) tensors of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    a = a.float()
    b = b.float()
    size = min(window_size, int(a.shape[-2]), int(a.shape[-1]))
    if size % 2 == 0:
        size -= 1
    channels = int(a.shape[1])
    win = _gaussian_window(size, 1.5, channels, a.device)
    c1, c2 = 0.01**2, 0.03**2

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, win, groups=channels)

    mu_a, mu_b = filt(a), filt(b)
    # (Co)variances are shift-invariant: compute them on mean-centred images so E[x^2] - E[x]^2 does not
    # cancel catastrophically in float32 on flat regions.
    ac = a - a.mean(dim=(2, 3), keepdim=True)
    bc = b - b.mean(dim=(2, 3), keepdim=True)
    mu_ac, mu_bc = filt(ac), filt(bc)
    var_a = filt(ac * ac) - mu_ac**2
    var_b = filt(bc * bc) - mu_bc**2
    cov = filt(ac * bc) - mu_ac * mu_bc
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean()


def contextual_loss(x: Tensor, x_hat: Tensor, wa: float, wb: float) -> Tensor:
    """Eq. 1: ``wa*L1(x, x_hat) + wb*(1 - SSIM(x, x_hat))``; L1 keeps colours, SSIM keeps structure."""
    return wa * F.l1_loss(x_hat.float(), x.float()) + wb * (1.0 - ssim(x, x_hat))


def adversarial_loss(feat_real: Tensor, feat_fake: Tensor) -> Tensor:
    """GANomaly feature matching: mean squared distance between discriminator features of x and x_hat.

    Matching intermediate features instead of fooling the classifier is what keeps GANomaly's training
    stable. Pass ``feat_real`` detached when training the generator.
    """
    return F.mse_loss(feat_fake.float(), feat_real.float())


def encoder_loss(z: Tensor, z_hat: Tensor) -> Tensor:
    """L2 between the latent codes of x and x_hat (GANomaly encoder loss)."""
    return F.mse_loss(z_hat.float(), z.float())


def generator_loss(
    x: Tensor, out: GeneratorOutput, feat_real: Tensor, feat_fake: Tensor, w: LossWeights
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 2 with its parts for logging: keys adv, l1, ssim_loss, con, enc, total.

    ``x`` is the target: the clean image when the generator reconstructs a Perlin-augmented input.
    """
    adv = adversarial_loss(feat_real, feat_fake)
    l1 = F.l1_loss(out.x_hat.float(), x.float())
    ssim_l = 1.0 - ssim(x, out.x_hat)
    con = w.wa * l1 + w.wb * ssim_l
    enc = encoder_loss(out.z, out.z_hat)
    total = w.w1 * adv + w.w2 * con + w.w3 * enc
    parts = {
        "adv": float(adv.detach()),
        "l1": float(l1.detach()),
        "ssim_loss": float(ssim_l.detach()),
        "con": float(con.detach()),
        "enc": float(enc.detach()),
        "total": float(total.detach()),
    }
    return total, parts


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """BCE with logits, real -> 1 and fake -> 0, averaged over the two halves."""
    real = F.binary_cross_entropy_with_logits(logits_real.float(), torch.ones_like(logits_real, dtype=torch.float32))
    fake = F.binary_cross_entropy_with_logits(logits_fake.float(), torch.zeros_like(logits_fake, dtype=torch.float32))
    return 0.5 * (real + fake)


def focal_loss(prob: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = None) -> Tensor:
    """Focal loss (eq. 4) on probabilities, mean over all pixels.

    ``-[t (1-p)^g log p + (1-t) p^g log(1-p)]``, optionally weighted by ``alpha`` for t=1 and ``1-alpha`` for
    t=0. Probabilities are clamped to [1e-6, 1-1e-6] so saturated maps give finite values; gamma=0 (and no
    alpha) is exactly binary cross-entropy. Works for soft targets too.
    """
    if prob.shape != target.shape:
        raise ValueError(f"focal_loss: prob {tuple(prob.shape)} and target {tuple(target.shape)} differ")
    p = prob.float().clamp(_EPS, 1.0 - _EPS)
    t = target.float()
    pos = t * (1.0 - p) ** gamma * torch.log(p)
    neg = (1.0 - t) * p**gamma * torch.log1p(-p)
    if alpha is not None:
        pos = alpha * pos
        neg = (1.0 - alpha) * neg
    return -(pos + neg).mean()


def overlap_loss(prob_map: Tensor, region: Tensor, weight: float = 0.5) -> Tensor:
    """Eq. 8: ``w * (1 - |A n R| / min(|A|, |R|))`` per image with soft sets (sums), averaged over the batch.

    It pulls the map towards covering the region; the paper found it makes the whole ROI light up.
    """
    a = prob_map.float().flatten(1)
    r = region.float().flatten(1)
    inter = (a * r).sum(1)
    denom = torch.minimum(a.sum(1), r.sum(1)).clamp_min(_EPS)
    return (weight * (1.0 - inter / denom)).mean()


def _negated_overlap_loss(prob_map: Tensor, region: Tensor, weight: float) -> Tensor:
    """``w * |A n R| / min(|A|, |R|)``: penalises overlap of the map with ``region`` (here 1-ROI)."""
    a = prob_map.float().flatten(1)
    r = region.float().flatten(1)
    inter = (a * r).sum(1)
    denom = torch.minimum(a.sum(1), r.sum(1)).clamp_min(_EPS)
    return (weight * inter / denom).mean()


def discriminative_loss(
    prob_map: Tensor,
    mask: Tensor,
    roi: Tensor | None,
    variant: RoiVariant,
    gamma: float = 2.0,
    overlap_weight: float = 0.5,
) -> Tensor:
    """Loss of the discriminative U-Net for one of the ROI variants of the paper (4.4.2) or learned silence.

    Arguments are (N,1,H,W): ``prob_map`` the U-Net's sigmoid output A, ``mask`` the Perlin anomaly mask M,
    ``roi`` the per-image region of interest (``None``: no ROI, plain ``FL(A, M)``).

    * ``"overlap"`` (eq. 9): ``FL(A, M) + L_overlap(A, ROI)``. The authors' first idea to steer attention into
      the ROI; it makes the map tend towards ``w * ROI`` (the whole ROI glows), kept to reproduce the ablation.
    * ``"intersection"`` (eq. 5-6, the paper's best): ``FL(A*ROI, M)``. The literal product: pixels outside the
      ROI get exactly zero gradient, so the map there is never trained (neither to fire nor to stay silent).
    * ``"intersection_overlap"``: (2) + ``L_overlap(A, ROI)``, the paper's third trial.
    * ``"negated_overlap"``: ``FL(A*ROI, M)`` + the overlap term taken on ``1-ROI`` and negated, i.e.
      ``w * |A n (1-ROI)| / min(|A|, |1-ROI|)``: the paper's fourth trial, penalising activation outside the ROI.
    * ``"learned_silence"``: ``FL(A, M*ROI)`` on the full map. Anomalies outside the ROI get target 0 with a
      gradient everywhere, which is what teaches the U-Net to stay silent outside the region when no mask is
      given at inference (the authors' original TensorFlow target).
    """
    if variant not in ROI_VARIANTS:
        raise ValueError(f"unknown ROI loss variant {variant!r}; known: {', '.join(ROI_VARIANTS)}")
    if prob_map.shape != mask.shape:
        raise ValueError(f"discriminative_loss: map {tuple(prob_map.shape)} and mask {tuple(mask.shape)} differ")
    if roi is None:
        return focal_loss(prob_map, mask, gamma)
    if roi.shape != prob_map.shape:
        raise ValueError(f"discriminative_loss: roi {tuple(roi.shape)} and map {tuple(prob_map.shape)} differ")
    roi = roi.to(prob_map.dtype)
    if variant == "overlap":
        return focal_loss(prob_map, mask, gamma) + overlap_loss(prob_map, roi, overlap_weight)
    if variant == "learned_silence":
        return focal_loss(prob_map, mask * roi, gamma)
    inter = focal_loss(prob_map * roi, mask, gamma)
    if variant == "intersection":
        return inter
    if variant == "intersection_overlap":
        return inter + overlap_loss(prob_map, roi, overlap_weight)
    return inter + _negated_overlap_loss(prob_map, 1.0 - roi, overlap_weight)
