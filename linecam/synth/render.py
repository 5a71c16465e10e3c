"""Render one camera image of a BFS vial strip, with its ROI and pixel-exact defect ground truth.

Order of operations follows the physics of the station: the product (with pose jitter) is rendered in linear light,
defects are composited onto it as objects, then the illumination drift and the sensor noise of that exposure are
applied and the result is quantised to 8 bits. The same exposure is also finished *without* the defects; the ground
truth is exactly the set of pixels whose 8-bit value differs, so a mask never claims a pixel the defect did not touch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from linecam.synth import geometry as g
from linecam.synth.defects import (
    ALL_KINDS,
    DefectDrawing,
    DefectSpec,
    draw_defect,
    placement_radius,
    resolve_specs,
)
from linecam.synth.product import random_state, render_product

GOOD = "good"
OUTSIDE_ROI = "outside_roi"
Placement = Literal["roi", "outside_roi"]
_MAX_TRIES = 60


@dataclass(frozen=True)
class RenderConfig:
    """What every image of a dataset or camera shares: size, inspected area, channels, defect size ranges."""

    height: int = 256
    width: int = 256
    area: str = "meniscus"
    channels: int = 3
    specs: Mapping[str, DefectSpec] = field(default_factory=lambda: resolve_specs(None))

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels: must be 1 or 3, got {self.channels}")
        if self.area not in g.AREAS:
            raise ValueError(f"area: unknown inspection area {self.area!r}; expected one of {list(g.AREAS)}")
        if self.height < 64 or self.width < 64:
            raise ValueError(f"image size: {self.height}x{self.width} is too small (minimum 64x64)")

    @property
    def pixel_scale_um(self) -> float:
        return g.pixel_scale_um(self.height, self.width)


@dataclass
class SynthSample:
    """One rendered frame: image (uint8 HxWxC), defect mask and ROI (uint8 HxW, 0/255), labels.

    ``kind`` is "good", a defect kind, or "outside_roi" (a defect that lies strictly outside the ROI; the line
    label is then "good"). ``defects`` describes each drawn defect; ``clean_image`` is the same exposure without
    the defects when it was requested (tests and debugging).
    """

    image: np.ndarray
    defect_mask: np.ndarray
    roi: np.ndarray
    kind: str
    line_label: Literal["good", "defect"]
    defects: list[dict[str, Any]] = field(default_factory=list)
    clean_image: np.ndarray | None = None


def derive_rng(seed: int, *keys: str | int) -> np.random.Generator:
    """Independent generator for (seed, keys...): stable across processes and Python runs (no ``hash()``)."""
    import zlib

    entropy = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode("utf-8")) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _finish(img: np.ndarray, gain: np.ndarray, noise: np.ndarray, channels: int) -> np.ndarray:
    """Illumination drift, sensor noise and 8-bit quantisation of one exposure."""
    lit = img * gain
    sigma = 0.004 + 0.012 * np.sqrt(np.clip(lit, 0.0, None))
    out = np.clip((lit + sigma * noise) * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
    if channels == 1:
        return cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None]
    return out


def _illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Lamp ageing and diffuser non-uniformity: global gain, a linear gradient, a small colour shift."""
    level = float(rng.uniform(0.9, 1.08))
    ang = rng.uniform(0, 2 * np.pi)
    amp = float(rng.uniform(0.0, 0.06))
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    grad = 1.0 + amp * (np.cos(ang) * xs + np.sin(ang) * ys)
    colour = np.asarray([1.0 + rng.uniform(-0.02, 0.02), 1.0, 1.0 + rng.uniform(-0.02, 0.02)], np.float32)
    return (level * grad)[..., None] * colour


def _composite(img: np.ndarray, d: DefectDrawing) -> np.ndarray:
    a = d.alpha[..., None]
    if d.warp is not None:
        map_x, map_y, shade = d.warp
        seen = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return img * (1.0 - a) + seen * shade[..., None] * a
    col = np.asarray(d.colour, np.float32)
    target = img * col if d.relative else col
    return img * (1.0 - a) + target * a


def _candidates(region: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of ``region`` at least ``radius`` px from its border (and from the image border)."""
    reg = region.astype(np.uint8)
    reg[0, :] = reg[-1, :] = 0
    reg[:, 0] = reg[:, -1] = 0
    dist = cv2.distanceTransform(reg, cv2.DIST_L2, 5)
    ys, xs = np.nonzero(dist >= radius)
    if len(xs) == 0:
        ys, xs = np.nonzero(dist >= dist.max() * 0.8) if dist.max() > 0 else (np.array([]), np.array([]))
    return np.stack([xs, ys], axis=1).astype(np.float64)


def _place(
    kind: str,
    placement: Placement,
    rng: np.random.Generator,
    roi: np.ndarray,
    config: RenderConfig,
    um_per_px: float,
    prefer: np.ndarray | None = None,
) -> DefectDrawing:
    """Draw ``kind`` inside the ROI, or strictly outside it, retrying until the footprint obeys the rule."""
    spec = config.specs[kind]
    allowed = roi if placement == "roi" else ~cv2.dilate(roi.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if prefer is not None and np.any(prefer & allowed):
        allowed = prefer & allowed  # only where the centre goes: the footprint rule below stays the ROI's
    for _ in range(_MAX_TRIES):
        size = spec.draw_size(rng)
        cand = _candidates(allowed, placement_radius(kind, size, um_per_px))
        if len(cand) == 0:
            continue
        centre = cand[int(rng.integers(len(cand)))] + rng.uniform(-0.5, 0.5, 2)
        drawing = draw_defect(kind, rng, roi.shape, centre, size, um_per_px)
        foot = drawing.alpha > 0
        if not foot.any():
            continue
        if placement == "roi" and not np.any(foot & ~roi):
            return drawing
        if placement == "outside_roi" and not np.any(foot & roi):
            return drawing
    raise RuntimeError(
        f"defect {kind}: could not place a {spec.min_um:.0f}-{spec.max_um:.0f} um defect "
        f"{'inside' if placement == 'roi' else 'outside'} the ROI of a {config.height}x{config.width} "
        f"{config.area} view in {_MAX_TRIES} tries (size range too large for this view?)"
    )


def _particle_region(rng: np.random.Generator, liquid: np.ndarray, band: np.ndarray) -> np.ndarray | None:
    """Particles float: mostly in the liquid, often caught on the meniscus (paper Fig. 9a), sometimes on the wall."""
    r = rng.random()
    if r < 0.35:
        return cv2.dilate((band > 0.15).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if r < 0.8:
        return liquid > 0.5
    return None


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def render_sample(
    rng: np.random.Generator,
    config: RenderConfig,
    kind: str = GOOD,
    defect_kind: str | None = None,
    keep_clean: bool = False,
) -> SynthSample:
    """Render one frame of ``kind``: "good", a defect kind (inside the ROI) or "outside_roi".

    For "outside_roi" the drawn defect is ``defect_kind`` (random among particle/spot/scratch/fibre when None).
    """
    if kind != GOOD and kind != OUTSIDE_ROI and kind not in ALL_KINDS:
        raise ValueError(f"kind: unknown {kind!r}; expected good, outside_roi or one of {list(ALL_KINDS)}")
    h, w = config.height, config.width
    view = g.View(h, w, config.area, g.Pose.random(rng))
    state = random_state(rng)
    prod = render_product(view, state)
    gain = _illumination(rng, h, w)
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    um_per_px = view.mm_per_px * 1000.0

    drawings: list[DefectDrawing] = []
    image = _finish(prod.image, gain, noise, config.channels)
    clean: np.ndarray | None = image
    changed = np.zeros((h, w), bool)
    if kind != GOOD:
        for _ in range(_MAX_TRIES):
            if kind == OUTSIDE_ROI:
                dk = defect_kind or ("particle", "spot", "scratch", "fibre")[int(rng.integers(4))]
                drawings = [_place(dk, "outside_roi", rng, prod.roi, config, um_per_px)]
            else:
                prefer = _particle_region(rng, prod.liquid, prod.meniscus_band) if kind == "particle" else None
                drawings = [_place(kind, "roi", rng, prod.roi, config, um_per_px, prefer)]
            img = prod.image
            for d in drawings:
                img = _composite(img, d)
            image = _finish(img, gain, noise, config.channels)
            changed = np.any(image != clean, axis=2)
            if changed.any():  # a defect that changes no 8-bit value is invisible: draw another one
                break
        else:
            raise RuntimeError(f"defect {kind}: every drawing was invisible after quantisation")
    mask = np.zeros((h, w), np.uint8)
    infos: list[dict[str, Any]] = []
    for d in drawings:
        own = changed & (d.alpha > 0)
        mask[own] = 255
        infos.append(
            {
                "kind": d.kind,
                "bbox": _bbox(own),
                "size_um": round(d.size_um, 1),
                "extent_px": round(d.extent_px, 2),
                "pixels": int(own.sum()),
                "inside_roi": kind != OUTSIDE_ROI,
            }
        )
    return SynthSample(
        image=image,
        defect_mask=mask,
        roi=(prod.roi.astype(np.uint8) * 255),
        kind=kind,
        line_label="good" if kind in (GOOD, OUTSIDE_ROI) else "defect",
        defects=infos,
        clean_image=clean if keep_clean else None,
    )
