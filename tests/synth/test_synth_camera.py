"""Synthetic camera: deterministic sequence, random access, rates honoured, labels consistent with masks."""

from __future__ import annotations

import numpy as np
import pytest

from linecam.synth.camera import SyntheticCamera


def test_same_seed_same_sequence_and_random_access() -> None:
    a = SyntheticCamera(seed=4, width=96, height=80, defect_rate=0.5, area="meniscus", outside_roi_rate=0.2)
    b = SyntheticCamera(seed=4, width=96, height=80, defect_rate=0.5, area="meniscus", outside_roi_rate=0.2)
    fa = [a.next_frame() for _ in range(6)]
    fb = [b.next_frame() for _ in range(6)]
    for x, y in zip(fa, fb, strict=True):
        assert x.image.tobytes() == y.image.tobytes() and x.kind == y.kind
        assert x.defect_mask.tobytes() == y.defect_mask.tobytes()
    assert fa[0].image.tobytes() != fa[1].image.tobytes()
    assert a.render(3).image.tobytes() == fa[3].image.tobytes()
    other = SyntheticCamera(seed=5, width=96, height=80, defect_rate=0.5, area="meniscus").next_frame()
    assert other.image.tobytes() != fa[0].image.tobytes()


def test_frames_carry_consistent_truth() -> None:
    cam = SyntheticCamera(seed=1, width=64, height=64, defect_rate=0.4, area="body", outside_roi_rate=0.3)
    kinds = set()
    for _ in range(30):
        f = cam.next_frame()
        assert f.image.shape == (64, 64, 3) and f.image.dtype == np.uint8
        kinds.add(f.kind)
        inside = np.any((f.defect_mask > 0) & (f.roi > 0))
        if f.kind == "good":
            assert f.line_label == "good" and not f.defect_mask.any()
        elif f.kind == "outside_roi":
            assert f.line_label == "good" and f.defect_mask.any() and not inside
        else:
            assert f.line_label == "defect" and inside
    assert {"good", "outside_roi"} <= kinds and len(kinds) >= 4


def test_all_defect_and_grayscale() -> None:
    cam = SyntheticCamera(seed=2, width=64, height=72, defect_rate=1.0, area="bottom", channels=1)
    for _ in range(5):
        f = cam.next_frame()
        assert f.image.shape == (72, 64, 1) and f.line_label == "defect" and f.defect_mask.any()


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="defect_rate"):
        SyntheticCamera(seed=0, width=64, height=64, defect_rate=1.5, area="meniscus")
    with pytest.raises(ValueError, match="outside_roi_rate"):
        SyntheticCamera(seed=0, width=64, height=64, defect_rate=0.8, area="meniscus", outside_roi_rate=0.5)
    with pytest.raises(ValueError, match="channels"):
        SyntheticCamera(seed=0, width=64, height=64, defect_rate=0.1, area="meniscus", channels=4)
