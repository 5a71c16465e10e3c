"""The verdict path: one verdict per frame from what the batch found, and the images written beside it.

A frame's verdict follows from its item alone: a reason it already carries (``bad_frame``, ``error``,
``timeout``) rejects it; otherwise any region above its threshold rejects it (``linecam.decision``); otherwise
it is accepted. Reject images (``infer.reject_dir``) and the inspection archive (``archive:``) are written by
background writers with bounded queues, never on the hot path; a full queue drops and counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linecam.config import ConfigError, LineConfig
from linecam.decision import decide
from linecam.runtime.archive import ArchiveError, ArchiveWriter
from linecam.runtime.frames import FrameItem
from linecam.runtime.messages import Verdict
from linecam.runtime.metrics import LineMetrics
from linecam.runtime.modelset import Region
from linecam.runtime.rejects import RejectImage, RejectWriter

__all__ = ["ImageOutputs", "make_verdict"]

RegionMaps = dict[str, tuple[tuple[int, int, int, int], np.ndarray | None]]


def make_verdict(item: FrameItem, regions: Sequence[Region], versions: Sequence[str], default_version: str,
                 batch_start_ns: int, infer_done_ns: int) -> Verdict:
    """The verdict of one frame; ``versions`` are those of the models that scored it."""
    thresholds = {r.config.name: r.threshold for r in regions}
    if item.reason:
        decision, reason = "reject", item.reason
    elif any(decide(item.scores[r.config.name], r.threshold) == "reject" for r in regions):
        decision, reason = "reject", "anomaly"
    else:
        decision, reason = "accept", "ok"
    timestamps = {"received": item.received_ns, "batch_start": batch_start_ns, "infer_done": infer_done_ns}
    if item.header is not None:
        timestamps["capture"] = item.header.t_capture_ns
        if item.header.t_sent_ns:
            timestamps["acquire_sent"] = item.header.t_sent_ns
    return Verdict(
        camera=item.camera, seq=item.seq, slot=item.slot, decision=decision, reason=reason,  # type: ignore[arg-type]
        scores=item.scores, thresholds=thresholds if item.header is not None else {},
        model_version=",".join(sorted(versions)) or default_version, timestamps=timestamps, detail=item.detail,
    )


def region_maps(item: FrameItem, regions: Sequence[Region]) -> RegionMaps:
    """Per region: its box in frame pixels (full frame when it has none) and its map, if one was made."""
    assert item.rgb is not None
    h, w = item.rgb.shape[:2]
    return {r.config.name: (r.config.box or (0, 0, w, h), item.maps.get(r.config.name)) for r in regions}


class ImageOutputs:
    """The reject-image writer and the inspection archive of one worker (either may be off)."""

    def __init__(self, cfg: LineConfig, metrics: LineMetrics) -> None:
        self.rejects: RejectWriter | None = None
        self.archive: ArchiveWriter | None = None
        if cfg.infer.reject_dir is not None and cfg.infer.save_rejects:
            self.rejects = RejectWriter(cfg.infer.reject_dir, cfg.infer.reject_queue, metrics)
        if cfg.archive is not None:
            try:
                self.archive = ArchiveWriter(cfg.archive, metrics.registry)
            except ArchiveError as exc:
                if self.rejects is not None:
                    self.rejects.close()
                raise ConfigError(f"{cfg.source_path or 'config'}: {exc.problems[0]}") from None

    @staticmethod
    def wanted(cfg: LineConfig) -> bool:
        """Whether a writer will use the maps: detectors copy maps back only then (decided before the warm-up,
        so the warm-up runs the same graph as the live batches)."""
        return (cfg.infer.reject_dir is not None and cfg.infer.save_rejects) or cfg.archive is not None

    def offer(self, verdict: Verdict, item: FrameItem, regions: Sequence[Region]) -> None:
        """Hand a decided frame to the writers; each decides what it keeps and copies only that."""
        truth = item.header.truth.model_dump() if item.header is not None and item.header.truth else None
        if verdict.decision == "reject" and self.rejects is not None and item.rgb is not None:
            self.rejects.submit(RejectImage(item.camera, item.seq, item.slot, verdict.reason, np.array(item.rgb),
                                            region_maps(item, regions), dict(item.scores), dict(verdict.thresholds),
                                            verdict.model_version, truth))
        if self.archive is not None:
            self.archive.offer(verdict, item.rgb, region_maps(item, regions) if item.rgb is not None else None, truth)

    def close(self) -> None:
        if self.rejects is not None:
            self.rejects.close()
        if self.archive is not None:
            self.archive.close()
