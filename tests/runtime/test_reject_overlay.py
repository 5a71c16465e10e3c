"""Reject overlays scale the heatmap to the region's threshold, so the spot that caused the reject is red."""

from __future__ import annotations

import numpy as np

from linecam.runtime.rejects import overlay


def test_overlay_colour_scale_is_relative_to_the_threshold() -> None:
    image = np.full((32, 32, 3), 128, np.uint8)
    amap = np.zeros((32, 32), np.float32)
    amap[10:14, 10:14] = 0.2  # twice the threshold of 0.1: full scale (red in jet)
    regions = {"vial": ((0, 0, 32, 32), amap)}
    relative = overlay(image, regions, alpha=1.0, thresholds={"vial": 0.1})
    absolute = overlay(image, regions, alpha=1.0)
    b, g, r = (int(c) for c in relative[12, 12])
    assert r > 100 and r > b  # hot spot reads as red/dark red relative to the threshold
    b_abs, _, r_abs = (int(c) for c in absolute[12, 12])
    assert b_abs > r_abs  # on the absolute 0..1 scale the same value stays blue
    # background (map 0) is the bottom of the scale in both
    assert tuple(relative[0, 0]) == tuple(absolute[0, 0])
