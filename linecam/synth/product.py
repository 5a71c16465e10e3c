"""Random but normal product state and the defect-free rendering of a BFS vial strip.

A back-lit carousel view: bright diffuser behind, translucent plastic with cylindrical falloff (the walls seen
edge-on are dark), side-light specular streaks, a liquid column acting as a lens, a meniscus that is a dark curved
band whose height, curvature, thickness and tilt change from product to product, bubbles under it and drops above it,
embossed engravings, the web joining the 5 vials, and the bottom seal. All of this is *normal* variation: the model
must learn to ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from linecam.synth import geometry as g
from linecam.synth.engraving import ENGRAVING_TEXTS, sample_engraving

GRAIN_TILE = 256
GRAIN_PX_PER_MM = 30.0


@dataclass(frozen=True)
class Meniscus:
    """Liquid surface of one vial: level at the axis (mm), climb at the walls, wall exponent, tilt, band width."""

    level: float
    climb: float
    exponent: float
    tilt: float
    band: float


@dataclass(frozen=True)
class Blob:
    """A bubble or a drop: centre (scene mm) and radii (mm)."""

    u: float
    v: float
    ru: float
    rv: float


@dataclass(frozen=True)
class ProductState:
    """Everything random about one normal product and its illumination."""

    menisci: tuple[Meniscus, ...]
    bubbles: tuple[Blob, ...]
    drops: tuple[Blob, ...]
    engraving: int
    plastic_tint: tuple[float, float, float]
    liquid_tint: tuple[float, float, float]
    haze_seed: int


def random_state(rng: np.random.Generator) -> ProductState:
    """Draw a normal product: independent menisci per vial, a shared carousel tilt, bubbles and drops."""
    strip_tilt = float(rng.normal(0.0, 0.05))
    menisci = []
    for _ in range(g.VIALS_PER_STRIP):
        menisci.append(
            Meniscus(
                level=float(rng.uniform(-2.6, -0.6)),
                climb=float(rng.uniform(0.15, 0.9)),
                exponent=float(rng.uniform(1.8, 6.0)),
                tilt=strip_tilt + float(rng.normal(0.0, 0.02)),
                band=float(rng.uniform(0.12, 0.32)),
            )
        )
    centre = menisci[g.VIALS_PER_STRIP // 2]
    bubbles = []
    for _ in range(int(rng.choice([0, 1, 2, 3, 4, 6, 9], p=[0.2, 0.15, 0.15, 0.15, 0.15, 0.12, 0.08]))):
        r = float(rng.uniform(0.05, 0.28))
        u = float(rng.uniform(-0.85, 0.85) * g.BODY_HALF_WIDTH_MM)
        v = centre.level + centre.tilt * u + centre.band + r + float(rng.exponential(0.25))
        bubbles.append(Blob(u, v, r, r * float(rng.uniform(0.85, 1.0))))
    drops = []
    for _ in range(int(rng.choice([0, 1, 2, 4, 7], p=[0.25, 0.2, 0.25, 0.2, 0.1]))):
        r = float(rng.uniform(0.06, 0.35))
        u = float(rng.uniform(-0.9, 0.9) * g.BODY_HALF_WIDTH_MM)
        v = centre.level - centre.climb - r - float(rng.uniform(0.1, 3.0))
        drops.append(Blob(u, v, r * float(rng.uniform(0.7, 1.0)), r))
    warm = float(rng.uniform(-0.03, 0.03))
    return ProductState(
        menisci=tuple(menisci),
        bubbles=tuple(bubbles),
        drops=tuple(drops),
        engraving=int(rng.integers(len(ENGRAVING_TEXTS))),
        plastic_tint=(1.0 + warm, 1.0, 1.0 - warm),
        liquid_tint=(float(rng.uniform(0.93, 1.0)), float(rng.uniform(0.97, 1.0)), 1.0),
        haze_seed=int(rng.integers(2**31 - 1)),
    )


@dataclass
class ProductRender:
    """Linear-light RGB image (float32, HxWx3, ~[0, 1]) of a normal product plus the geometry it came from."""

    image: np.ndarray
    roi: np.ndarray  # bool HxW
    liquid: np.ndarray  # float HxW coverage of liquid (centre vial and neighbours)
    meniscus_band: np.ndarray  # float HxW darkness of the meniscus band
    vial_index: np.ndarray  # int HxW: which vial of the strip a pixel belongs to (-2..2)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return 1.0 + amp * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


@lru_cache(maxsize=1)
def _grain_texture() -> np.ndarray:
    """Matte LDPE surface grain (the moulds are sand-blasted): fixed texture, tiled in scene millimetres."""
    rng = np.random.default_rng(20240601)
    tex = cv2.GaussianBlur(rng.standard_normal((GRAIN_TILE, GRAIN_TILE)).astype(np.float32), (0, 0), 1.2)
    return tex / float(tex.std())


def _surface_grain(local_u: np.ndarray, v: np.ndarray) -> np.ndarray:
    map_x = np.mod(local_u * GRAIN_PX_PER_MM, GRAIN_TILE - 1).astype(np.float32)
    map_y = np.mod(v * GRAIN_PX_PER_MM, GRAIN_TILE - 1).astype(np.float32)
    return cv2.remap(_grain_texture(), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _window(view: g.View, b: Blob, h: int, w: int) -> tuple[slice, slice] | None:
    """Pixel window around a bubble or drop (pose-aware), so it costs its own area, not the whole frame."""
    x, y = view.to_pixel(np.array([b.u]), np.array([b.v]))
    reach = max(b.ru, b.rv) / view.mm_per_px + 3.0
    x0, x1 = int(np.floor(x[0] - reach)), int(np.ceil(x[0] + reach)) + 1
    y0, y1 = int(np.floor(y[0] - reach)), int(np.ceil(y[0] + reach)) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _blob_field(u: np.ndarray, v: np.ndarray, b: Blob) -> np.ndarray:
    return np.sqrt(((u - b.u) / b.ru) ** 2 + ((v - b.v) / b.rv) ** 2)


def roi_mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """ROI of the inspected (centre) vial: inner body and meniscus area, evaluated at pixel centres."""
    hw = g.half_width(v)
    return (np.abs(u) <= g.ROI_INSET * hw) & (v >= g.ROI_TOP_MM) & (hw > 0.8)


def render_product(view: g.View, state: ProductState) -> ProductRender:
    """Render the defect-free product for ``view``; the ROI is computed from the very same scene coordinates."""
    u, v = view.scene_coords()
    h, w = u.shape
    s = np.float32(view.mm_per_px)
    idx = np.clip(np.rint(u / g.VIAL_PITCH_MM), -(g.VIALS_PER_STRIP // 2), g.VIALS_PER_STRIP // 2).astype(np.int32)
    lu = u - idx.astype(np.float32) * np.float32(g.VIAL_PITCH_MM)
    hw = g.half_width(v)
    alu = np.abs(lu)
    cover = np.clip((hw - alu) / s + 0.5, 0.0, 1.0)
    x = np.clip(alu / np.maximum(hw, 1e-3), 0.0, 1.0)
    t = np.sqrt(1.0 - x * x)
    hrng = np.random.default_rng(state.haze_seed)

    # Diffuser background with a soft hot spot, the web joining the vials, the bottom seal.
    vc = g.AREA_CENTRE_V_MM[view.area]
    bg = 0.9 - 0.05 * ((v - vc) / 6.0) ** 2 - 0.03 * (u / 6.0) ** 2
    web_v = np.clip((v - (g.SHOULDER_TOP_MM + 1.2)) / s, 0.0, 1.0) * np.clip((g.BODY_BOTTOM_MM + 1.0 - v) / s, 0.0, 1.0)
    web = 0.74 + 0.03 * np.cos(lu * 9.0)  # faint moulding ribs
    bg = bg * (1.0 - web_v) + web * web_v
    seal = np.clip((v - g.SEAL_TOP_MM) / s, 0.0, 1.0) * np.clip((g.SEAL_BOTTOM_MM - v) / s, 0.0, 1.0)
    # Weld flash: a flat band with fine ribs from the sealing jaws and darker lips at both edges.
    zs = np.clip((v - g.SEAL_TOP_MM) / (g.SEAL_BOTTOM_MM - g.SEAL_TOP_MM), 0.0, 1.0)
    seal_tex = 0.56 + 0.035 * np.sin(u * 7.0 + 0.6 * np.sin(v * 3.0))
    seal_tex = seal_tex - 0.16 * (np.exp(-((zs / 0.12) ** 2)) + np.exp(-(((1.0 - zs) / 0.12) ** 2)))
    bg = bg * (1.0 - seal) + seal_tex * seal

    # Translucent plastic: cylindrical falloff, darker where the wall turns away (shoulder, bottom), dark rim.
    slope = g.wall_slope(v)
    plastic = (0.3 + 0.5 * t**0.55) / (1.0 + 2.2 * slope * slope)
    rim = np.exp(-(((1.0 - x) * hw / 0.14) ** 2))
    plastic = plastic * (1.0 - 0.45 * rim)
    plastic *= _smooth_noise(hrng, h, w, 6, 0.025)
    plastic *= 1.0 + 0.012 * _surface_grain(lu, v)

    # Liquid column: lens (bright core, darker flanks) below the meniscus of each vial.
    liquid = np.zeros((h, w), np.float32)
    band = np.zeros((h, w), np.float32)
    for k, men in enumerate(state.menisci):
        sel = idx == k - g.VIALS_PER_STRIP // 2
        if not np.any(sel):
            continue
        xs = x[sel]
        surf = men.level + men.tilt * lu[sel] - men.climb * xs**men.exponent
        d = men.band * (1.0 + 1.6 * xs**men.exponent)
        # A band thinner than a pixel is widened to 1.2 px and made paler, so it never falls between pixel centres.
        d_eff = np.maximum(d, 1.2 * s)
        liquid[sel] = np.clip((v[sel] - surf) / s + 0.5, 0.0, 1.0)
        z = (v[sel] - surf) / d_eff
        prof = np.clip(np.sin(np.pi * np.clip(z, 0.0, 1.0)), 0.0, 1.0) ** 0.7
        band[sel] = 0.62 * prof * (d / d_eff)
        bright = np.exp(-(((v[sel] - surf - d - 0.05) / 0.05) ** 2))
        band[sel] -= 0.18 * bright
    lens = 0.8 + 0.38 * t**1.5
    lum = plastic * (1.0 + liquid * (lens - 1.0)) * (1.0 - band)
    lum *= 1.0 + 0.04 * (1.0 - liquid)  # the empty head space looks a little clearer

    # Side-light specular streaks running along the body.
    xs_signed = x * np.sign(lu)
    spec = 0.22 * np.exp(-(((xs_signed + 0.5) / 0.07) ** 2)) + 0.09 * np.exp(-(((xs_signed - 0.63) / 0.05) ** 2))
    lum += spec * (1.0 / (1.0 + 4.0 * slope))

    # Embossed engraving (same on every vial of the strip).
    lum *= 1.0 + 0.09 * sample_engraving(state.engraving, lu, v)

    # Bubbles under the meniscus, drops on the wall above it (centre vial only: the neighbours are cut by the view).
    centre = idx == 0
    for b in state.bubbles:
        win = _window(view, b, h, w)
        if win is None:
            continue
        r = _blob_field(u[win], v[win], b)
        ring = np.clip(1.0 - np.abs(r - 0.85) / 0.22, 0.0, 1.0)
        glint = Blob(b.u - 0.35 * b.ru, b.v - 0.35 * b.rv, b.ru, b.rv)
        core = np.exp(-((_blob_field(u[win], v[win], glint) / 0.28) ** 2))
        wet = liquid[win] * centre[win]
        lum[win] = lum[win] * (1.0 - 0.55 * ring * wet) + 0.25 * core * (r < 1.0) * wet
    for b in state.drops:
        win = _window(view, b, h, w)
        if win is None:
            continue
        r = _blob_field(u[win], v[win], b)
        ring = np.clip(1.0 - np.abs(r - 0.8) / 0.3, 0.0, 1.0)
        glint = Blob(b.u + 0.3 * b.ru, b.v - 0.3 * b.rv, b.ru, b.rv)
        core = np.exp(-((_blob_field(u[win], v[win], glint) / 0.3) ** 2))
        dry = (1.0 - liquid[win]) * centre[win]
        lum[win] = lum[win] * (1.0 - 0.42 * ring * dry) + 0.18 * core * (r < 1.0) * dry

    vial_rgb = lum[..., None] * np.asarray(state.plastic_tint, np.float32)
    liquid_tint = 1.0 + liquid[..., None] * (np.asarray(state.liquid_tint, np.float32) - 1.0)
    vial_rgb = vial_rgb * liquid_tint
    img = bg[..., None] * (1.0 - cover[..., None]) + vial_rgb * cover[..., None]
    roi = roi_mask(u, v) & (idx == 0)
    return ProductRender(
        image=img.astype(np.float32),
        roi=roi,
        liquid=liquid * cover * centre,
        meniscus_band=np.clip(band, 0.0, None) * cover * centre,
        vial_index=idx,
    )
