"""Dataset readers for GRD-Net training and evaluation.

Two on-disk layouts are understood:

* **MVTec AD**: ``<category>/train/good``, ``<category>/test/<type>``,
  ``<category>/ground_truth/<type>/<name>_mask.png`` and an optional
  ``<category>/roi/<split>/<type>/<name>.png`` (or one shared ``<category>/roi.png``).
* **linecam** (written by ``linecam synth``): ``dataset.json`` + ``labels.jsonl`` describing every image with its
  split, kind, line label, defect mask and ROI.

Both are turned into a flat list of :class:`SampleRecord` and served by :class:`InspectionDataset` as tensors at the
model's input size, so the trainer and the evaluator never care which layout they read. Every bad file raises a
:class:`DatasetError` naming it: a silently skipped frame would bias the metrics the line is released on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from linecam.dataset import GOOD_KINDS, IMAGE_SUFFIXES, DatasetError, load_index

Layout = Literal["mvtec", "linecam"]

@dataclass(frozen=True)
class SampleRecord:
    """One image of a dataset, with where its mask and ROI live (None = none on disk)."""

    image: Path
    split: str
    kind: str
    label: int  # line label: 1 = defect (reject), 0 = good
    mask: Path | None
    roi: Path | None


def detect_layout(root: str | Path) -> Layout:
    """Tell which layout ``root`` uses; raise DatasetError when it is neither."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if (root / "dataset.json").is_file() or (root / "labels.jsonl").is_file():
        return "linecam"
    if (root / "train" / "good").is_dir() or (root / "test").is_dir():
        return "mvtec"
    raise DatasetError(
        f"{root}: neither a linecam dataset (dataset.json/labels.jsonl) nor an MVTec AD category (train/good, test/)"
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _mvtec_records(root: Path, split: str, require_roi: bool) -> list[SampleRecord]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: split folder missing (MVTec layout has train/ and test/)")
    shared_roi = root / "roi.png"
    records: list[SampleRecord] = []
    for kind_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        kind = kind_dir.name
        for image in _images_in(kind_dir):
            mask: Path | None = None
            if kind != "good":
                mask = root / "ground_truth" / kind / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetError(f"{image}: ground-truth mask {mask} is missing")
            roi: Path | None = root / "roi" / split / kind / f"{image.stem}.png"
            if roi is not None and not roi.is_file():
                roi = shared_roi if shared_roi.is_file() else None
            if roi is None and require_roi:
                raise DatasetError(
                    f"{image}: ROI required but neither roi/{split}/{kind}/{image.name} nor roi.png exist"
                )
            records.append(SampleRecord(image, split, kind, 0 if kind in GOOD_KINDS else 1, mask, roi))
    return records


def _linecam_index(root: Path) -> list[Any]:
    """The dataset's index (``linecam.dataset.load_index``)."""
    return load_index(root)


def _linecam_records(root: Path, split: str, require_roi: bool) -> list[SampleRecord]:
    """Records of one split. The linecam layout promises an ROI for every image, so a missing one is an error."""
    records: list[SampleRecord] = []
    for entry in _linecam_index(root):
        if entry.split != split:
            continue
        image = Path(entry.path)
        if not image.is_file():
            raise DatasetError(f"{image}: image listed in {root / 'labels.jsonl'} does not exist")
        if entry.mask_path is not None and not Path(entry.mask_path).is_file():
            raise DatasetError(f"{entry.mask_path}: defect mask of {image} does not exist")
        if entry.roi_path is None:
            rel = image.relative_to(root) if image.is_relative_to(root) else image
            raise DatasetError(f"{image}: ROI mask missing (expected roi/{rel} as the linecam layout requires)")
        label = 1 if entry.line_label == "defect" else 0
        records.append(SampleRecord(image, split, str(entry.kind), label, entry.mask_path, entry.roi_path))
    return records


def list_splits(root: str | Path) -> list[str]:
    """Splits present in the dataset (e.g. train, val, test, test_unseen)."""
    root = Path(root)
    if detect_layout(root) == "linecam":
        return sorted({str(e.split) for e in _linecam_index(root)})
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in ("train", "val", "test"))


def list_records(root: str | Path, split: str, *, require_roi: bool = False) -> list[SampleRecord]:
    """All images of one split, sorted as on disk; raise DatasetError if the split is empty or broken."""
    root = Path(root).resolve()
    layout = detect_layout(root)
    records = (_linecam_records if layout == "linecam" else _mvtec_records)(root, split, require_roi)
    if not records:
        raise DatasetError(f"{root}: split '{split}' has no images")
    return records


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image as HxWx3 uint8 RGB (gray replicated, alpha dropped, 16-bit scaled down)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: unreadable image")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DatasetError(f"{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise DatasetError(f"{path}: unsupported image shape {img.shape}")


def read_binary_mask(path: Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a 0/255 mask as HxW bool; a mask whose size differs from its image is an error, not resized."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DatasetError(f"{path}: unreadable mask")
    if m.ndim == 3:
        m = m.max(axis=2)
    if expected_hw is not None and m.shape[:2] != expected_hw:
        raise DatasetError(f"{path}: mask size {m.shape[1]}x{m.shape[0]} differs from its image "
                           f"{expected_hw[1]}x{expected_hw[0]}")
    return np.asarray(m > 0)


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[:2] == (size, size):
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape[:2] == (size, size):
        return mask.astype(np.uint8)
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [0,1] (the model card's x/255 normalisation)."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


class InspectionDataset(Dataset[dict[str, Any]]):
    """Images of one split at the model input size with their defect mask and ROI.

    Items are dicts: ``image`` (3,S,S) float [0,1], ``mask`` (1,S,S) float 0/1, ``roi`` (1,S,S) float 0/1
    (full frame when the dataset has none), ``label`` int (1 = defect for the line), ``kind``, ``path``.
    With ``cache=True`` decoded, resized uint8 arrays are kept in memory: training datasets are small and
    re-decoding PNGs every epoch would make the 2-core data loader the bottleneck.
    """

    def __init__(self, records: list[SampleRecord], image_size: int, *, cache: bool = False) -> None:
        if not records:
            raise DatasetError("empty dataset")
        if image_size <= 0:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        self.records = list(records)
        self.image_size = int(image_size)
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uint8 RGB image, bool defect mask, bool ROI) at the model size: what a Detector scores."""
        return self._load(index)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        rec = self.records[index]
        rgb = read_rgb(rec.image)
        hw = (rgb.shape[0], rgb.shape[1])
        mask = read_binary_mask(rec.mask, hw) if rec.mask is not None else np.zeros(hw, bool)
        roi = read_binary_mask(rec.roi, hw) if rec.roi is not None else np.ones(hw, bool)
        s = self.image_size
        out = (resize_rgb(rgb, s), resize_mask(mask, s), resize_mask(roi, s))
        if self.cache:
            self._cache[index] = out
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, mask, roi = self._load(index)
        rec = self.records[index]
        return {
            "image": image_to_tensor(rgb),
            "mask": torch.from_numpy(mask).float()[None],
            "roi": torch.from_numpy(roi).float()[None],
            "label": rec.label,
            "kind": rec.kind,
            "path": str(rec.image),
        }

    def preload(self) -> None:
        """Decode everything now (fail fast on a bad file before hours of training)."""
        for i in range(len(self)):
            self._load(i)


def open_split(
    root: str | Path, split: str, image_size: int, *, require_roi: bool = False, cache: bool = False
) -> InspectionDataset:
    """Convenience: list a split and wrap it in an InspectionDataset."""
    return InspectionDataset(list_records(root, split, require_roi=require_roi), image_size, cache=cache)


def summarize(records: list[SampleRecord]) -> dict[str, Any]:
    """Counts per kind and label: goes into the model card's training data summary."""
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    return {
        "images": len(records),
        "defect": sum(r.label for r in records),
        "good": sum(1 - r.label for r in records),
        "with_roi": sum(r.roi is not None for r in records),
        "kinds": kinds,
    }
