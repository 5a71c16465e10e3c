"""Tiny on-disk datasets and profile overrides shared by the trainer tests (single-process and DDP)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

TINY = {"image_size": 32, "gen_widths": (8, 16), "latent_channels": 8, "disc_widths": (8, 16),
        "unet_widths": (8, 16), "stem_stride": 2}


def _write(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return str(path)


def make_vial_dataset(root: Path, n_train: int = 12, size: int = 32) -> Path:
    """linecam layout: a bright 'vial' disk (the ROI) on a textured background; defects are dark blobs."""
    rng = np.random.default_rng(0)
    roi = np.zeros((size, size), np.uint8)
    cv2.circle(roi, (size // 2, size // 2), size // 3, 255, -1)
    entries = []

    def add(split: str, kind: str, i: int) -> None:
        img = np.full((size, size, 3), 90, np.uint8)
        img[roi > 0] = (200, 180, 60)
        img = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if kind == "spot":
            cv2.circle(mask, (size // 2 + int(rng.integers(-3, 4)), size // 2), 3, 255, -1)
        elif kind == "outside_roi":
            cv2.circle(mask, (3, 3), 3, 255, -1)
        img[mask > 0] = (10, 10, 10)
        rel = f"{split}/{kind}/{i:03d}.png"
        _write(root / rel, img)
        _write(root / "roi" / rel, roi)
        mrel = None
        if kind != "good":
            mrel = f"ground_truth/{rel}"
            _write(root / mrel, mask)
        label = "defect" if kind == "spot" else "good"
        entries.append({"path": rel, "split": split, "kind": kind, "line_label": label, "mask": mrel,
                        "roi": f"roi/{rel}"})

    for i in range(n_train):
        add("train", "good", i)
    for split in ("val", "test"):
        for kind in ("good", "spot", "outside_roi"):
            for i in range(3):
                add(split, kind, i)
    for i in range(2):
        add("test_unseen", "spot", i)
    (root / "dataset.json").write_text(json.dumps({"format": "linecam-dataset", "image_size": [size, size],
                                                   "defect_kinds": ["spot"], "unseen_kinds": [],
                                                   "splits": ["train", "val", "test", "test_unseen"]}))
    (root / "labels.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return root
