"""Physical geometry of a blow-fill-seal (BFS) vial strip and the camera view onto it.

Everything is expressed in millimetres in a *scene* frame (u to the right, v downwards, u=0 on the axis of the
inspected vial) so that the image, the ROI and every defect are evaluated from the same numbers: a pose jitter moves
all of them together, which is what keeps the ROI and the ground truth pixel-aligned with the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AREAS: tuple[str, ...] = ("meniscus", "body", "bottom")
"""The three inspection areas of the paper's real case (section 4.3): one camera view per area."""

FIELD_OF_VIEW_MM = 10.24
"""Width of the camera view (the shorter image side): 40 um/px at 256 px, one vial plus its neighbours' edges."""

VIAL_PITCH_MM = 8.0
"""Distance between the axes of two neighbouring vials of the 5-vial strip."""
VIALS_PER_STRIP = 5
BODY_HALF_WIDTH_MM = 3.7
NECK_HALF_WIDTH_MM = 1.5
NECK_TOP_MM = -9.5
SHOULDER_TOP_MM = -6.2
SHOULDER_BOTTOM_MM = -3.0
BODY_BOTTOM_MM = 14.0
BOTTOM_RADIUS_MM = 2.2
SEAL_TOP_MM = 16.6
SEAL_BOTTOM_MM = 17.8
ROI_INSET = 0.86
"""The ROI keeps the inner 86 % of the body width: the walls seen edge-on are dark and refractive (false rejects)."""
ROI_TOP_MM = -3.6
"""The ROI starts on the lower shoulder so that the meniscus always lies inside it."""

AREA_CENTRE_V_MM: dict[str, float] = {"meniscus": -2.2, "body": 7.0, "bottom": 13.2}
"""Vertical centre of each camera view in scene millimetres."""


def pixel_scale_um(height: int, width: int) -> float:
    """Nominal size of one pixel on the product (um): the field of view spans the shorter image side."""
    return FIELD_OF_VIEW_MM * 1000.0 / float(min(height, width))


def _half_width_table() -> tuple[np.ndarray, np.ndarray]:
    """Half-width of one vial as a function of v (mm), tabulated once for np.interp."""
    v = np.arange(-20.0, 22.0, 0.01, dtype=np.float64)
    hw = np.zeros_like(v)
    neck = (v >= NECK_TOP_MM) & (v < SHOULDER_TOP_MM)
    hw[neck] = NECK_HALF_WIDTH_MM
    sh = (v >= SHOULDER_TOP_MM) & (v < SHOULDER_BOTTOM_MM)
    z = (v[sh] - SHOULDER_TOP_MM) / (SHOULDER_BOTTOM_MM - SHOULDER_TOP_MM)
    ease = 0.5 - 0.5 * np.cos(np.pi * z)
    hw[sh] = NECK_HALF_WIDTH_MM + (BODY_HALF_WIDTH_MM - NECK_HALF_WIDTH_MM) * ease
    body = (v >= SHOULDER_BOTTOM_MM) & (v < BODY_BOTTOM_MM)
    hw[body] = BODY_HALF_WIDTH_MM
    bot = (v >= BODY_BOTTOM_MM) & (v < BODY_BOTTOM_MM + BOTTOM_RADIUS_MM)
    zb = (v[bot] - BODY_BOTTOM_MM) / BOTTOM_RADIUS_MM
    # Flattened elliptic bottom: wide until the last millimetre, like a moulded BFS foot.
    hw[bot] = BODY_HALF_WIDTH_MM * np.sqrt(np.clip(1.0 - zb**4, 0.0, 1.0))
    return v, hw


_HW_V, _HW = _half_width_table()
_HW_SLOPE = np.gradient(_HW, _HW_V)


def half_width(v: np.ndarray) -> np.ndarray:
    """Vial half-width (mm) at scene heights ``v``; 0 where there is no vial."""
    return np.interp(v, _HW_V, _HW).astype(np.float32)


def wall_slope(v: np.ndarray) -> np.ndarray:
    """|d half-width / dv|: how steeply the wall turns away from the camera (shoulder, bottom)."""
    return np.abs(np.interp(v, _HW_V, _HW_SLOPE)).astype(np.float32)


@dataclass(frozen=True)
class Pose:
    """Rigid jitter of the product in the view: shift (mm), rotation (rad) and magnification."""

    shift_u: float = 0.0
    shift_v: float = 0.0
    angle: float = 0.0
    magnification: float = 1.0

    @staticmethod
    def random(rng: np.random.Generator) -> Pose:
        """Carousel pockets hold the strip to a few tenths of a millimetre and a couple of degrees."""
        return Pose(
            shift_u=float(rng.uniform(-0.3, 0.3)),
            shift_v=float(rng.uniform(-0.35, 0.35)),
            angle=float(np.deg2rad(rng.uniform(-2.0, 2.0))),
            magnification=float(rng.uniform(0.97, 1.03)),
        )


@dataclass(frozen=True)
class View:
    """Image size, inspected area and pose: everything needed to map pixels to scene millimetres."""

    height: int
    width: int
    area: str
    pose: Pose

    def __post_init__(self) -> None:
        if self.area not in AREAS:
            raise ValueError(f"area: unknown inspection area {self.area!r}; expected one of {list(AREAS)}")
        if self.height < 64 or self.width < 64:
            raise ValueError(f"image size: {self.height}x{self.width} is too small (minimum 64x64)")

    @property
    def mm_per_px(self) -> float:
        """Millimetres of product per pixel, including the pose magnification."""
        return pixel_scale_um(self.height, self.width) / 1000.0 / self.pose.magnification

    def scene_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Scene coordinates (u, v) in mm of every pixel centre, float32 arrays of shape (H, W)."""
        s = self.mm_per_px
        ys = (np.arange(self.height, dtype=np.float32) - (self.height - 1) / 2.0) * s
        xs = (np.arange(self.width, dtype=np.float32) - (self.width - 1) / 2.0) * s
        ca, sa = np.float32(np.cos(self.pose.angle)), np.float32(np.sin(self.pose.angle))
        x = xs[None, :] - np.float32(self.pose.shift_u)
        y = ys[:, None] - np.float32(self.pose.shift_v)
        u = ca * x + sa * y
        v = -sa * x + ca * y + np.float32(AREA_CENTRE_V_MM[self.area])
        return u.astype(np.float32), v.astype(np.float32)

    def to_pixel(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`scene_coords`: pixel (x, y) of scene points, for drawing defects in the scene."""
        s = self.mm_per_px
        ca, sa = np.cos(self.pose.angle), np.sin(self.pose.angle)
        vv = np.asarray(v, dtype=np.float64) - AREA_CENTRE_V_MM[self.area]
        uu = np.asarray(u, dtype=np.float64)
        x = ca * uu - sa * vv + self.pose.shift_u
        y = sa * uu + ca * vv + self.pose.shift_v
        return x / s + (self.width - 1) / 2.0, y / s + (self.height - 1) / 2.0
