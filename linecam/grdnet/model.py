"""GRD-Net networks: residual GANomaly generator, adversarial discriminator, discriminative U-Net.

Shapes: every network takes float NCHW in [0, 1]. Inputs whose H or W is not a multiple of the network's
total stride (``profile.gen_stride`` / ``profile.unet_stride``) are replicate-padded at the bottom/right
internally and the outputs are cropped back, so any size works (the DRAE bottleneck is the exception: its
dense layer fixes the latent grid, so it only accepts sizes that pad to ``profile.image_size``).

The inference path is ``GRDNet.forward``: generator encoder + decoder (``Generator.reconstruct``, the second
encoder is only needed for the training loss) then the U-Net on cat(x, x_hat) and a sigmoid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from linecam.grdnet.blocks import (
    ConvBNAct,
    DoubleConv,
    PreActConv,
    PreActUp,
    pad_to_multiple,
    patchify,
    residual_stage,
    unpatchify,
)
from linecam.grdnet.profiles import ModelProfile


class GeneratorOutput(NamedTuple):
    """Reconstruction and both latent codes (GANomaly: z = E1(x), z_hat = E2(x_hat))."""

    x_hat: Tensor
    z: Tensor
    z_hat: Tensor


def _check_input(x: Tensor, channels: int, who: str) -> None:
    if x.dim() != 4 or int(x.shape[1]) != channels:
        raise ValueError(f"{who}: expected input of shape (N, {channels}, H, W), got {tuple(x.shape)}")


class Encoder(nn.Module):
    """Residual encoder: patchify stem, then per stage (stride-2 conv +) ``blocks_per_stage`` pre-act blocks.

    Ends in a 1x1 conv to ``latent_channels`` (CRAE) or additionally a dense layer to ``dense_latent`` (DRAE).
    Expects H, W already multiples of ``profile.gen_stride``.
    """

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__()
        widths = profile.gen_widths
        layers: list[nn.Module] = [patchify(profile.in_channels, widths[0], profile.stem_stride)]
        layers.append(residual_stage(widths[0], profile.blocks_per_stage))
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers.append(PreActConv(cin, cout, 3, stride=2, padding=1))
            layers.append(residual_stage(cout, profile.blocks_per_stage))
        layers.append(PreActConv(widths[-1], profile.latent_channels, 1))
        self.features = nn.Sequential(*layers)
        self.dense: nn.Linear | None = None
        self.latent_side = profile.latent_side()
        if profile.bottleneck == "drae":
            flat = profile.latent_channels * self.latent_side**2
            self.dense = nn.Linear(flat, profile.dense_latent)

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(x)
        if self.dense is None:
            return z
        if int(z.shape[-1]) != self.latent_side or int(z.shape[-2]) != self.latent_side:
            raise ValueError(
                f"DRAE encoder: latent grid {tuple(z.shape[-2:])} does not match the profile's "
                f"{self.latent_side}x{self.latent_side}; DRAE models only accept inputs of the profile size"
            )
        return self.dense(torch.flatten(z, 1))


class Decoder(nn.Module):
    """Mirror of the encoder: per stage pre-act blocks then 2x transposed-conv upsampling; sigmoid output."""

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__()
        widths = profile.gen_widths
        self.latent_channels = profile.latent_channels
        self.latent_side = profile.latent_side()
        self.dense: nn.Linear | None = None
        if profile.bottleneck == "drae":
            self.dense = nn.Linear(profile.dense_latent, profile.latent_channels * self.latent_side**2)
        layers: list[nn.Module] = [nn.Conv2d(profile.latent_channels, widths[-1], 3, padding=1)]
        for i in range(len(widths) - 1, -1, -1):
            layers.append(residual_stage(widths[i], profile.blocks_per_stage))
            if i > 0:
                layers.append(PreActUp(widths[i], widths[i - 1]))
        layers += [
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=False),
            unpatchify(widths[0], profile.in_channels, profile.stem_stride),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if self.dense is not None:
            z = self.dense(z).view(-1, self.latent_channels, self.latent_side, self.latent_side)
        return torch.sigmoid(self.body(z))


class Generator(nn.Module):
    """GANomaly encoder-decoder-encoder with residual (ResNet V2) stages; CRAE or DRAE bottleneck.

    ``encoder2`` has the same architecture as ``encoder`` but its own weights (GANomaly): the encoder loss
    ||z - z_hat|| makes the reconstruction consistent in latent space, not only in pixels.
    """

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__()
        self.profile = profile
        self.encoder = Encoder(profile)
        self.decoder = Decoder(profile)
        self.encoder2 = Encoder(profile)

    def _reconstruct_padded(self, x: Tensor) -> tuple[Tensor, Tensor, int, int]:
        _check_input(x, self.profile.in_channels, "Generator")
        xp, h, w = pad_to_multiple(x, self.profile.gen_stride)
        z = self.encoder(xp)
        return self.decoder(z), z, h, w

    def forward(self, x: Tensor) -> GeneratorOutput:
        x_hat_p, z, h, w = self._reconstruct_padded(x)
        z_hat = self.encoder2(x_hat_p)
        return GeneratorOutput(x_hat=x_hat_p[..., :h, :w], z=z, z_hat=z_hat)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Inference path: x_hat only (skips the second encoder, which only feeds the training loss)."""
        x_hat_p, _, h, w = self._reconstruct_padded(x)
        return x_hat_p[..., :h, :w]


class Discriminator(nn.Module):
    """Adversarial discriminator on real vs reconstructed images (DCGAN-like, LeakyReLU 0.2).

    Returns (logits (N,), features (N, C, h, w)); the features feed GANomaly's feature-matching adversarial
    loss, which trains more stably than the plain GAN loss.
    """

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__()
        self.profile = profile
        widths = profile.disc_widths
        layers: list[nn.Module] = [
            patchify(profile.in_channels, widths[0], profile.stem_stride),
            nn.LeakyReLU(0.2),
        ]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers.append(ConvBNAct(cin, cout, 3, stride=2, negative_slope=0.2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_input(x, self.profile.in_channels, "Discriminator")
        feats = self.features(x)
        logits = self.classifier(feats).mean(dim=(1, 2, 3))
        return logits, feats


class DiscriminativeUNet(nn.Module):
    """U-Net on cat([x, x_hat]) that segments anomalies (DRAEM's discriminative subnetwork) -> logits (N,1,H,W).

    Level 0 is a patchify stem plus one 3x3 conv, later levels max-pool + two convs; the decoder upsamples with
    transposed convs, concatenates the skip and runs two convs; the head pixel-shuffles back to full resolution.
    """

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__()
        self.profile = profile
        u = profile.unet_widths
        self.stem = nn.Sequential(
            patchify(2 * profile.in_channels, u[0], profile.unet_stem()),
            nn.BatchNorm2d(u[0]),
            nn.ReLU(inplace=False),
            ConvBNAct(u[0], u[0]),
        )
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout)) for cin, cout in zip(u[:-1], u[1:], strict=True)
        )
        self.up = nn.ModuleList(nn.ConvTranspose2d(u[i + 1], u[i], 2, stride=2) for i in range(len(u) - 1))
        self.merge = nn.ModuleList(DoubleConv(2 * u[i], u[i]) for i in range(len(u) - 1))
        self.head = unpatchify(u[0], 1, profile.unet_stem())

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        c = self.profile.in_channels
        _check_input(x, c, "DiscriminativeUNet x")
        _check_input(x_hat, c, "DiscriminativeUNet x_hat")
        if x.shape != x_hat.shape:
            raise ValueError(f"DiscriminativeUNet: x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ")
        inp, h, w = pad_to_multiple(torch.cat([x, x_hat], dim=1), self.profile.unet_stride)
        skips = [self.stem(inp)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips[-1]
        for i in range(len(self.up) - 1, -1, -1):
            y = self.merge[i](torch.cat([self.up[i](y), skips[i]], dim=1))
        return self.head(y)[..., :h, :w]


class GRDNet(nn.Module):
    """What inference needs: the generator (for x_hat) and the U-Net; forward gives the anomaly probability map.

    The adversarial discriminator is not part of it: it only exists in training checkpoints.
    """

    def __init__(self, profile: ModelProfile) -> None:
        super().__init__()
        self.profile = profile
        self.generator = Generator(profile)
        self.unet = DiscriminativeUNet(profile)

    def forward(self, x: Tensor) -> Tensor:
        """x (N,C,H,W) in [0,1] -> anomaly probability map (N,1,H,W) in [0,1]."""
        return torch.sigmoid(self.unet(x, self.generator.reconstruct(x)))


def build_grdnet(profile: ModelProfile) -> GRDNet:
    """Build the inference model (generator + U-Net) for ``profile``."""
    return GRDNet(profile)


def init_head_prior(model: GRDNet, prior: float) -> None:
    """Start the U-Net's output bias at logit(``prior``) so the untrained map says "anomaly" with probability
    ``prior`` everywhere (see ``TrainConfig.unet_prior`` for why)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"init_head_prior: prior must be in (0, 1), got {prior}")
    head = model.unet.head
    conv = head if isinstance(head, nn.Conv2d) else next(iter(head.children()), None)
    if not isinstance(conv, nn.Conv2d) or conv.bias is None:
        raise TypeError("init_head_prior: the U-Net head does not start with a biased Conv2d")
    with torch.no_grad():
        conv.bias.fill_(math.log(prior / (1.0 - prior)))


def build_discriminator(profile: ModelProfile) -> Discriminator:
    """Build the adversarial discriminator (training only) for ``profile``."""
    return Discriminator(profile)
