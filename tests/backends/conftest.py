"""Shared fixtures: a small GRD-Net saved as a real model directory, and labelled blob images.

A random-initialised GRD-Net scores every image ~0.5, which says nothing about ranking. So the fixture
model's U-Net gets a short supervised fit (a few seconds at 64 px) to segment random-colour discs on smooth
products; then clean and defective images score apart and backend ranking comparisons mean something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linecam.grdnet.model import build_grdnet
from linecam.grdnet.modeldir import ModelCard, save_model_dir
from linecam.grdnet.profiles import get_profile
from linecam.grdnet.train import reestimate_batchnorm

TEST_SIZE = 32
# A slim variant of the production profile: same block types and strides, fewer channels, so the fit and
# every backend run take well under a second per call on 2 shared cores.
TEST_PROFILE_OVERRIDES = {
    "gen_widths": (8, 16, 32),
    "unet_widths": (16, 24, 32),
    "disc_widths": (8, 16),
    "latent_channels": 8,
}


def blob_images(count: int, size: int, defect: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, size, size, 3) uint8 smooth products and their (count, size, size) {0,1} defect masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    masks = np.zeros((count, size, size), dtype=np.uint8)
    for k in range(count):
        base = 0.5 + 0.25 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 1.5) + yy + rng.uniform()))
        img = np.stack([base, 0.9 * base, 1.0 - base], axis=-1)
        if defect:
            cy, cx, r = rng.uniform(0.25, 0.75, size=2).tolist() + [rng.uniform(0.08, 0.16)]
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            img[blob] = rng.uniform(0, 1, size=3)
            masks[k] = blob
        images[k] = np.clip(img * 255 + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    return images, masks


def labelled_set(count: int = 16, size: int = TEST_SIZE, seed: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``count`` clean + ``count`` defective images and their labels (1 = defective)."""
    good, _ = blob_images(count, size, defect=False, seed=seed)
    bad, _ = blob_images(count, size, defect=True, seed=seed + 1)
    labels = np.r_[np.zeros(count), np.ones(count)]
    return np.concatenate([good, bad]), labels


def fit_unet(model: torch.nn.Module, size: int, steps: int = 100, seed: int = 0) -> None:
    """Short supervised fit of the U-Net on blob masks (generator frozen); leaves the model in eval mode."""
    torch.manual_seed(seed)
    model.generator.eval()
    model.unet.train()
    opt = torch.optim.Adam(model.unet.parameters(), lr=3e-3)
    pos_weight = torch.tensor(4.0)
    for step in range(steps):
        imgs, masks = blob_images(8, size, defect=step % 4 != 0, seed=1000 + step)
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        target = torch.from_numpy(masks).float()[:, None]
        with torch.no_grad():
            x_hat = model.generator.reconstruct(x)
        loss = F.binary_cross_entropy_with_logits(model.unet(x, x_hat), target, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    refresh_unet_bn(model, size)
    model.eval()


def refresh_unet_bn(model: torch.nn.Module, size: int, batches: int = 8) -> None:
    """Re-estimate the U-Net's BatchNorm statistics for its final weights, as the trainer does before validating.

    Why: at this learning rate the weights move faster than the running averages follow; with the full-resolution
    U-Net the stale statistics inverted the eval-mode ranking (AUROC 0.25 in eval mode, 1.0 in train mode).
    """
    inputs = []
    for k in range(batches):
        imgs, _ = blob_images(8, size, defect=k % 4 != 0, seed=5000 + k)
        inputs.append(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    model.eval()
    reestimate_batchnorm(model.unet, lambda x: model.unet(x, model.generator.reconstruct(x)), inputs)


def make_model_dir(path: Path, size: int = TEST_SIZE, seed: int = 0, fit: bool = True) -> Path:
    """Write a slim ``fast``-profile model of ``size`` px to ``path`` (U-Net fitted on blobs); return it."""
    torch.manual_seed(seed)
    profile = get_profile("fast", image_size=size, **TEST_PROFILE_OVERRIDES)
    model = build_grdnet(profile).eval()
    if fit:
        fit_unet(model, size, seed=seed)
    card = ModelCard(
        name="testnet",
        version="v1",
        profile=profile,
        input_size=(size, size),
        roi_variant="target_m_roi",
        threshold=0.5,
    )
    save_model_dir(path, model, card)
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model directory with weights and card only. Do not modify: copy it (shutil.copytree) first."""
    return make_model_dir(tmp_path_factory.mktemp("model") / "testnet" / "v1")


@pytest.fixture(scope="session")
def exported_model_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A copy of ``model_dir`` with model.onnx (fp32 only). Do not modify: copy it first."""
    import shutil

    from linecam.backends.export import export_model_dir

    path = tmp_path_factory.mktemp("exported") / "testnet" / "v1"
    shutil.copytree(model_dir, path)
    export_model_dir(path, fp16=False)
    return path


def reference_scores(model_dir: Path, images: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """PyTorch fp32 eager scores written independently of the backends: the yardstick for every parity test."""
    from linecam.grdnet.modeldir import load_model_dir
    from linecam.grdnet.scoring import score_maps

    model, card = load_model_dir(model_dir)
    size = tuple(int(v) for v in card.input_size)
    x = torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    m = None
    if masks is not None:
        m = torch.from_numpy(masks.astype(np.float32))[:, None]
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        scores, _ = score_maps(model(x), m)
    return scores.numpy()


def noise_images(count: int, size: int = TEST_SIZE, seed: int = 7) -> np.ndarray:
    """Uniform uint8 noise frames: the worst case for precision (every pixel an edge)."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def write_blob_dataset(root: Path, per_split: int = 24) -> Path:
    """linecam layout: val and test splits of smooth products with (``spot``) and without discs; the ROI is the
    whole image."""
    import json

    import cv2

    entries = []
    for split, seed in (("val", 300), ("test", 400)):
        for kind, defect in (("good", False), ("spot", True)):
            images, masks = blob_images(per_split, TEST_SIZE, defect=defect, seed=seed + int(defect))
            for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
                rel = f"{split}/{kind}/{i:03d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                roi = f"roi/{rel}"
                (root / roi).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / roi), np.full((TEST_SIZE, TEST_SIZE), 255, np.uint8))
                entry = {"path": rel, "split": split, "kind": kind, "line_label": "defect" if defect else "good",
                         "mask": None, "roi": roi}
                if defect:
                    entry["mask"] = f"ground_truth/{rel}"
                    (root / entry["mask"]).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / entry["mask"]), mask * 255)
                entries.append(entry)
    (root / "dataset.json").write_text(json.dumps({"format": "linecam-dataset", "image_size": [TEST_SIZE, TEST_SIZE],
                                                   "defect_kinds": ["spot"], "unseen_kinds": [],
                                                   "splits": ["val", "test"]}))
    (root / "labels.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return root


@pytest.fixture(scope="session")
def blob_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small linecam dataset the backend fixture model separates (read only)."""
    return write_blob_dataset(tmp_path_factory.mktemp("blobs"))
