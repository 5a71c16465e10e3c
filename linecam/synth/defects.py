"""Defect kinds, their configurable size distributions, and how each one is drawn.

Sizes are physical (micrometres, the unit a quality engineer specifies: "particles 100-1000 um"), converted to
pixels with the view's scale. A drawing is an alpha coverage map plus the colour the covered pixels take on; the
renderer composites it and derives the ground truth from the pixels that really changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

SEEN_KINDS: tuple[str, ...] = ("particle", "spot", "scratch", "fibre")
"""Defect kinds present in val/test (the kinds a model may be tuned on)."""
UNSEEN_KINDS: tuple[str, ...] = ("inclusion", "deformation", "die_lines", "flake")
"""Kinds kept only in test_unseen, never met during tuning: a coloured foreign body, a dented wall, die lines
(a band of parallel, evenly spaced straight streaks left by a damaged extrusion die) and a flake (a flat,
straight-edged plastic chip whose edges catch the light on one side and shade on the other). The last two are
chosen to lie outside the training simulator's shape families (blobs, soft regions, single curved lines, speck
clusters): periodic parallel structure, and straight edges with a two-tone rim."""
ALL_KINDS: tuple[str, ...] = SEEN_KINDS + UNSEEN_KINDS

_SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class DefectSpec:
    """Size range of one defect kind in um (max extent for blobs, length for scratches and fibres)."""

    min_um: float
    max_um: float

    def __post_init__(self) -> None:
        if not (0.0 < self.min_um <= self.max_um):
            raise ValueError(f"defect size range: need 0 < min <= max, got {self.min_um}..{self.max_um} um")

    def draw_size(self, rng: np.random.Generator) -> float:
        """Log-uniform: small defects are as common per decade as large ones, as in particle counts."""
        return float(np.exp(rng.uniform(np.log(self.min_um), np.log(self.max_um))))


DEFAULT_SPECS: dict[str, DefectSpec] = {
    "particle": DefectSpec(100.0, 1000.0),
    "spot": DefectSpec(150.0, 800.0),
    "scratch": DefectSpec(800.0, 3500.0),
    "fibre": DefectSpec(1000.0, 4000.0),
    "inclusion": DefectSpec(250.0, 1200.0),
    "deformation": DefectSpec(800.0, 2500.0),
    "die_lines": DefectSpec(1500.0, 4000.0),
    "flake": DefectSpec(400.0, 1500.0),
}


def resolve_specs(overrides: Mapping[str, DefectSpec] | None) -> dict[str, DefectSpec]:
    """Defaults updated with ``overrides``; unknown kinds are refused by name."""
    specs = dict(DEFAULT_SPECS)
    for kind, spec in (overrides or {}).items():
        if kind not in DEFAULT_SPECS:
            raise ValueError(f"defect sizes: unknown defect kind {kind!r}; expected one of {list(ALL_KINDS)}")
        specs[kind] = spec
    return specs


def parse_sizes(text: str) -> dict[str, DefectSpec]:
    """Parse ``particle=100:1000,fibre=1500:3000`` (um) for the CLI."""
    specs: dict[str, DefectSpec] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        try:
            kind, rng_text = item.split("=", 1)
            lo, hi = (float(x) for x in rng_text.split(":", 1))
        except ValueError as exc:
            raise ValueError(f"--sizes: cannot parse {item!r}; expected KIND=MIN_UM:MAX_UM") from exc
        specs[kind.strip()] = DefectSpec(lo, hi)
    return resolve_specs(specs)


@dataclass
class DefectDrawing:
    """Alpha coverage (float32 HxW in [0, 1]) and the RGB the covered pixels take on.

    ``colour`` is absolute linear RGB when ``relative`` is False, otherwise a per-channel factor applied to the
    product underneath (translucent spots, low-contrast scratches). A ``warp`` replaces the colour by the product
    seen through a dented wall.
    """

    kind: str
    alpha: np.ndarray
    colour: tuple[float, float, float]
    relative: bool
    size_um: float
    extent_px: float
    warp: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """For a deformation: (map_x, map_y, shading) — covered pixels show the product refracted and re-shaded."""


def _canvas(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros(shape, np.uint8)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _blob_polygon(rng: np.random.Generator, centre: np.ndarray, extent_px: float, roughness: float) -> np.ndarray:
    n = int(rng.integers(7, 13))
    ang = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
    rad = rng.uniform(1.0 - roughness, 1.0, n)
    pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad * rng.uniform(0.55, 1.0)], axis=1)
    rot = rng.uniform(0, np.pi)
    pts = pts @ np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    span = max(float(np.max(np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=2))), 1e-6)
    return centre + pts * (extent_px / span)


def _polyline_alpha(shape: tuple[int, int], pts: np.ndarray, thickness: int) -> np.ndarray:
    can = _canvas(shape)
    cv2.polylines(can, [_fixed(pts)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return can.astype(np.float32) / 255.0


def _polyline_length(pts: np.ndarray) -> float:
    return float(np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1)))


def draw_defect(
    kind: str, rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, size_um: float, um_per_px: float
) -> DefectDrawing:
    """Draw one defect of ``kind`` and physical size ``size_um`` centred at pixel ``centre`` (x, y)."""
    size_px = size_um / um_per_px
    if kind in ("particle", "inclusion"):
        extent = max(size_px, 1.5)
        poly = _blob_polygon(rng, centre, extent, 0.45 if kind == "particle" else 0.25)
        can = _canvas(shape)
        cv2.fillPoly(can, [_fixed(poly)], 255, cv2.LINE_AA, _SHIFT)
        alpha = can.astype(np.float32) / 255.0
        if kind == "particle":
            grey = float(rng.uniform(0.03, 0.12))
            return DefectDrawing(kind, alpha, (grey, grey * 0.95, grey * 0.9), False, size_um, extent)
        palette = ((0.85, 0.22, 0.12), (0.15, 0.3, 0.9), (0.95, 0.72, 0.15), (0.2, 0.7, 0.3))
        colour = palette[int(rng.integers(len(palette)))]
        return DefectDrawing(kind, alpha * 0.92, colour, False, size_um, extent)
    if kind == "spot":
        extent = max(size_px, 2.0)
        a, b = extent / 2.0, extent / 2.0 * float(rng.uniform(0.55, 1.0))
        rot = float(rng.uniform(0, np.pi))
        h, w = shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dx, dy = xx - centre[0], yy - centre[1]
        ex = (dx * np.cos(rot) + dy * np.sin(rot)) / a
        ey = (-dx * np.sin(rot) + dy * np.cos(rot)) / b
        r = np.sqrt(ex * ex + ey * ey)
        peak = float(rng.uniform(0.55, 0.85))
        alpha = peak * np.clip((1.0 - r) / 0.35, 0.0, 1.0) ** 0.8
        alpha = np.where(alpha < 0.06, 0.0, alpha).astype(np.float32)
        f = float(rng.uniform(0.2, 0.45))
        return DefectDrawing(kind, alpha, (f * 1.05, f, f * 0.85), True, size_um, extent)
    if kind == "scratch":
        length = max(size_px, 4.0)
        ang = rng.uniform(0, np.pi)
        d = np.array([np.cos(ang), np.sin(ang)])
        nrm = np.array([-d[1], d[0]])
        bend = float(rng.uniform(-0.25, 0.25)) * length
        tt = np.linspace(0.0, 1.0, 48)[:, None]
        p0, p2 = centre - d * length / 2, centre + d * length / 2
        p1 = centre + nrm * bend
        pts = (1 - tt) ** 2 * p0 + 2 * (1 - tt) * tt * p1 + tt**2 * p2
        pts = centre + (pts - centre) * (length / max(_polyline_length(pts), 1e-6))
        alpha = _polyline_alpha(shape, pts, 1) * float(rng.uniform(0.7, 1.0))
        contrast = float(rng.uniform(0.18, 0.35))
        f = 1.0 + contrast if rng.random() < 0.5 else 1.0 - contrast
        return DefectDrawing(kind, alpha, (f, f, f), True, size_um, length)
    if kind == "fibre":
        length = max(size_px, 5.0)
        step = 1.0
        n = int(np.ceil(length / step)) + 1
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.22, n) + rng.normal(0.0, 0.05))
        steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * step
        pts = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])[:n]
        pts = pts * (length / max(_polyline_length(pts), 1e-6))
        pts = pts - (pts.min(axis=0) + pts.max(axis=0)) / 2.0 + centre
        width_um = float(rng.uniform(15.0, 60.0))
        thick = 2 if width_um / um_per_px > 1.3 else 1
        alpha = _polyline_alpha(shape, pts, thick) * float(rng.uniform(0.75, 0.95))
        grey = float(rng.uniform(0.1, 0.3))
        return DefectDrawing(kind, alpha, (grey, grey, grey * 1.1), False, size_um, length)
    if kind == "deformation":
        return _draw_deformation(rng, shape, centre, size_um, max(size_px, 6.0))
    if kind == "die_lines":
        return _draw_die_lines(rng, shape, centre, size_um, max(size_px, 8.0), um_per_px)
    if kind == "flake":
        return _draw_flake(rng, shape, centre, size_um, max(size_px, 4.0))
    raise ValueError(f"defect kind: unknown {kind!r}; expected one of {list(ALL_KINDS)}")


def _draw_deformation(
    rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, size_um: float, diameter: float
) -> DefectDrawing:
    """A dent: the wall bulges in, magnifying what is behind it and catching the light on one flank."""
    h, w = shape
    radius = diameter / 2.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - np.float32(centre[0]), yy - np.float32(centre[1])
    squash = float(rng.uniform(0.6, 1.0))
    rot = float(rng.uniform(0, np.pi))
    ex = (dx * np.cos(rot) + dy * np.sin(rot)) / radius
    ey = (-dx * np.sin(rot) + dy * np.cos(rot)) / (radius * squash)
    r2 = ex * ex + ey * ey
    inside = r2 < 1.0
    bump = np.where(inside, (1.0 - r2) ** 2, 0.0).astype(np.float32)
    push = float(rng.uniform(0.15, 0.3))
    map_x = (xx - push * bump * dx).astype(np.float32)
    map_y = (yy - push * bump * dy).astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    gy, gx = np.gradient(bump)
    slope = (np.cos(light) * gx + np.sin(light) * gy) * radius
    shade = (1.0 + float(rng.uniform(0.1, 0.2)) * slope).astype(np.float32)
    return DefectDrawing(
        "deformation", inside.astype(np.float32), (1.0, 1.0, 1.0), True, size_um, diameter, (map_x, map_y, shade)
    )


def _draw_die_lines(rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, size_um: float,
                    length: float, um_per_px: float) -> DefectDrawing:
    """3-6 straight parallel streaks of equal spacing (80-200 um), along the extrusion axis (vertical, within
    12 degrees), darker or lighter than the wall by the same small factor: a periodic pattern, not one line."""
    n = int(rng.integers(3, 7))
    spacing = max(float(rng.uniform(80.0, 200.0)) / um_per_px, 2.0)
    ang = np.pi / 2 + float(rng.uniform(-0.21, 0.21))
    d = np.array([np.cos(ang), np.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    can = _canvas(shape)
    for i in range(n):
        offset = (i - (n - 1) / 2.0) * spacing
        p0 = centre + nrm * offset - d * length / 2.0
        p1 = centre + nrm * offset + d * length / 2.0
        cv2.line(can, tuple(_fixed(p0).ravel()), tuple(_fixed(p1).ravel()), 255, 1, cv2.LINE_AA, _SHIFT)
    alpha = can.astype(np.float32) / 255.0 * float(rng.uniform(0.8, 1.0))
    contrast = float(rng.uniform(0.25, 0.45))
    f = 1.0 - contrast if rng.random() < 0.6 else 1.0 + contrast
    return DefectDrawing("die_lines", alpha, (f, f, f), True, size_um, length)


def _draw_flake(rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, size_um: float,
                extent: float) -> DefectDrawing:
    """A convex polygon of 4-6 straight edges: a faintly brighter body, a bright rim on the lit side and a dark
    rim on the other (a flat chip of plastic catching a directional light)."""
    n = int(rng.integers(4, 7))
    ang = np.sort(rng.uniform(0.0, 2.0 * np.pi, n) + np.arange(n) * (2.0 * np.pi / n)) % (2.0 * np.pi)
    ang = np.sort(ang)
    pts = np.stack([np.cos(ang), np.sin(ang) * rng.uniform(0.5, 1.0)], axis=1)
    span = max(float(np.max(np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=2))), 1e-6)
    poly = centre + pts * (extent / span)
    h, w = shape
    body = _canvas(shape)
    cv2.fillPoly(body, [_fixed(poly)], 255, cv2.LINE_AA, _SHIFT)
    light = float(rng.uniform(0.0, 2.0 * np.pi))
    lit, dark = _canvas(shape), _canvas(shape)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        normal_angle = np.arctan2(b[0] - a[0], -(b[1] - a[1]))  # outward normal of a counter-clockwise edge
        target = lit if np.cos(normal_angle - light) > 0 else dark
        cv2.line(target, tuple(_fixed(a).ravel()), tuple(_fixed(b).ravel()), 255, 1, cv2.LINE_AA, _SHIFT)
    body_f = body.astype(np.float32) / 255.0
    lit_f = lit.astype(np.float32) / 255.0
    dark_f = dark.astype(np.float32) / 255.0
    tint = float(rng.uniform(1.08, 1.2))
    # A per-pixel factor on the product, folded into one relative drawing: alpha 1 where anything is drawn.
    factor = 1.0 + (tint - 1.0) * body_f + 0.5 * lit_f - 0.45 * dark_f
    alpha = np.clip(np.maximum(body_f, np.maximum(lit_f, dark_f)), 0.0, 1.0)
    warp_x, warp_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return DefectDrawing("flake", alpha, (1.0, 1.0, 1.0), True, size_um, extent,
                         (warp_x, warp_y, np.where(alpha > 0, (factor - 1.0 + alpha) / np.maximum(alpha, 1e-3), 1.0)
                          .astype(np.float32)))


def placement_radius(kind: str, size_um: float, um_per_px: float) -> float:
    """Pixels to keep between a defect centre and a region border so the drawing usually fits."""
    size_px = size_um / um_per_px
    if kind in ("scratch", "fibre", "die_lines"):
        return size_px / 2.0 + 2.0
    return max(size_px, 2.0) / 2.0 + 2.0
