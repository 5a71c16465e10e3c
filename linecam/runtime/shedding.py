"""Load shedding: which frames of a batch get ``timeout`` at once because they cannot get a verdict in time.

A pure policy (numbers in, decisions out) so it is tested without a worker. Why predict, not only check: a frame
past its deadline is rejected by the gate anyway, but when the worker falls behind, the frames at the head of
its queue are *almost* due, and inferring them only produces verdicts a few ms late; every frame is then late
and the line inspects nothing (measured on the demo line at 3 x 10 fps on two cores: 4 of 614 frames in time).
So a frame is shed when its deadline falls before the expected end of this batch (the batch's crops times the
cost per crop); the earliest-due frame goes first, and the batch's expected end is recomputed without it. The
compute then goes to frames that can still make it. Until a live batch has been timed, only frames already past
their deadline are shed.

The prediction never sheds the last live frame of a batch (the latest due): only inferred batches update the
cost per crop, so a worker that shed whole batches on one slow estimate would never measure again. That
happened: on the demo line at 3 x 20 fps, start-up contention timed three batches at 100-116 ms per crop, the
estimate reached 350 ms, and from then on every frame was shed for the rest of the run (0 frames judged in
12 s). With one frame inferred per batch the estimate follows the real cost back down, at the price of at most
one late verdict per batch while it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LiveFrame", "plan_shedding", "update_crop_cost"]

STALE = "stale: capture + deadline passed before inference"


@dataclass(frozen=True)
class LiveFrame:
    """A frame that is still to be inferred: when its verdict is due and how many region crops it costs."""

    key: int
    due_ns: int
    crops: int


def plan_shedding(frames: Sequence[LiveFrame], batch_start_ns: int, crop_cost_ns: float | None,
                  predict: bool = True) -> dict[int, str]:
    """``{key: why}`` for every frame to answer ``timeout`` without inferring it (see the module docstring).

    ``predict`` false sheds only the frames already past their deadline (``infer.shed_late: false``).
    """
    shed = {f.key: STALE for f in frames if f.due_ns < batch_start_ns}
    if crop_cost_ns is None or not predict:
        return shed
    live = sorted((f for f in frames if f.key not in shed), key=lambda f: f.due_ns)
    crops = sum(f.crops for f in live)
    for frame in live[:-1]:  # the latest-due frame is always inferred (see the module docstring)
        expected_end = batch_start_ns + crop_cost_ns * crops
        if frame.due_ns >= expected_end:
            break
        shed[frame.key] = (f"shed: inference would end {(expected_end - frame.due_ns) / 1e6:.1f} ms after the "
                           f"deadline ({crop_cost_ns / 1e6:.1f} ms per crop)")
        crops -= frame.crops
    return shed


def update_crop_cost(previous_ns: float | None, batch_ns: float, crops: int) -> float:
    """The cost per crop after one more inferred batch: a moving average (weight 0.2 on the new batch)."""
    cost = batch_ns / max(1, crops)
    return cost if previous_ns is None else 0.8 * previous_ns + 0.2 * cost
