"""Model size profiles for GRD-Net.

A profile pins every architectural choice of the three networks (generator, adversarial discriminator,
discriminative U-Net) so that a model directory can rebuild exactly the network its weights came from: the
model card stores the full profile dict, and unknown keys are refused (``extra="forbid"``) so a card written
by a newer version fails loudly instead of silently building a different network.

Two profiles ship:

* ``fast``: the production profile. The generator starts with a 4x4 patchify stem (no 3x3 conv at the input
  resolution); the U-Net runs at full resolution (``unet_stem_stride=1``) with narrow levels (16, 32, 64, 128),
  because it must tell a 3 px particle from a 3 px bubble ring: 5.4 GFLOP per 256x256 image, 18.5 ms at batch 1
  in bf16 jit on two cores (``bench/infer.py``). Trained with the demo recipe (demo/8) it scores image AUROC 0.993
  on the vial test split with 1.5% out-of-ROI false rejects (``bench/quality.py``). The measured alternatives,
  same recipe: a 2x2 U-Net stem with widths (24, 48, 96, 128) (demo/6, 3.2 GFLOP, 13 ms) scored 0.966 with 10.5%
  out-of-ROI false rejects: at half resolution a particle and a bubble ring look alike; the same widths at full
  resolution (demo/7, 10.7 GFLOP, 33 ms) scored 0.992 with 1.0%: as good on the defect kinds it was trained on,
  better on unseen kinds (AUROC 0.983 against 0.954), at 1.8x the time and over the 25 ms budget of a region.
  Until demo/8 the profile's U-Net used a 4x4 stem and (24, 48, 96, 128) (1.37 GFLOP in all); models trained
  then keep that architecture, because their cards store the whole profile.
* ``paper``: 256x256, CRAE latent 32x8x8 as in section 4.4.1 of the paper, widths in the spirit of the authors'
  code (tens of millions of generator parameters). For comparisons, not for the line.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic


class ModelProfile(pydantic.BaseModel, frozen=True, extra="forbid"):
    """Architecture of one GRD-Net model (generator, discriminator, U-Net)."""

    name: str
    image_size: int = pydantic.Field(gt=0)
    in_channels: int = pydantic.Field(default=3, gt=0)
    # Channels per encoder stage. Stage 0 downsamples with the patchify stem (``stem_stride``), each later stage
    # with a stride-2 conv; every stage then runs ``blocks_per_stage`` pre-activation residual blocks.
    gen_widths: tuple[int, ...]
    blocks_per_stage: int = pydantic.Field(default=2, ge=1)
    bottleneck: Literal["crae", "drae"] = "crae"
    # CRAE: z is (latent_channels, s, s) with s = image_size / total stride (paper: 32x8x8).
    latent_channels: int = pydantic.Field(gt=0)
    # DRAE: z is a vector of this length.
    dense_latent: int = pydantic.Field(default=2048, gt=0)
    disc_widths: tuple[int, ...]
    unet_widths: tuple[int, ...]
    # Added to the fixed API: the downsampling factor of the first (full-resolution) layer of every network.
    # A k x k stride-k conv is a PixelUnshuffle followed by a 1x1 conv: cheap at full resolution and exact.
    stem_stride: int = pydantic.Field(default=4, ge=1)
    # The U-Net's own stem stride when it differs (None: ``stem_stride``). The U-Net is the network that must
    # tell a 3 px particle from a bubble ring, so it may keep more resolution than the generator.
    unet_stem_stride: int | None = pydantic.Field(default=None, ge=1)

    @pydantic.field_validator("gen_widths", "disc_widths", "unet_widths")
    @classmethod
    def _widths_positive(cls, value: tuple[int, ...], info: pydantic.ValidationInfo) -> tuple[int, ...]:
        if not value:
            raise ValueError(f"{info.field_name} must list at least one stage width")
        if any(w <= 0 for w in value):
            raise ValueError(f"{info.field_name} must be positive, got {value}")
        return value

    @property
    def gen_stride(self) -> int:
        """Total downsampling of the generator encoder; inputs are padded to a multiple of it."""
        return self.stem_stride * 2 ** (len(self.gen_widths) - 1)

    @property
    def unet_stride(self) -> int:
        """Total downsampling of the U-Net encoder; inputs are padded to a multiple of it."""
        return self.unet_stem() * 2 ** (len(self.unet_widths) - 1)

    def unet_stem(self) -> int:
        """Stride of the U-Net's patchify stem."""
        return self.unet_stem_stride if self.unet_stem_stride is not None else self.stem_stride

    def latent_side(self, size: int | None = None) -> int:
        """Side of the CRAE latent grid for a square input of ``size`` (default ``image_size``)."""
        side = self.image_size if size is None else size
        return -(-side // self.gen_stride)


PROFILES: dict[str, ModelProfile] = {
    "fast": ModelProfile(
        name="fast",
        image_size=256,
        gen_widths=(16, 32, 64, 128),
        latent_channels=32,
        disc_widths=(16, 32, 64, 128),
        unet_widths=(16, 32, 64, 128),
        stem_stride=4,
        unet_stem_stride=1,
    ),
    "paper": ModelProfile(
        name="paper",
        image_size=256,
        gen_widths=(32, 64, 128, 256, 512),
        latent_channels=32,
        disc_widths=(64, 128, 256, 512),
        unet_widths=(64, 128, 256, 512),
        stem_stride=2,
    ),
}


def get_profile(name: str, **overrides: Any) -> ModelProfile:
    """Return the named profile, optionally with fields replaced (validated again).

    Unknown names raise ``ValueError`` listing the known ones, so a typo in a config names its fix.
    """
    if name not in PROFILES:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown model profile {name!r}; known profiles: {known}")
    base = PROFILES[name]
    if not overrides:
        return base
    data = base.model_dump()
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise ValueError(f"unknown ModelProfile field(s) {unknown}; fields: {sorted(data)}")
    data.update(overrides)
    return ModelProfile.model_validate(data)
