"""The load-shedding policy on its own: numbers in, frames to answer ``timeout`` out."""

from __future__ import annotations

from linecam.runtime.shedding import LiveFrame, plan_shedding, update_crop_cost

MS = 1_000_000


def test_stale_frames_are_shed_even_without_a_cost_estimate() -> None:
    frames = [LiveFrame(0, 100 * MS, 1), LiveFrame(1, 300 * MS, 1)]
    assert plan_shedding(frames, 200 * MS, None) == {0: "stale: capture + deadline passed before inference"}
    assert list(plan_shedding(frames, 200 * MS, 50.0 * MS, predict=False)) == [0]


def test_earliest_due_frames_are_shed_until_the_batch_ends_in_time_but_never_the_last() -> None:
    # batch starts at 0; 10 ms per crop; four frames of 2 crops each -> expected end 80 ms
    frames = [LiveFrame(k, due * MS, 2) for k, due in enumerate((30, 50, 75, 200))]
    shed = plan_shedding(frames, 0, 10.0 * MS)
    # 30 < 80 -> shed (end 60); 50 < 60 -> shed (end 40); 75 >= 40 -> stop
    assert sorted(shed) == [0, 1] and "ms after the deadline (10.0 ms per crop)" in shed[0]
    hopeless = [LiveFrame(k, 1 * MS, 1) for k in range(3)]
    assert sorted(plan_shedding(hopeless, 0, 10.0 * MS)) == [0, 1]  # the latest-due one is still inferred


def test_cost_estimate_follows_the_live_batches() -> None:
    assert update_crop_cost(None, 40 * MS, 4) == 10 * MS
    assert update_crop_cost(10 * MS, 100 * MS, 5) == 0.8 * 10 * MS + 0.2 * 20 * MS
