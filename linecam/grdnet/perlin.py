"""Perlin-noise anomaly simulator (paper Fig. 1, after DRAEM).

Good images get synthetic defects: a Perlin noise field at a random scale is thresholded into a blob mask,
the blobs are filled with random RGB content and blended into the image; the mask is the pixel-perfect
target of the discriminative U-Net. A share of the samples stays clean so the U-Net also learns "nothing
here".

Everything is vectorised over the batch in torch (random gradient lattices for all samples at once, one
gather per lattice corner), so the simulator costs a few milliseconds per batch and never limits training.
Anomalies are placed anywhere in the frame, inside and outside any ROI, so that the ROI loss can teach the
U-Net silence outside the region.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

FILL_MODES = ("pixels", "solid", "smooth")
#: shape families of the simulated anomalies. "perlin" (thresholded Perlin blobs, the paper's and DRAEM's) is the
#: default; the others cover broad families of real surface and fill defects that blobs miss: "soft" (large,
#: low-contrast regions whose edge fades out), "thin" (curvilinear lines one to three pixels wide: the zero
#: crossings of a Perlin field, cut to a patch) and "cluster" (a handful of small specks close together).
SHAPE_FAMILIES = ("perlin", "soft", "thin", "cluster")
#: every fill the simulator knows; "gray" (one random luminance, equal in every channel) is opt-in: it makes
#: defects that differ from the product only in brightness, as on monochrome cameras.
ALL_FILL_MODES = (*FILL_MODES, "gray")


def _fade(t: Tensor) -> Tensor:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise_batch(
    shape: tuple[int, int],
    res_y: Tensor,
    res_x: Tensor,
    generator: torch.Generator,
    angle: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Perlin noise for a batch, each sample with its own lattice resolution and rotation -> (N, H, W).

    Sample i has ``res_y[i] x res_x[i]`` lattice cells over the frame. Each cell spans ``ceil(H/res)`` pixels,
    i.e. the noise of a grid padded to a multiple of ``res`` cropped to (H, W), so any size works. The lattice
    wraps around (tileable noise), which lets the sample coordinates be rotated by ``angle`` (radians) about
    the frame centre without leaving the lattice. Values lie roughly in [-1, 1] (scaled by sqrt 2).
    """
    h, w = shape
    if h <= 0 or w <= 0:
        raise ValueError(f"perlin noise: shape must be positive, got {shape}")
    res_y = res_y.to(torch.long).cpu()
    res_x = res_x.to(torch.long).cpu()
    if res_y.shape != res_x.shape or res_y.dim() != 1:
        raise ValueError(f"perlin noise: res_y {tuple(res_y.shape)} and res_x {tuple(res_x.shape)} must be (N,)")
    if bool((res_y < 1).any()) or bool((res_x < 1).any()):
        raise ValueError("perlin noise: lattice resolutions must be >= 1")
    n = int(res_y.shape[0])
    gy_max, gx_max = int(res_y.max()), int(res_x.max())
    # Random unit gradients on the largest lattice needed; sample i only uses its top-left res_y x res_x part.
    theta = torch.rand((n, gy_max * gx_max), generator=generator, device=generator.device) * (2 * math.pi)
    dev = torch.device(device) if device is not None else theta.device
    theta = theta.to(dev)
    grad_y, grad_x = torch.sin(theta), torch.cos(theta)

    ry = res_y.to(dev, torch.float32).view(n, 1, 1)
    rx = res_x.to(dev, torch.float32).view(n, 1, 1)
    cell_h = torch.ceil(h / ry)
    cell_w = torch.ceil(w / rx)
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    if angle is not None:
        a = angle.to(dev, torch.float32).view(n, 1, 1)
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        cos, sin = torch.cos(a), torch.sin(a)
        py = cos * (ys - cy) - sin * (xs - cx) + cy
        px = sin * (ys - cy) + cos * (xs - cx) + cx
    else:
        py, px = ys.expand(n, h, w), xs.expand(n, h, w)
    u = py / cell_h
    v = px / cell_w
    u0 = torch.floor(u)
    v0 = torch.floor(v)
    fu = u - u0
    fv = v - v0
    # Lattice indices, wrapped per sample (periodic lattice).
    iy0 = torch.remainder(u0, ry).long()
    ix0 = torch.remainder(v0, rx).long()
    iy1 = torch.remainder(iy0 + 1, res_y.to(dev).view(n, 1, 1))
    ix1 = torch.remainder(ix0 + 1, res_x.to(dev).view(n, 1, 1))

    def corner(iy: Tensor, ix: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
        idx = (iy * gx_max + ix).view(n, -1)
        gy = torch.gather(grad_y, 1, idx).view(n, h, w)
        gx = torch.gather(grad_x, 1, idx).view(n, h, w)
        return gy * dy + gx * dx

    n00 = corner(iy0, ix0, fu, fv)
    n10 = corner(iy1, ix0, fu - 1.0, fv)
    n01 = corner(iy0, ix1, fu, fv - 1.0)
    n11 = corner(iy1, ix1, fu - 1.0, fv - 1.0)
    tu, tv = _fade(fu), _fade(fv)
    top = torch.lerp(n00, n01, tv)
    bottom = torch.lerp(n10, n11, tv)
    return math.sqrt(2.0) * torch.lerp(top, bottom, tu)


def perlin_noise(
    shape: tuple[int, int],
    res: tuple[int, int],
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """2-D Perlin noise (H, W) with ``res`` = (cells along H, cells along W); any H, W."""
    ry = torch.tensor([int(res[0])])
    rx = torch.tensor([int(res[1])])
    return perlin_noise_batch(shape, ry, rx, generator, device=device)[0]


class AnomalySimulator:
    """Blend Perlin-shaped random-colour defects into good images; returns (augmented, mask).

    * scales: lattice resolution ``2**k`` per axis, k drawn independently per axis from
      ``[min_scale_exp, max_scale_exp)`` (as DRAEM), so blobs range from frame-sized to a few pixels;
    * the noise is rotated by a random angle in [-pi/2, pi/2] (``rotate``) so blobs are not axis-aligned;
    * the noise is evaluated on a grid ``noise_subsample`` times coarser and bilinearly upsampled (speed);
    * mask = noise > ``threshold``; a non-clean sample whose mask came out empty is redrawn (a few rounds,
      then its top 2% of noise is used) so every non-clean sample really carries an anomaly;
    * fill: per sample one of ``fill_modes``: "pixels" (random RGB per pixel, paper Fig. 1b), "solid" (one
      random colour), "smooth" (a random low-frequency colour field) - more than pure pixel noise so the
      U-Net does not learn to detect only high-frequency noise; "gray" (one random luminance in every
      channel, opt-in) for defects that differ only in brightness, as on monochrome cameras;
    * blend: inside the mask ``beta*image + (1-beta)*fill`` with beta ~ U(``beta_range``); outside the mask
      the image is returned bit-identical;
    * shape: per sample one of ``shape_families`` (see :data:`SHAPE_FAMILIES`). A "soft" sample is blended with
      a weight that fades to zero at the mask's edge and with beta ~ U(0.4, 0.8) (low contrast); the mask is
      still every pixel that changed. Since anomalies land anywhere in the frame, the out-of-ROI samples the
      ROI attention learns to ignore come in the same families.
    """

    def __init__(
        self,
        clean_share: float = 0.5,
        threshold: float = 0.5,
        min_scale_exp: int = 0,
        max_scale_exp: int = 6,
        beta_range: tuple[float, float] = (0.0, 0.8),
        rotate: bool = True,
        fill_modes: tuple[str, ...] = FILL_MODES,
        max_redraws: int = 4,
        noise_subsample: int = 2,
        shape_families: tuple[str, ...] = ("perlin",),
    ) -> None:
        if not 0.0 <= clean_share <= 1.0:
            raise ValueError(f"AnomalySimulator: clean_share must be in [0, 1], got {clean_share}")
        if not 0 <= min_scale_exp < max_scale_exp:
            raise ValueError(
                f"AnomalySimulator: need 0 <= min_scale_exp < max_scale_exp, got {min_scale_exp}, {max_scale_exp}"
            )
        lo, hi = beta_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"AnomalySimulator: beta_range must satisfy 0 <= lo <= hi <= 1, got {beta_range}")
        unknown = [m for m in fill_modes if m not in ALL_FILL_MODES]
        if unknown or not fill_modes:
            raise ValueError(
                f"AnomalySimulator: fill_modes {fill_modes!r} must be a non-empty subset of {ALL_FILL_MODES}")
        bad_shapes = [f for f in shape_families if f not in SHAPE_FAMILIES]
        if bad_shapes or not shape_families:
            raise ValueError(
                f"AnomalySimulator: shape_families {shape_families!r} must be a non-empty subset of {SHAPE_FAMILIES}")
        self.shape_families = tuple(shape_families)
        self.clean_share = clean_share
        self.threshold = threshold
        self.min_scale_exp = min_scale_exp
        self.max_scale_exp = max_scale_exp
        self.beta_range = (float(lo), float(hi))
        self.rotate = rotate
        self.fill_modes = tuple(fill_modes)
        self.max_redraws = max_redraws
        if noise_subsample < 1:
            raise ValueError(f"AnomalySimulator: noise_subsample must be >= 1, got {noise_subsample}")
        self.noise_subsample = noise_subsample

    def _noise(self, n: int, h: int, w: int, generator: torch.Generator, device: torch.device,
               scales: tuple[int, int] | None = None) -> Tensor:
        lo, hi = scales if scales is not None else (self.min_scale_exp, self.max_scale_exp)
        exps = torch.randint(lo, hi, (2, n), generator=generator, device=generator.device)
        res = 2 ** exps.cpu()
        angle = None
        if self.rotate:
            angle = (torch.rand(n, generator=generator, device=generator.device) - 0.5) * math.pi
        f = self.noise_subsample
        if f == 1:
            return perlin_noise_batch((h, w), res[0], res[1], generator, angle=angle, device=device)
        # Evaluate the (smooth) noise on a grid f times coarser and upsample: f*f fewer elementwise ops, and
        # at the finest scale (64 cells over 256 px) a cell still spans two coarse samples.
        hs, ws = -(-h // f), -(-w // f)
        coarse = perlin_noise_batch((hs, ws), res[0], res[1], generator, angle=angle, device=device)
        return F.interpolate(coarse.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)

    def _shape(self, family: str, n: int, h: int, w: int, generator: torch.Generator,
               device: torch.device) -> tuple[Tensor, Tensor | None]:
        """One draw of ``family``: (boolean masks (n, H, W), blend weight in [0, 1] or None for a hard edge)."""
        if family == "perlin":
            return self._noise(n, h, w, generator, device) > self.threshold, None
        gdev = generator.device
        if family == "soft":
            # Coarse scales only (1-4 cells): large regions; the weight ramps up over the outer part of the blob.
            noise = self._noise(n, h, w, generator, device, scales=(0, 3))
            weight = ((noise - self.threshold) / 0.35).clamp(0.0, 1.0)
            weight = weight * weight * (3.0 - 2.0 * weight)  # smoothstep: no visible rim
            # Below 15% of its contrast a change is noise in an 8-bit frame: not marked as anomaly, not drawn.
            weight = torch.where(weight < 0.15, torch.zeros_like(weight), weight)
            return weight > 0, weight
        if family == "thin":
            field = self._noise(n, h, w, generator, device, scales=(1, 4))
            gy = torch.zeros_like(field)
            gx = torch.zeros_like(field)
            gy[:, 1:-1] = (field[:, 2:] - field[:, :-2]) / 2.0
            gx[:, :, 1:-1] = (field[:, :, 2:] - field[:, :, :-2]) / 2.0
            # |f| / |grad f| is the distance in pixels to the zero crossing: a line of chosen half-width.
            dist = field.abs() / (gy.square() + gx.square()).sqrt().clamp_min(1e-6)
            half = (0.5 + torch.rand(n, generator=generator, device=gdev) * 1.0).to(device).view(n, 1, 1)
            # A coarse Perlin blob confines the lines to a patch.
            patch = self._noise(n, h, w, generator, device, scales=(0, 3)) > self.threshold
            return (dist < half) & patch, None
        if family == "cluster":
            # 3-8 specks (radius 0.7-2.5 px at 256 px, scaled with the frame) scattered within a few speck sizes
            # of a common centre.
            k = 8
            scale = min(h, w) / 256.0
            r = torch.rand((n, 3 + 4 * k), generator=generator, device=gdev).to(device)
            cy, cx = r[:, 0].view(n, 1) * (h - 1), r[:, 1].view(n, 1) * (w - 1)
            spread = (6.0 + 14.0 * r[:, 2].view(n, 1)) * scale
            ang = r[:, 3:3 + k] * (2 * math.pi)
            dist = r[:, 3 + k:3 + 2 * k].sqrt() * spread
            radius = (0.7 + 1.8 * r[:, 3 + 2 * k:3 + 3 * k]) * max(scale, 0.5)
            count = 3 + (r[:, 3 + 3 * k:3 + 4 * k] * 6).long()[:, :1]  # 3..8 specks
            active = torch.arange(k, device=device).view(1, k) < count
            sy = (cy + dist * torch.sin(ang)).view(n, k, 1, 1)
            sx = (cx + dist * torch.cos(ang)).view(n, k, 1, 1)
            ys = torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1)
            xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w)
            inside = (ys - sy).square() + (xs - sx).square() <= radius.view(n, k, 1, 1).square()
            return (inside & active.view(n, k, 1, 1)).any(dim=1), None
        raise ValueError(f"AnomalySimulator: unknown shape family {family!r}")

    def _shapes(self, family: str, n: int, h: int, w: int, generator: torch.Generator,
                device: torch.device) -> tuple[Tensor, Tensor | None]:
        """Non-empty masks of ``family``: empty draws are redrawn, then the top 2% of a Perlin field is used."""
        mask, weight = self._shape(family, n, h, w, generator, device)
        for _ in range(self.max_redraws):
            idx = torch.nonzero(~mask.flatten(1).any(dim=1)).flatten()
            if idx.numel() == 0:
                return mask, weight
            m, wgt = self._shape(family, int(idx.numel()), h, w, generator, device)
            mask[idx] = m
            if weight is not None and wgt is not None:
                weight[idx] = wgt
        idx = torch.nonzero(~mask.flatten(1).any(dim=1)).flatten()
        if idx.numel():
            noise = self._noise(int(idx.numel()), h, w, generator, device).flatten(1)
            k = max(1, (h * w) // 50)
            kth = noise.topk(k, dim=1).values[:, -1:]
            mask[idx] = (noise >= kth).view(-1, h, w)
            if weight is not None:
                weight[idx] = 1.0
        return mask, weight

    def masks(self, n: int, h: int, w: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """Non-empty boolean anomaly masks (n, H, W) (no clean samples) of the default "perlin" family."""
        return self._shapes("perlin", n, h, w, generator, device)[0]

    def shapes(self, n: int, h: int, w: int, generator: torch.Generator,
               device: torch.device) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Masks of every sample, each of a family drawn from ``shape_families``: (masks (n, H, W), blend weights
        (n, H, W) or None when every edge is hard, family index per sample or None with one family)."""
        if self.shape_families == ("perlin",):
            return self.masks(n, h, w, generator, device), None, None
        family = torch.randint(0, len(self.shape_families), (n,), generator=generator,
                               device=generator.device).to(device)
        mask = torch.zeros((n, h, w), dtype=torch.bool, device=device)
        weight = torch.ones((n, h, w), dtype=torch.float32, device=device)
        for i, name in enumerate(self.shape_families):
            idx = torch.nonzero(family == i).flatten()
            if idx.numel() == 0:
                continue
            m, wgt = self._shapes(name, int(idx.numel()), h, w, generator, device)
            mask[idx] = m
            if wgt is not None:
                weight[idx] = wgt
        return mask, weight, family

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """images (N,C,H,W) float in [0,1] -> (augmented (N,C,H,W) in [0,1], mask (N,1,H,W) float in {0,1})."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(
                f"AnomalySimulator: expected float images (N, C, H, W) in [0, 1], got {tuple(images.shape)} "
                f"{images.dtype}"
            )
        n, c, h, w = (int(s) for s in images.shape)
        dev = images.device
        gdev = generator.device

        def rand(*size: int) -> Tensor:
            return torch.rand(size, generator=generator, device=gdev).to(dev)

        clean = rand(n) < self.clean_share
        shapes, weight, family = self.shapes(n, h, w, generator, dev)
        mask = (shapes & ~clean.view(n, 1, 1)).unsqueeze(1)

        mode = torch.randint(0, len(self.fill_modes), (n,), generator=generator, device=gdev).to(dev)
        pixels = rand(n, c, h, w)
        solid = rand(n, c, 1, 1).expand(n, c, h, w)
        smooth = F.interpolate(rand(n, c, 4, 4), size=(h, w), mode="bilinear", align_corners=False)
        gray = rand(n, 1, 1, 1).expand(n, c, h, w)
        choices = {"pixels": pixels, "solid": solid, "smooth": smooth, "gray": gray}
        fill = torch.zeros_like(images)
        for i, name in enumerate(self.fill_modes):
            fill = torch.where((mode == i).view(n, 1, 1, 1), choices[name].to(images.dtype), fill)
        lo, hi = self.beta_range
        beta = (lo + (hi - lo) * rand(n)).view(n, 1, 1, 1).to(images.dtype)
        if family is not None and "soft" in self.shape_families:
            # by name, not by the first index: a repeated family name (a weight) may list "soft" more than once
            is_soft = torch.tensor([name == "soft" for name in self.shape_families], device=dev)
            soft = is_soft[family].view(n, 1, 1, 1)
            beta = torch.where(soft, (0.4 + 0.4 * rand(n)).view(n, 1, 1, 1).to(images.dtype), beta)
        blended = beta * images + (1.0 - beta) * fill
        if weight is not None:
            wgt = weight.unsqueeze(1).to(images.dtype)
            blended = torch.where(wgt < 1.0, images + (blended - images) * wgt, blended)
        blended = blended.clamp(0.0, 1.0)
        # The target is every pixel that changed (a soft edge may fade to no change at all).
        mask = mask & (blended != images).any(dim=1, keepdim=True) if weight is not None else mask
        augmented = torch.where(mask, blended, images)
        return augmented, mask.to(images.dtype)
