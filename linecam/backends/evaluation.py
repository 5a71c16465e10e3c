"""Evaluation through a Detector: the bridge between :mod:`linecam.grdnet.evaluate` (metrics, splits) and the
backends, so ``linecam eval``, ``linecam calibrate`` and ``bench/quality.py`` score with the graph, scoring head,
backend and precision the line runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from linecam.backends.base import Detector
from linecam.grdnet.evaluate import BatchScorer, Predictions, evaluate_model

__all__ = ["detector_scorer", "evaluate_detector"]


def detector_scorer(detector: Detector, fixed_mask: np.ndarray | None = None) -> BatchScorer:
    """``images -> (scores, raw probability maps)`` over ``detector`` (with an optional per-camera mask)."""

    def score(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = detector.detect(images, masks=fixed_mask, return_prob=True)  # type: ignore[call-arg]
        if out.prob is None:
            raise ValueError(f"the {detector.backend} backend returned no probability maps")
        return out.scores, out.prob

    return score


def evaluate_detector(detector: Detector, data_root: str | Path, image_size: int, *, batch_size: int = 8,
                      fixed_mask: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, Predictions]]:
    """Every metric of :func:`linecam.grdnet.evaluate.evaluate_model`, scored by ``detector``; the metrics name
    the backend and precision they were measured with."""
    metrics, preds = evaluate_model(detector_scorer(detector, fixed_mask), data_root, image_size,
                                    batch_size=batch_size, fixed_mask=fixed_mask is not None)
    metrics["backend"] = detector.backend
    metrics["precision"] = str(getattr(detector, "precision", ""))
    return metrics, preds
