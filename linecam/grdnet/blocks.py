"""Building blocks shared by the GRD-Net networks.

The generator is residual (ResNet V2, pre-activation) as the paper requires to avoid degradation during GAN
training. Normalisation is BatchNorm: the inference backends run eval mode at batch 1, where BatchNorm is a
per-channel affine that folds into the neighbouring conv and exports to ONNX opset 17 as plain ops.

Every block here uses only Conv2d, ConvTranspose2d, BatchNorm2d, ReLU/LeakyReLU, pad and add/concat, which
oneDNN runs fast in bf16 channels_last and which export cleanly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, int, int]:
    """Replicate-pad the bottom/right of ``x`` so H and W are multiples of ``multiple``.

    Why: every encoder halves the resolution per stage, so a size that is not divisible by the total stride
    would make the decoder's output disagree with the input. Replicate padding (not zeros) keeps the padded
    border looking like the image edge, so it does not read as an anomaly; callers crop back to (H, W).
    Returns the padded tensor and the original H, W.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


class PreActBlock(nn.Module):
    """ResNet V2 residual block: x + conv(act(bn(conv(act(bn(x)))))).

    Pre-activation keeps the identity path free of non-linearities, which the paper credits for the smoother,
    steeper learning curves of the residual GANomaly compared with a plain autoencoder.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(self.act(self.bn1(x)))
        y = self.conv2(self.act(self.bn2(y)))
        return x + y


class PreActConv(nn.Sequential):
    """bn -> act -> conv: the pre-activation way to change width or resolution between residual stages."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=False),
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=True),
        )


class PreActUp(nn.Sequential):
    """bn -> act -> 2x2 stride-2 transposed conv: exact 2x upsampling without checkerboard overlap."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=False),
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=True),
        )


def residual_stage(channels: int, blocks: int) -> nn.Sequential:
    """A stage of ``blocks`` pre-activation residual blocks at constant width and resolution."""
    return nn.Sequential(*[PreActBlock(channels) for _ in range(blocks)])


class ConvBNAct(nn.Sequential):
    """conv -> bn -> act (post-activation): used where no residual path exists (U-Net, discriminator).

    BatchNorm right after the conv folds into the conv weights at export time.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, negative_slope: float = 0.0) -> None:
        act: nn.Module = nn.LeakyReLU(negative_slope) if negative_slope > 0 else nn.ReLU(inplace=False)
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            act,
        )


class DoubleConv(nn.Sequential):
    """Two conv-bn-relu layers: the U-Net level of DRAEM's discriminative network."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(ConvBNAct(cin, cout), ConvBNAct(cout, cout))


def patchify(cin: int, cout: int, stride: int) -> nn.Module:
    """Stem that downsamples by ``stride`` with a stride x stride, stride-``stride`` conv (no overlap).

    Why: it equals PixelUnshuffle + 1x1 conv, so it sees every input pixel but spends almost no FLOPs at full
    resolution, where a 3x3 conv would dominate the inference time.
    """
    if stride == 1:
        return nn.Conv2d(cin, cout, 3, padding=1, bias=True)
    return nn.Conv2d(cin, cout, stride, stride=stride, bias=True)


def unpatchify(cin: int, cout: int, stride: int) -> nn.Module:
    """Head that upsamples by ``stride``: 3x3 conv to cout*stride^2 channels then PixelShuffle (inverse stem)."""
    if stride == 1:
        return nn.Conv2d(cin, cout, 3, padding=1, bias=True)
    return nn.Sequential(
        nn.Conv2d(cin, cout * stride * stride, 3, padding=1, bias=True),
        nn.PixelShuffle(stride),
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (for model cards and the FLOP bench)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "ConvBNAct",
    "DoubleConv",
    "PreActBlock",
    "PreActConv",
    "PreActUp",
    "count_parameters",
    "pad_to_multiple",
    "patchify",
    "residual_stage",
    "unpatchify",
]
