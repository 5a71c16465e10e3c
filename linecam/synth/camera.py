"""Synthetic line camera: an endless, reproducible stream of rendered BFS vial frames.

The ``synthetic`` acquire source wraps it for demos and tests. Frame ``i`` depends only on (seed, i), so a run can
be replayed exactly; pacing to the line rate is the acquire process's job, not this class's.
"""

from __future__ import annotations

from linecam.synth.defects import SEEN_KINDS
from linecam.synth.render import GOOD, OUTSIDE_ROI, RenderConfig, SynthSample, derive_rng, render_sample


class SyntheticCamera:
    """Renders frames of the given area; a share ``defect_rate`` carries an in-ROI defect of a seen kind and a
    share ``outside_roi_rate`` a defect strictly outside the ROI (line label good)."""

    def __init__(
        self,
        seed: int,
        width: int,
        height: int,
        defect_rate: float,
        area: str = "meniscus",
        channels: int = 3,
        outside_roi_rate: float = 0.0,
    ):
        for name, rate in (("defect_rate", defect_rate), ("outside_roi_rate", outside_roi_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}: must be within [0, 1], got {rate}")
        if defect_rate + outside_roi_rate > 1.0:
            raise ValueError(f"defect_rate + outside_roi_rate: must be <= 1, got {defect_rate + outside_roi_rate}")
        self.seed = int(seed)
        self.defect_rate = float(defect_rate)
        self.outside_roi_rate = float(outside_roi_rate)
        self.config = RenderConfig(height=height, width=width, area=area, channels=channels)
        self.frame_index = 0

    @property
    def pixel_scale_um(self) -> float:
        return self.config.pixel_scale_um

    def render(self, index: int) -> SynthSample:
        """Frame number ``index`` of this camera's sequence (random access, for replay)."""
        rng = derive_rng(self.seed, "camera", index)
        draw = rng.random()
        if draw < self.defect_rate:
            kind = SEEN_KINDS[int(rng.integers(len(SEEN_KINDS)))]
        elif draw < self.defect_rate + self.outside_roi_rate:
            kind = OUTSIDE_ROI
        else:
            kind = GOOD
        return render_sample(rng, self.config, kind)

    def next_frame(self) -> SynthSample:
        """The next frame of the deterministic sequence."""
        sample = self.render(self.frame_index)
        self.frame_index += 1
        return sample
