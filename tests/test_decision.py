"""The line's one decision rule: reject when score > threshold; a NaN score is rejected, never accepted."""

from __future__ import annotations

import numpy as np
import pytest

from linecam.decision import decide, rejects, threshold_for_escape, threshold_for_frr, threshold_rejecting


def test_rule_at_the_threshold_and_for_nan() -> None:
    assert decide(0.5, 0.5) == "accept" and decide(np.nextafter(0.5, 1.0), 0.5) == "reject"
    assert decide(float("nan"), 0.5) == "reject"  # fail-safe: an undefined score is never a pass
    assert rejects(np.array([0.1, 0.5, 0.6, np.nan]), 0.5).tolist() == [False, False, True, True]
    assert decide(0.7, threshold_rejecting(0.7)) == "reject"


def test_thresholds_hit_their_targets_under_the_rule() -> None:
    labels = np.r_[np.zeros(100), np.ones(20)].astype(int)
    scores = np.r_[np.linspace(0.0, 0.5, 100), np.linspace(0.3, 0.9, 20)]
    t = threshold_for_frr(labels, scores, 0.01)
    assert int(rejects(scores[labels == 0], t).sum()) == 1
    e = threshold_for_escape(labels, scores, 0.0)
    assert rejects(scores[labels == 1], e).all() and e < 0.3
    with pytest.raises(ValueError, match="no defective images"):
        threshold_for_escape(np.zeros(3), np.ones(3), 0.0)
