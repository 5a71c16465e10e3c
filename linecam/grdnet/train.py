"""GRD-Net trainer: adversarial generator + discriminative U-Net with ROI attention.

One optimisation step (paper Fig. 3, DRAEM-style denoising):

1. Perlin anomalies are blended into the clean (randomly rotated) good images -> ``x_aug`` and mask ``M``.
2. Discriminator: BCE on real ``x`` vs ``G(x_aug).x_hat.detach()``.
3. Generator: GANomaly loss (feature-matching adversarial + 50 x contextual vs the CLEAN ``x`` + encoder).
4. U-Net: focal/ROI loss of ``sigmoid(unet(x_aug, x_hat.detach()))`` against ``M`` and the ROI.

Why the shape of this module: everything a run needs to continue after an interruption (models, optimisers,
schedulers, epoch, RNG) is in ``checkpoint_last.pt``; the same code runs single-process and under
``torchrun`` (DDP, gloo on CPU / nccl on CUDA, only rank 0 writes); precision is bf16 autocast with
channels_last on CPU (AMX makes it ~5x faster than fp32) and fp16 AMP on CUDA.

Which weights ship: by default those of the epoch with the lowest held-out loss (the paper's choice). That loss
is ~99% generator terms and did not predict real-defect quality: one recipe gave test image AUROC 0.87, 0.60
and 0.72 over three seeds. ``select_by="val_auroc"`` picks the epoch by image AUROC on the labelled ``val``
split and ``ema_decay`` ships an average of the weights; with both, the two failed seeds reached 0.85 and
0.76 after 20 epochs, 0.92 and 0.88 after 40.

``unet_prior`` starts the U-Net's output at a 1% anomaly probability: under PyTorch's default init the models
of sessions 3-4 ended with their maps capped at ~0.5 (see the field). ``lr_schedule="cosine"`` lowers the LR to
1% by the last epoch, because the plateau schedule never fired; with it the trained weights' val AUROC stopped
jumping between epochs. The two together gave the best val and test image AUROC so far with seed 2 (0.934 /
0.937 on the 135 / 225-image splits of session 5; 0.925 / 0.912 on the 350 / 600-image splits of session 6)
and the lowest test figure of all 40-epoch runs with seed 1 (0.902 / 0.860).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from linecam.grdnet.datasets import (
    DatasetError,
    InspectionDataset,
    list_records,
    list_splits,
    open_split,
    summarize,
)
from linecam.grdnet.losses import (
    LossWeights,
    discriminative_loss,
    discriminator_loss,
    generator_loss,
)
from linecam.grdnet.model import GeneratorOutput, GRDNet, build_discriminator, build_grdnet, init_head_prior
from linecam.grdnet.modeldir import ModelDirError, file_sha256, load_model_dir
from linecam.grdnet.perlin import FILL_MODES, AnomalySimulator
from linecam.grdnet.profiles import ModelProfile, get_profile
from linecam.progress import Progress

RoiVariantName = Literal["overlap", "intersection", "intersection_overlap", "negated_overlap", "learned_silence"]
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
TRAINING_SUBDIR = "training"
PLOT_EVERY = 1
"""Epochs between redraws of training/loss_curves.png: every epoch (about 1 s against a minute or more per epoch),
so a run going wrong (a seed whose validation AUROC stalls, a loss that diverges) shows while it runs."""
PLATEAU_FACTOR = math.exp(-0.1)  # paper eq. 7: LR_k = LR_{k-1} * e^{-alpha}, alpha = 0.1
COSINE_FLOOR = 0.01  # the cosine schedule ends at 1% of the starting LR


def cosine_factor(epoch: int, epochs: int) -> float:
    """LR multiplier of epoch ``epoch`` (0-based) of ``epochs``: half a cosine from 1 down to COSINE_FLOOR."""
    t = min(max(epoch, 0), epochs) / max(epochs, 1)
    return COSINE_FLOOR + (1.0 - COSINE_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t))


class TrainError(RuntimeError):
    """A training run cannot start or continue (bad config, missing checkpoint, mismatching resume)."""


class TrainConfig(pydantic.BaseModel, extra="forbid"):
    """Everything that defines a training run; stored in every checkpoint and in the model card."""

    data: Path
    out: Path
    profile: str = "fast"
    profile_overrides: dict[str, Any] = pydantic.Field(default_factory=dict)
    epochs: int = pydantic.Field(default=50, ge=1)
    batch_size: int = pydantic.Field(default=8, ge=1)
    lr: float = pydantic.Field(default=1e-4, gt=0)
    unet_lr: float | None = None
    roi_variant: RoiVariantName = "learned_silence"
    focal_gamma: float = pydantic.Field(default=2.0, ge=0)
    perlin_scales: tuple[int, int] = (0, 6)
    """Perlin lattice exponents [lo, hi): 2**k cells per axis; higher k = smaller simulated defects."""
    fill_modes: tuple[str, ...] = FILL_MODES
    shape_families: tuple[str, ...] = ("perlin",)
    """Shapes of the simulated defects (:data:`linecam.grdnet.perlin.SHAPE_FAMILIES`): Perlin blobs alone, or
    also soft low-contrast regions, thin curvilinear lines and small clusters, inside and outside the ROI."""
    target_dilate: int = pydantic.Field(default=0, ge=0, le=16)
    """Grow the U-Net's target by this many pixels (a square max filter) around the simulated defect inside the
    ROI, while the image keeps the exact defect (see ``Trainer.unet_target``). Why: the fixed scoring head
    averages the map over 21x21 = 441 px, so a confidently found 20 px particle scores at most 20/441 = 0.045,
    about the level of a good image's bubble mark; a target with a footprint of r px around the defect lets a
    small defect fill more of the window. 0 = the paper's exact mask."""
    init_from: Path | None = None
    """Fine-tune: start the generator and U-Net from this model directory's weights (hash-checked) instead of a
    fresh init, and the discriminator from its ``training/checkpoint_last.pt`` when it has one (else fresh).
    Optimisers, schedule and history start anew. Why: adapting a trained model to a new line's images, or to a
    changed recipe setting, need not pay the whole training again. The profile must match. Measured on
    the vial data: a fine-tune of demo/6 at LR 1e-4 (its own training started at 3e-4 and decayed to ~0) lost
    about 0.03 test image AUROC, with or without a change of loss, so fine-tune at a much smaller LR."""
    refresh_bn: bool = True
    """Re-estimate BatchNorm statistics each epoch before validation (see ``Trainer.refresh_bn_stats``)."""
    seed: int = 0
    clean_share: float = pydantic.Field(default=0.5, ge=0, le=1)
    rotation: float = pydantic.Field(default=math.pi / 2, ge=0, le=math.pi)
    """Max absolute random rotation in radians (paper 4.1: pi/2); 0 disables it."""
    val_fraction: float = pydantic.Field(default=0.1, gt=0, lt=1)
    select_by: Literal["val_loss", "val_auroc"] = "val_loss"
    """Which epoch's weights ship. ``val_loss``: the held-out loss on good images with fixed simulated noise
    (~99% generator terms). ``val_auroc``: image AUROC on the labelled ``select_split`` (good and real defects),
    the split that later calibrates the threshold -- never the test split."""
    select_split: str = "val"
    unet_prior: float = pydantic.Field(default=0.01, ge=0, lt=1)
    """Initial anomaly probability of the U-Net head (its bias starts at logit(prior), as RetinaNet's focal-loss
    prior). Why: with PyTorch's default init (p = 0.5 everywhere) the background pixels, 99% of the loss, teach
    the head to fire negative weights on ReLU features everywhere and to mark anomalies by switching the features
    off; the logit of an anomaly is then capped at the bias and the map never exceeds ~0.5. 0 keeps the default
    init (the runs before this option)."""
    lr_schedule: Literal["plateau", "cosine"] = "plateau"
    """``plateau``: the paper's reduce-on-plateau on the val loss (patience 3, factor e^-0.1). ``cosine``: the LR
    falls each epoch along half a cosine to 1% at the last epoch, for runs whose val loss never plateaus (then the
    paper's schedule never lowers the LR and the trained weights keep jumping from epoch to epoch)."""
    ema_decay: float | None = pydantic.Field(default=None, gt=0, lt=1)
    """Keep an exponential moving average of the generator and U-Net weights; when set, the EMA weights are the
    ones validated, selected and shipped (the raw weights keep training)."""
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    workers: int = pydantic.Field(default=0, ge=0)
    max_steps_per_epoch: int | None = pydantic.Field(default=None, ge=1)
    require_roi: bool = False
    name: str = "grdnet"
    version: str = "1"
    command: str = ""
    progress: bool = True

    @pydantic.field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        get_profile(value)
        return value

    def model_profile(self) -> ModelProfile:
        return get_profile(self.profile, **self.profile_overrides)

    def resolved_precision(self) -> str:
        """``auto``: fp16 on CUDA, bf16 on a CPU with bf16 instructions, else fp32 (never emulated bf16)."""
        from linecam.hardware import resolve_precision

        try:
            return resolve_precision(self.precision, self.device, workload="train")
        except ValueError as exc:
            raise TrainError(str(exc)) from None


# --------------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(rank, world, local)


def _all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def _sync_buffers(modules: list[nn.Module], info: DistInfo) -> None:
    """Broadcast BatchNorm statistics from rank 0 so every rank ends an epoch with the same model."""
    if not info.enabled:
        return
    for m in modules:
        for b in m.buffers():
            dist.broadcast(b, 0)


# --------------------------------------------------------------------------------------------- helpers
def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def reestimate_batchnorm(
    net: nn.Module,
    run: Callable[[Tensor], object],
    batches: Iterable[Tensor],
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> None:
    """Replace ``net``'s BatchNorm running statistics by their cumulative average over ``run(batch)``.

    ``net`` is put in train mode (the caller sets the mode of everything else ``run`` touches, e.g. an eval-mode
    generator feeding the U-Net) and its momenta are restored afterwards. Used by ``Trainer.refresh_bn_stats``
    and by test fixtures that fit a network briefly: running averages lag behind weights that move fast.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the refresh batches
    net.train()
    try:
        with torch.no_grad():
            for batch in batches:
                with autocast if autocast is not None else contextlib.nullcontext():
                    run(batch)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


def random_rotate(x: Tensor, roi: Tensor, max_angle: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rotate image and ROI together by one random angle per sample in [-max_angle, max_angle] (paper 4.1).

    Images use reflection padding (no black corners that would look like a new kind of normal); the ROI uses
    zeros, so rotated-in corners are outside the region of interest.
    """
    if max_angle <= 0:
        return x, roi
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * max_angle
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xr = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    rr = F.grid_sample(roi, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return xr.clamp_(0, 1), rr


def split_train_val(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Fixed held-out split of the good training images (seeded, so a resumed run gets the same one)."""
    if n < 2:
        raise TrainError(f"need at least 2 training images to hold some out for validation, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(fraction * n))), n - 1)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63 - 1)


def _stack(ds: InspectionDataset, indices: list[int]) -> tuple[Tensor, Tensor]:
    items = [ds[i] for i in indices]
    return torch.stack([it["image"] for it in items]), torch.stack([it["roi"] for it in items])


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state in plain types (a checkpoint holds no pickled objects: see _read_checkpoint)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- trainer
@dataclass
class Batch:
    x: Tensor  # clean rotated images
    x_aug: Tensor  # with simulated anomalies
    target: Tensor  # the U-Net's target: the simulated anomaly mask through ``Trainer.unet_target``
    roi: Tensor


class Trainer:
    """Owns the three networks, their optimisers and schedulers, and the training loop."""

    def __init__(self, cfg: TrainConfig, info: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.info = info or DistInfo()
        self.precision = cfg.resolved_precision()
        if cfg.device == "cuda":
            if not torch.cuda.is_available():
                raise TrainError("device 'cuda' requested but CUDA is not available")
            self.device = torch.device("cuda", self.info.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise TrainError("precision fp16 needs CUDA; use bf16 or fp32 on CPU")
        self.profile = cfg.model_profile()
        self.train_dir = cfg.out / TRAINING_SUBDIR
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        self.model: GRDNet = build_grdnet(self.profile).to(self.device)
        if cfg.unet_prior > 0:
            init_head_prior(self.model, cfg.unet_prior)
        self.disc = build_discriminator(self.profile).to(self.device)
        if cfg.init_from is not None:
            self._init_from(cfg.init_from)
        self.channels_last = self.device.type == "cpu" and self.precision == "bf16"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.disc.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.simulator = AnomalySimulator(clean_share=cfg.clean_share, min_scale_exp=cfg.perlin_scales[0],
                                          max_scale_exp=cfg.perlin_scales[1], fill_modes=cfg.fill_modes,
                                          shape_families=cfg.shape_families)
        self.weights = LossWeights()
        unet_lr = cfg.unet_lr if cfg.unet_lr is not None else cfg.lr
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        self.opt_u = torch.optim.Adam(self.model.unet.parameters(), lr=unet_lr)
        self.optimizers = {"generator": self.opt_g, "discriminator": self.opt_d, "unet": self.opt_u}
        self.schedulers = {k: self._make_scheduler(o) for k, o in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.g: nn.Module = self.model.generator
        self.u: nn.Module = self.model.unet
        self.d: nn.Module = self.disc
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel
            self.g = ddp(self.model.generator, device_ids=ids)
            self.u = ddp(self.model.unet, device_ids=ids)
            self.d = ddp(self.disc, device_ids=ids)
        self.ema: GRDNet | None = None
        if cfg.ema_decay is not None:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.ema_steps = 0
        self.start_epoch = 0
        self.best_val = math.inf
        """Best selection value so far, lower is better: the val loss, or 1 - val AUROC (``select_by``)."""
        self.history: list[dict[str, float]] = []
        self._prepare_data()

    def _init_from(self, model_dir: Path) -> None:
        """Load a trained model directory's weights (and its discriminator, when its checkpoint has one)."""
        try:
            start, card = load_model_dir(model_dir)
        except (ModelDirError, OSError) as exc:
            raise TrainError(f"--init-from {model_dir}: {exc}") from exc
        self._check_profile(card.profile.model_dump(), f"--init-from {model_dir}")
        self.model.load_state_dict(start.state_dict())
        last = model_dir / TRAINING_SUBDIR / CHECKPOINT_LAST
        if last.is_file():
            try:
                recorded = card.training.get("checkpoint_last_sha256")
                self.disc.load_state_dict(self._read_checkpoint(last, recorded)["discriminator"])
            except (TrainError, KeyError, RuntimeError) as exc:
                raise TrainError(f"--init-from {last}: cannot take the discriminator from it: {exc}") from exc

    def _make_scheduler(self, opt: torch.optim.Optimizer) -> Any:
        """The per-epoch LR schedule of ``lr_schedule`` for one optimiser (stepped by ``_step_schedulers``)."""
        if self.cfg.lr_schedule == "cosine":
            epochs = self.cfg.epochs
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: cosine_factor(e, epochs))
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=PLATEAU_FACTOR, patience=3)

    def _step_schedulers(self, val_loss: float) -> None:
        for sched in self.schedulers.values():
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(val_loss)
            else:
                sched.step()

    # ----------------------------------------------------------------------------------------- data
    def _prepare_data(self) -> None:
        cfg = self.cfg
        records = [r for r in list_records(cfg.data, "train", require_roi=cfg.require_roi) if r.label == 0]
        if not records:
            raise TrainError(f"{cfg.data}: the train split has no good images")
        train_idx, val_idx = split_train_val(len(records), cfg.val_fraction, cfg.seed)
        self.train_records = [records[i] for i in train_idx]
        self.val_records = [records[i] for i in val_idx]
        self.train_ds = InspectionDataset(self.train_records, self.profile.image_size, cache=True)
        self.train_ds.preload()  # a bad file fails now, not after an hour
        val_ds = InspectionDataset(self.val_records, self.profile.image_size)
        x, roi = _stack(val_ds, list(range(len(val_ds))))
        gen = torch.Generator().manual_seed(cfg.seed + 12345)
        x_aug, mask = self.simulator(x, gen)  # FIXED noise, cached once: comparable val loss across epochs
        self.val_batch = Batch(x, x_aug, self.unet_target(mask, roi), roi)
        self.select_ds: InspectionDataset | None = None
        if cfg.select_by == "val_auroc":
            self.select_ds = self._selection_split()

    def _selection_split(self) -> InspectionDataset:
        """The labelled split whose image AUROC picks the shipped epoch; it needs good and defective images."""
        cfg = self.cfg
        if cfg.select_split == "test":
            raise TrainError("select_split must not be 'test': the test split only reports, it never chooses")
        splits = list_splits(cfg.data)
        if cfg.select_split not in splits:
            raise TrainError(f"{cfg.data}: select_by val_auroc needs a labelled split '{cfg.select_split}' "
                             f"(found: {', '.join(splits)})")
        try:
            ds = open_split(cfg.data, cfg.select_split, self.profile.image_size, cache=True)
        except DatasetError as exc:
            raise TrainError(str(exc)) from exc
        if set(ds.labels) != {0, 1}:
            raise TrainError(f"{cfg.data}: split '{cfg.select_split}' needs both good and defective images to "
                             f"select by AUROC (labels found: {sorted(set(ds.labels))})")
        ds.preload()
        return ds

    def unet_target(self, mask: Tensor, roi: Tensor | None) -> Tensor:
        """The simulated mask with the part inside the ROI grown by ``target_dilate`` px, the growth kept
        inside the ROI. Why inside only: growing a defect that lies just outside the ROI would put positive
        targets inside it and teach the U-Net to fire at the ROI border next to defects it must ignore. The
        mask itself is kept as it is, so every ROI variant sees the same outside-ROI defects as without growth."""
        r = self.cfg.target_dilate
        if not r:
            return mask
        if roi is None:
            return F.max_pool2d(mask, kernel_size=2 * r + 1, stride=1, padding=r)
        inside = roi.to(mask.dtype)
        grown = F.max_pool2d(mask * inside, kernel_size=2 * r + 1, stride=1, padding=r) * inside
        return torch.maximum(mask, grown)

    def _loader(self, epoch: int) -> DataLoader[dict[str, Any]]:
        cfg = self.cfg
        sampler: Any
        if self.info.enabled:
            sampler = DistributedSampler(self.train_ds, num_replicas=self.info.world, rank=self.info.rank,
                                         shuffle=True, seed=cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_ds, generator=torch.Generator().manual_seed(
                _epoch_seed(cfg.seed, epoch, 0)))
        per_rank = len(self.train_ds) // self.info.world
        drop_last = per_rank >= cfg.batch_size
        return DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                          drop_last=drop_last, persistent_workers=False)

    def _to_device(self, t: Tensor) -> Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    # ----------------------------------------------------------------------------------------- step
    def train_step(self, x: Tensor, roi: Tensor, gen: torch.Generator) -> dict[str, float]:
        """One D, G and U-Net update; returns the losses as floats."""
        x, roi = random_rotate(x, roi, self.cfg.rotation, gen)
        x_aug, mask = self.simulator(x, gen)  # a clean_share of samples keeps no anomaly (mask all zero)
        x, x_aug, mask, roi = (self._to_device(t) for t in (x, x_aug, mask, roi))
        ac = autocast_for(self.device, self.precision)
        with ac:
            out = self.g(x_aug)
        x_hat = out.x_hat.float()

        # Discriminator: real vs reconstructed.
        self.opt_d.zero_grad(set_to_none=True)
        with ac:
            logit_real, _ = self.d(x)
            logit_fake, _ = self.d(x_hat.detach())
        loss_d = discriminator_loss(logit_real.float(), logit_fake.float())
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)

        # Generator: D frozen (no grads into D, so DDP's D reducer is not involved).
        self.opt_g.zero_grad(set_to_none=True)
        d_raw = _unwrap(self.d)
        d_raw.requires_grad_(False)
        try:
            with ac:
                _, feat_real = d_raw(x)
                _, feat_fake = d_raw(out.x_hat)
            g_out = GeneratorOutput(x_hat, out.z.float(), out.z_hat.float())
            loss_g, parts = generator_loss(x, g_out, feat_real.float().detach(), feat_fake.float(), self.weights)
        finally:
            d_raw.requires_grad_(True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)

        # Discriminative U-Net on the augmented input and the (detached) reconstruction.
        self.opt_u.zero_grad(set_to_none=True)
        with ac:
            logits = self.u(x_aug, x_hat.detach().to(x_aug.dtype))
        prob = torch.sigmoid(logits.float())
        loss_u = discriminative_loss(prob, self.unet_target(mask, roi), roi, self.cfg.roi_variant,
                                     gamma=self.cfg.focal_gamma)
        self.scaler.scale(loss_u).backward()
        self.scaler.step(self.opt_u)
        self.scaler.update()

        if self.ema is not None:
            self._update_ema()

        losses = {"d": float(loss_d.detach()), "g": float(loss_g.detach()), "u": float(loss_u.detach())}
        losses.update({f"g_{k}": v for k, v in parts.items()})
        return losses

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * weights for every floating parameter; BatchNorm statistics are not
        averaged: before each validation they are re-estimated for the EMA weights (``refresh_bn_stats``), or
        copied from the trained weights when the refresh is off."""
        assert self.ema is not None and self.cfg.ema_decay is not None
        self.ema_steps += 1
        # Warm-up: early on the average follows the weights closely, so a short run is not dominated by the
        # random initial weights (0.999**1350 would still leave them a 26% share after 20 fast epochs).
        d = min(self.cfg.ema_decay, (1.0 + self.ema_steps) / (10.0 + self.ema_steps))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - d)

    @property
    def shipped(self) -> GRDNet:
        """The weights that are validated and shipped: the EMA when kept, else the trained ones."""
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def refresh_bn_stats(self, max_images: int = 128) -> None:
        """Re-estimate the BatchNorm running statistics of the generator, then of the U-Net, as inference runs.

        Why: during training the U-Net sees reconstructions of the *train-mode* generator (batch statistics),
        while inference feeds it those of the *eval-mode* generator (running statistics), and the running
        averages lag behind weights that move every step. The mismatch made the eval-mode U-Net's validation
        loss jump 5-10x between epochs while its training loss stayed flat, and the best-by-val checkpoint
        could hold a U-Net that answered 0.49 everywhere. Recomputing the statistics (a cumulative average over
        a fixed set of simulated training batches, the generator first, then the U-Net on the eval-mode
        generator's output) makes the saved model the model that was validated. The trained weights and, when
        kept, the EMA weights are refreshed on the same batches.
        """
        n = min(len(self.train_ds), max_images)
        bs = max(1, self.cfg.batch_size)
        gen = torch.Generator().manual_seed(self.cfg.seed + 777)
        batches = []
        for s in range(0, n, bs):
            x, roi = _stack(self.train_ds, list(range(s, min(s + bs, n))))
            x, roi = random_rotate(x, roi, self.cfg.rotation, gen)
            batches.append(self._to_device(self.simulator(x, gen)[0]))
        for target in (self.model, self.ema):
            if target is not None:
                self._refresh_bn_of(target, batches)

    def _refresh_bn_of(self, target: GRDNet, batches: list[Tensor]) -> None:
        ac = autocast_for(self.device, self.precision)
        generator, unet = target.generator, target.unet
        for net, run in ((generator, lambda xa: generator(xa)),
                         (unet, lambda xa: unet(xa, generator.reconstruct(xa)))):
            target.eval()  # the U-Net's pass runs the eval-mode generator refreshed just before
            reestimate_batchnorm(net, run, batches, ac)
        target.train()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss on the held-out good images with fixed noise: drives the LR schedule and the best checkpoint.

        Excludes the adversarial term (it measures the discriminator as much as the generator).
        """
        net = self.shipped
        net.eval()
        self.disc.eval()
        vb = self.val_batch
        sums: dict[str, float] = {}
        n = vb.x.shape[0]
        bs = max(1, self.cfg.batch_size)
        for s in range(0, n, bs):
            x, x_aug, target, roi = (self._to_device(t[s:s + bs]) for t in (vb.x, vb.x_aug, vb.target, vb.roi))
            with autocast_for(self.device, self.precision):
                out = net.generator(x_aug)
                _, feat_real = self.disc(x)
                _, feat_fake = self.disc(out.x_hat)
                logits = net.unet(x_aug, out.x_hat)
            g_out = GeneratorOutput(out.x_hat.float(), out.z.float(), out.z_hat.float())
            _, parts = generator_loss(x.float(), g_out, feat_real.float(), feat_fake.float(), self.weights)
            u = discriminative_loss(torch.sigmoid(logits.float()), target, roi, self.cfg.roi_variant,
                                    gamma=self.cfg.focal_gamma)
            vals = {f"g_{k}": v for k, v in parts.items()}
            vals["u"] = float(u)
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        net.train()
        self.disc.train()
        res = {f"val_{k}": v / n for k, v in sums.items()}
        w = self.weights
        res["val_loss"] = w.w2 * res["val_g_con"] + w.w3 * res["val_g_enc"] + res["val_u"]
        return res

    @torch.no_grad()
    def selection_auroc(self, model: GRDNet) -> float:
        """Image AUROC of ``model`` on the labelled selection split, scored as at inference (no ROI given)."""
        from linecam.grdnet.evaluate import image_auroc, predict_dataset

        assert self.select_ds is not None
        preds = predict_dataset(model, self.select_ds, batch_size=max(1, self.cfg.batch_size),
                                device=str(self.device), precision=self.precision)
        model.train()
        return image_auroc(preds.labels, preds.scores)

    def selection_value(self, record: dict[str, Any]) -> float:
        """Lower is better: the val loss, or 1 - val AUROC."""
        return 1.0 - record["val_auroc"] if self.cfg.select_by == "val_auroc" else record["val_loss"]

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to ``cfg.epochs``; returns the last epoch's record."""
        cfg = self.cfg
        if self.info.is_main:
            self.train_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        self.disc.train()
        record: dict[str, Any] = {}
        for epoch in range(self.start_epoch, cfg.epochs):
            gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, self.info.rank))
            loader = self._loader(epoch)
            n_steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
            sums: dict[str, float] = {}
            seen = 0
            t0 = time.perf_counter()
            bar = self._progress(n_steps, epoch)
            for step, batch in enumerate(loader):
                if step >= n_steps:
                    break
                losses = self.train_step(batch["image"], batch["roi"], gen)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                seen += int(batch["image"].shape[0]) * self.info.world
                if bar is not None:
                    ips = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(d=f"{losses['d']:.3f}", g=f"{losses['g']:.3f}", u=f"{losses['u']:.4f}",
                                    img_s=f"{ips:.1f}")
                    bar.update(1)
            if bar is not None:
                bar.close()
            elapsed = time.perf_counter() - t0
            if cfg.refresh_bn:
                self.refresh_bn_stats()
            elif self.ema is not None:  # without the refresh the EMA validates on the trained running stats
                for eb, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                    eb.copy_(b)
            _sync_buffers([self.model, self.disc] + ([self.ema] if self.ema is not None else []), self.info)
            steps = max(1, min(n_steps, len(loader)))
            record = {"epoch": epoch + 1, **{f"train_{k}": v / steps for k, v in sums.items()}}
            record.update(self.validate())
            record["val_loss"] = _all_mean(record["val_loss"], self.info, self.device)
            if self.select_ds is not None:
                # Every rank holds the same weights and data, so every rank computes the same value.
                record["val_auroc"] = self.selection_auroc(self.shipped)
                if self.ema is not None:  # the trained weights too, to show what the average buys (one more pass)
                    record["val_auroc_raw"] = self.selection_auroc(self.model)
            record["images_per_s"] = seen / max(elapsed, 1e-9)
            record["lr"] = self.opt_g.param_groups[0]["lr"]
            self._step_schedulers(record["val_loss"])
            self.history.append(record)
            if bar is not None:  # the epoch's outcome, after validation (which the step count does not cover)
                picked = f", val_auroc {record['val_auroc']:.4f}" if "val_auroc" in record else ""
                print(f"train epoch {epoch + 1}/{cfg.epochs}: val_loss {record['val_loss']:.4f}{picked}, "
                      f"{record['images_per_s']:.1f} images/s, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                      flush=True)
            value = self.selection_value(record)
            improved = value < self.best_val
            if improved:
                self.best_val = value
            if self.info.is_main:
                self._save_checkpoint(epoch + 1, best=improved)
                # Plotting costs ~1 s: every PLOT_EVERY epochs and at the end; the JSON history every epoch.
                self._write_history(plot=(epoch + 1) % PLOT_EVERY == 0 or epoch + 1 == cfg.epochs)
        return record

    def _progress(self, total: int, epoch: int) -> Progress | None:
        """A bar on a terminal, a line every few seconds in a log (``linecam.progress``); rank 0 only."""
        if not (self.cfg.progress and self.info.is_main):
            return None
        return Progress(total, f"train epoch {epoch + 1}/{self.cfg.epochs}", unit="steps")

    # ----------------------------------------------------------------------------------------- checkpoints
    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "format": "linecam-grdnet-checkpoint",
            "epoch": epoch,
            "config": json.loads(self.cfg.model_dump_json()),
            "profile": self.profile.model_dump(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_steps": self.ema_steps,
            "discriminator": self.disc.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "best_val": self.best_val,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate()},
        }

    def _save_checkpoint(self, epoch: int, *, best: bool) -> None:
        st = self.state(epoch)
        _atomic_save(st, self.train_dir / CHECKPOINT_LAST)
        if best:
            shipped = st["ema"] if st["ema"] is not None else st["model"]
            _atomic_save({"epoch": epoch, "select_by": self.cfg.select_by, "value": self.best_val,
                          "profile": st["profile"], "model": shipped}, self.train_dir / CHECKPOINT_BEST)

    def _check_profile(self, have: dict[str, Any], where: str) -> None:
        """Refuse weights trained with another profile (resume, --init-from), listing the differing fields."""
        want = self.profile.model_dump()
        if have != want:
            fields = ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} here"
                               for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
            raise TrainError(f"{where}: its profile differs from the requested one ({fields}); "
                             "pass the same --profile and --profile-set")

    def _read_checkpoint(self, path: Path, sha256: str | None = None) -> dict[str, Any]:
        """A ``checkpoint_last.pt`` as ``state`` wrote it; an unreadable or foreign file is a TrainError naming it.

        Loaded with ``weights_only=True``: tensors and plain containers only, so a crafted checkpoint cannot run
        code (a full unpickle did). With ``sha256`` (the hash the model card recorded) the file must match it."""
        if sha256 is not None and file_sha256(path) != sha256:
            raise TrainError(f"{path}: sha256 differs from the one recorded in the model card; refused")
        try:
            st = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or unsafe files
            raise TrainError(f"{path}: cannot be read as a plain checkpoint (weights only; a checkpoint written by "
                             f"linecam before 2026-12 holds pickled objects and cannot be used): {exc}") from exc
        if not isinstance(st, dict) or st.get("format") != "linecam-grdnet-checkpoint":
            raise TrainError(f"{path}: not a linecam GRD-Net checkpoint")
        return st

    def resume(self) -> int:
        """Continue from ``checkpoint_last.pt``: restores models, optimisers, schedulers, history and RNG."""
        path = self.train_dir / CHECKPOINT_LAST
        if not path.is_file():
            raise TrainError(f"{path}: no checkpoint to resume from")
        st = self._read_checkpoint(path)
        self._check_profile(st["profile"], str(path))
        saved = st.get("config", {})
        was = saved.get("select_by", "val_loss")
        if was != self.cfg.select_by:
            raise TrainError(f"{path}: the run chose its best epoch by {was}, not {self.cfg.select_by}; resume with "
                             f"--select-by {was} (the best value so far would otherwise be compared across metrics)")
        was = saved.get("lr_schedule", "plateau")
        if was != self.cfg.lr_schedule:
            raise TrainError(f"{path}: the run used --lr-schedule {was}, not {self.cfg.lr_schedule}; resume with "
                             f"--lr-schedule {was}")
        planned = saved.get("epochs", self.cfg.epochs)
        if was == "cosine" and planned != self.cfg.epochs:
            raise TrainError(f"{path}: the cosine schedule was laid over {planned} epochs; resume with --epochs "
                             f"{planned} (other lengths would bend the curve and raise the LR again)")
        self.model.load_state_dict(st["model"])
        if self.ema is not None:
            if st.get("ema") is None:
                raise TrainError(f"{path}: checkpoint has no EMA weights; resume with the same --ema-decay")
            self.ema.load_state_dict(st["ema"])
            self.ema_steps = int(st.get("ema_steps", 0))
        self.disc.load_state_dict(st["discriminator"])
        for k, o in self.optimizers.items():
            o.load_state_dict(st["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(st["schedulers"][k])
        self.scaler.load_state_dict(st["scaler"])
        self.best_val = float(st["best_val"])
        self.history = list(st["history"])
        torch.set_rng_state(st["rng"]["torch"])
        _set_numpy_rng_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        self.start_epoch = int(st["epoch"])
        return self.start_epoch

    def _write_history(self, plot: bool) -> None:
        (self.train_dir / "history.json").write_text(json.dumps(self.history, indent=1), encoding="utf-8")
        if plot:
            plot_loss_curves(self.history, self.train_dir / "loss_curves.png")

    # ----------------------------------------------------------------------------------------- export
    def best_model(self) -> GRDNet:
        """The GRDNet with the best validation weights (the last ones if no epoch improved)."""
        model = build_grdnet(self.profile)
        best = self.train_dir / CHECKPOINT_BEST
        state = torch.load(best, map_location="cpu", weights_only=True)["model"] if best.is_file() else \
            {k: v.cpu() for k, v in self.shipped.state_dict().items()}
        model.load_state_dict(state)
        return model.eval()

    def data_summary(self) -> dict[str, Any]:
        return {
            "data": str(self.cfg.data),
            "train": summarize(self.train_records),
            "held_out_val": summarize(self.val_records),
        }


def plot_loss_curves(history: list[dict[str, float]], path: Path) -> None:
    """Training and validation losses per epoch as a PNG (one panel per loss family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    keys = sorted({k for h in history for k in h if k.startswith(("train_", "val_"))})
    families = sorted({k.split("_", 1)[1] for k in keys})
    cols = 3
    rows = max(1, math.ceil(len(families) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    aurocs = [(h["val_auroc"], h["epoch"]) for h in history if h.get("val_auroc") is not None]
    best_epoch = max(aurocs)[1] if aurocs else None
    for ax, fam in zip(axes.ravel(), families, strict=False):
        for prefix in ("train_", "val_"):
            k = prefix + fam
            if any(k in h for h in history):
                ax.plot(epochs, [h.get(k, float("nan")) for h in history], marker="o", label=prefix[:-1])
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=0.8, label="best val AUROC")
        ax.set_title(fam)
        ax.set_xlabel("epoch")
        ax.legend()
    for ax in axes.ravel()[len(families):]:
        ax.axis("off")
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def run_training(cfg: TrainConfig, *, resume: bool = False) -> Path | None:
    """Train (or resume) and write the model directory to ``cfg.out``; returns it on rank 0, None elsewhere."""
    from linecam.grdnet.modeldir import ModelCard, save_model_dir

    info = init_distributed(cfg.device)
    trainer = Trainer(cfg, info)
    if resume:
        trainer.resume()
    last = trainer.fit() if trainer.start_epoch < cfg.epochs else (trainer.history[-1] if trainer.history else {})
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()
    if not info.is_main:
        return None
    model = trainer.best_model()
    val = {k: v for k, v in last.items() if k.startswith("val_")}
    val["selected_by"] = cfg.select_by
    if cfg.select_by == "val_auroc":
        val["best_val_auroc"] = 1.0 - trainer.best_val
    else:
        val["best_val_loss"] = trainer.best_val
    if trainer.history:
        val["selected_epoch"] = min(trainer.history, key=trainer.selection_value)["epoch"]
    training = {
        **trainer.data_summary(),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "world_size": info.world,
        "precision": trainer.precision,
        "seed": cfg.seed,
        "rotation": cfg.rotation,
        "clean_share": cfg.clean_share,
        "lr": cfg.lr,
        "unet_lr": cfg.unet_lr,
        "lr_schedule": cfg.lr_schedule,
        "unet_prior": cfg.unet_prior,
        "focal_gamma": cfg.focal_gamma,
        "perlin_scales": list(cfg.perlin_scales),
        "target_dilate": cfg.target_dilate,
        "init_from": str(cfg.init_from) if cfg.init_from is not None else None,
        "fill_modes": list(cfg.fill_modes),
        "shape_families": list(cfg.shape_families),
        "refresh_bn": cfg.refresh_bn,
        "val_fraction": cfg.val_fraction,
        "select_by": cfg.select_by,
        "select_split": cfg.select_split if cfg.select_by == "val_auroc" else None,
        "ema_decay": cfg.ema_decay,
        "images_per_s": last.get("images_per_s"),
        "val_metrics": val,
    }
    checkpoint = trainer.train_dir / CHECKPOINT_LAST
    if checkpoint.is_file():  # --init-from verifies it before taking the discriminator from it
        training["checkpoint_last_sha256"] = file_sha256(checkpoint)
    size = trainer.profile.image_size
    card = ModelCard(name=cfg.name, version=cfg.version, profile=trainer.profile, input_size=(size, size),
                     channels=trainer.profile.in_channels, roi_variant=cfg.roi_variant, threshold=None,
                     metrics={}, training=training, command=cfg.command or " ".join(sys.argv))
    save_model_dir(cfg.out, model, card)
    return cfg.out


def iter_batches(ds: InspectionDataset, batch_size: int) -> Iterator[dict[str, Any]]:
    """Plain sequential batches (used by benches and tests)."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    yield from loader
