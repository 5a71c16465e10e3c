"""Embossed engravings on the vial body (product text and horizontal ridges).

The engraving is rendered once into a small relief-shading texture in scene millimetres and then sampled through the
same pixel->scene mapping as the rest of the vial, so it follows pose jitter exactly and costs one ``cv2.remap``.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

TEXTURE_PX_PER_MM = 24.0
TEXTURE_U0_MM = -3.9
TEXTURE_U1_MM = 3.9
TEXTURE_V0_MM = 1.2
TEXTURE_V1_MM = 13.0
RIDGES_MM: tuple[float, ...] = (2.2, 12.2)
"""Horizontal engraved rings: the upper one is visible at the bottom of the meniscus view (paper Fig. 9c)."""

ENGRAVING_TEXTS: tuple[tuple[str, str, str], ...] = (
    ("NaCl 0.9%", "5 ml", "STERILE"),
    ("WFI", "2 ml", "SINGLE DOSE"),
    ("SALINE", "10 ml", "LOT A23"),
)


@lru_cache(maxsize=len(ENGRAVING_TEXTS))
def engraving_shading(variant: int) -> np.ndarray:
    """Relief shading texture (float32, ~[-1, 1]) of engraving ``variant``: light from the upper left."""
    if not 0 <= variant < len(ENGRAVING_TEXTS):
        raise ValueError(f"engraving variant: {variant} out of range 0..{len(ENGRAVING_TEXTS) - 1}")
    w = int(round((TEXTURE_U1_MM - TEXTURE_U0_MM) * TEXTURE_PX_PER_MM))
    h = int(round((TEXTURE_V1_MM - TEXTURE_V0_MM) * TEXTURE_PX_PER_MM))
    relief = np.zeros((h, w), np.uint8)
    for ridge in RIDGES_MM:
        y = int(round((ridge - TEXTURE_V0_MM) * TEXTURE_PX_PER_MM))
        cv2.line(relief, (0, y), (w - 1, y), 255, 4, cv2.LINE_AA)
    lines = ENGRAVING_TEXTS[variant]
    ys_mm = (5.0, 7.4, 9.6)
    for text, y_mm, scale in zip(lines, ys_mm, (1.05, 1.25, 0.8), strict=True):
        (tw, _th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
        x = max(2, (w - tw) // 2)
        y = int(round((y_mm - TEXTURE_V0_MM) * TEXTURE_PX_PER_MM))
        cv2.putText(relief, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 3, cv2.LINE_AA)
    r = cv2.GaussianBlur(relief.astype(np.float32) / 255.0, (0, 0), 1.6)
    # Directional derivative = emboss: bright on the lit flank, dark on the other one.
    shade = (np.roll(r, 2, axis=0) - np.roll(r, -2, axis=0)) + (np.roll(r, 2, axis=1) - np.roll(r, -2, axis=1))
    shade -= 0.25 * r  # the engraved groove itself scatters a little light
    shade[:3, :] = 0.0
    shade[-3:, :] = 0.0
    shade[:, :3] = 0.0
    shade[:, -3:] = 0.0
    return shade.astype(np.float32)


def sample_engraving(variant: int, local_u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shading of the engraving at scene points (u relative to each vial's axis, v), 0 outside the texture."""
    tex = engraving_shading(variant)
    map_x = ((local_u - TEXTURE_U0_MM) * TEXTURE_PX_PER_MM).astype(np.float32)
    map_y = ((v - TEXTURE_V0_MM) * TEXTURE_PX_PER_MM).astype(np.float32)
    return cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
