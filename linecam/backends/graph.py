"""InferenceGraph: preprocessing + GRD-Net + scoring head as ONE torch module.

Every torch backend runs this module and the ONNX export traces it, so a frame is preprocessed and scored
the same way everywhere, on the backend's device, batched, with no per-image Python:

    uint8 (N, H, W, C)  -> RGB (gray replicated, alpha dropped) -> NCHW view (channels_last memory, no copy)
    -> float /255 -> bilinear resize to the model size (antialias off: ONNX/TensorRT have no antialias)
    -> compute dtype (fp32 / bf16 / fp16) -> GRDNet -> fp32 probability map
    -> scoring head (map * optional mask, 21x21 mean, max) -> (scores (N,), smoothed maps (N, 1, S, S))

With ``with_prob`` the graph also returns the raw probability map (N, 1, S, S) before the mask and the mean:
what ``linecam eval`` computes pixel metrics on (the paper's and the peers' pixel AUROC and AUPRO read the raw
map). The line never asks for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from linecam.grdnet.scoring import score_maps


def images_to_model_input(
    images: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.float32, always_resize: bool = False
) -> torch.Tensor:
    """uint8 NHWC (C in 1, 3, 4) -> float NCHW RGB in [0, 1] at ``size``, channels_last in memory.

    ``always_resize`` keeps the Resize op in the graph even when the input already has the model size (for
    exports with dynamic height/width); bilinear resize to the same size is the identity.
    """
    channels = images.shape[-1]
    if channels == 1:
        images = images.expand(-1, -1, -1, 3)
    elif channels == 4:
        images = images[..., :3]
    x = images.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
    if always_resize or tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def masks_to_model_size(mask: torch.Tensor, size: tuple[int, int], always_resize: bool = False) -> torch.Tensor:
    """float (M, 1, h, w) mask in [0, 1] -> (M, 1, S, S); bilinear like the images so edges line up."""
    mask = mask.to(torch.float32)
    if always_resize or tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False, antialias=False)
    return mask


class InferenceGraph(nn.Module):
    """forward(images uint8 NHWC, mask float (M,1,h,w) | None) -> (scores (N,) fp32, smoothed (N,1,S,S) fp32),
    plus the raw probability map (N,1,S,S) fp32 when ``with_prob``.

    ``compute_dtype`` is the dtype the network runs in; the caller converts the GRDNet weights to it (this
    module does not, so one GRDNet can back several graphs). The map is cast back to fp32 before scoring
    so the 21x21 mean does not lose precision.
    """

    def __init__(
        self,
        grdnet: nn.Module,
        image_size: tuple[int, int],
        compute_dtype: torch.dtype = torch.float32,
        always_resize: bool = False,
        with_prob: bool = False,
    ) -> None:
        super().__init__()
        self.grdnet = grdnet
        self.with_prob = with_prob
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.compute_dtype = compute_dtype
        self.always_resize = always_resize

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = images_to_model_input(images, self.image_size, self.compute_dtype, self.always_resize)
        prob = self.grdnet(x).to(torch.float32)
        fixed = None if mask is None else masks_to_model_size(mask, self.image_size, self.always_resize)
        scores, smoothed = score_maps(prob, fixed)
        if self.with_prob:
            return scores, smoothed, prob
        return scores, smoothed
