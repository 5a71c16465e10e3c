"""The one decision rule of the line, and the thresholds chosen under it: reject when score > threshold.

Why one module: the worker, ``linecam predict``, ``linecam eval`` (its reported rates and the threshold it
stores), the evaluation report and ``linecam calibrate`` used to decide with two rules (``>`` and ``>=``), so a
product scoring exactly the threshold was rejected in the figures and accepted on the line. Every caller now
decides here, and every threshold is chosen for this rule.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

RULE = "reject when score > threshold"

__all__ = ["RULE", "decide", "rejects", "threshold_for_escape", "threshold_for_frr", "threshold_rejecting"]


def rejects(scores: np.ndarray | float, threshold: float) -> np.ndarray:
    """Which scores are rejected under ``threshold`` (bool array; a NaN score is never below it: rejected)."""
    values = np.asarray(scores, dtype=np.float64)
    return ~(values <= threshold)


def decide(score: float, threshold: float) -> Literal["accept", "reject"]:
    """The verdict for one score (per region of every frame: plain floats, no array; NaN is not <= anything)."""
    return "accept" if float(score) <= threshold else "reject"


def threshold_rejecting(score: float) -> float:
    """The highest threshold that still rejects ``score``: for a threshold found as "reject from this score on"."""
    return float(np.nextafter(float(score), -np.inf))


def threshold_for_frr(labels: np.ndarray, scores: np.ndarray, target_frr: float) -> float:
    """Lowest threshold whose false-reject rate on the good images (label 0) is <= ``target_frr``."""
    if not 0 <= target_frr < 1:
        raise ValueError(f"--target-frr must be in [0, 1), got {target_frr}")
    good = np.sort(np.asarray(scores, dtype=np.float64)[~np.asarray(labels).astype(bool)])
    if good.size == 0:
        raise ValueError("calibration split has no good images: cannot set a false-reject rate")
    allowed = int(math.floor(target_frr * good.size + 1e-9))
    return float(good[good.size - 1 - allowed])


def threshold_for_escape(labels: np.ndarray, scores: np.ndarray, target_escape: float) -> float:
    """Highest threshold whose escape rate on the defective images (label 1) is <= ``target_escape``.

    Pharma lines set the escape budget first and pay for it in false rejects."""
    if not 0 <= target_escape < 1:
        raise ValueError(f"--target-escape must be in [0, 1), got {target_escape}")
    bad = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels).astype(bool)])
    if bad.size == 0:
        raise ValueError("calibration split has no defective images: cannot set an escape rate")
    allowed = int(math.floor(target_escape * bad.size + 1e-9))
    return threshold_rejecting(bad[allowed])
