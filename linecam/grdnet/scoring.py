"""THE scoring head: anomaly map (times an optional fixed mask) -> 21x21 mean filter -> maximum.

One implementation used by the evaluator, every inference backend and the exported ONNX graph, so that a
threshold calibrated offline means the same thing on the line. Smoothing before the maximum (as DRAEM does)
turns a single noisy pixel into 1/441 of a score while a real defect covering the window keeps its full
probability; the map is multiplied by the mask BEFORE pooling so that evidence outside the mask can never
leak into the window of a pixel inside it.

The pooling uses zero padding counted in the mean (``count_include_pad=True``): a defect at the border scores
lower than the same defect in the middle, but the head stays a plain AveragePool that exports to ONNX and
behaves the same for every size, odd ones included. It runs as two 1-D passes (21x1, 1x21), which is
the same mean at a tenth of the cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOL_KERNEL = 21


def smooth_map(prob_map: Tensor, kernel: int = POOL_KERNEL) -> Tensor:
    """21x21 mean filter, stride 1, same size (zero padding counted): (N,1,H,W) -> (N,1,H,W).

    ``kernel`` (odd) exists for diagnosis only (``bench/seed_diagnosis.py`` re-pools maps with smaller windows);
    the line always uses the default."""
    if prob_map.dim() != 4 or int(prob_map.shape[1]) != 1:
        raise ValueError(f"smooth_map: expected an anomaly map of shape (N, 1, H, W), got {tuple(prob_map.shape)}")
    # Separable: a 21x1 then a 1x21 mean equals the 21x21 mean exactly (zero padding counted, divisor 21*21),
    # at 42 instead of 441 additions per pixel.
    r = kernel // 2
    cols = F.avg_pool2d(prob_map, kernel_size=(kernel, 1), stride=1, padding=(r, 0), count_include_pad=True)
    return F.avg_pool2d(cols, kernel_size=(1, kernel), stride=1, padding=(0, r), count_include_pad=True)


def score_maps(prob_map: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Image scores (N,) and smoothed maps (N,1,H,W) from probability maps (N,1,H,W).

    ``mask`` (optional fixed inspection mask, values in [0,1]) may be (H,W), (1,1,H,W) or (N,1,H,W); it
    multiplies the map before pooling.
    """
    if prob_map.dim() != 4 or int(prob_map.shape[1]) != 1:
        raise ValueError(f"score_maps: expected an anomaly map of shape (N, 1, H, W), got {tuple(prob_map.shape)}")
    # Score in float32 whatever the model ran in: a bf16 mean of 441 values is too coarse for a threshold.
    prob_map = prob_map.float()
    if mask is not None:
        if mask.dim() == 2:
            mask = mask[None, None]
        # The shape check reads concrete sizes; while tracing/exporting it would freeze the dynamic batch
        # dimension into the graph, so it runs only in eager mode (the traced graph was checked eagerly).
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
        ok = tracing or (
            mask.dim() == 4
            and int(mask.shape[1]) == 1
            and int(mask.shape[0]) in (1, int(prob_map.shape[0]))
            and tuple(mask.shape[-2:]) == tuple(prob_map.shape[-2:])
        )
        if not ok:
            raise ValueError(
                f"score_maps: mask shape {tuple(mask.shape)} does not fit anomaly map {tuple(prob_map.shape)}; "
                "expected (H, W), (1, 1, H, W) or (N, 1, H, W)"
            )
        prob_map = prob_map * mask.to(prob_map.dtype)
    smoothed = smooth_map(prob_map)
    scores = smoothed.flatten(1).amax(dim=1)
    return scores, smoothed


class ScoringHead(nn.Module):
    """``score_maps`` as a module, so backends can append it to the exported graph."""

    def forward(self, prob_map: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return score_maps(prob_map, mask)
