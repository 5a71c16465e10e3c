"""The linecam dataset format: its one reader and checker (the synthetic writer and collected line images share it).

Layout (written by ``linecam synth``, also usable for collected line images)::

    dataset.json                       manifest (format, seed, image_size, area, pixel_scale_um, kinds, split counts)
    labels.jsonl                       one JSON object per image: path, split, kind, line_label, mask, roi, defects
    <split>/<kind>/<name>.png          split in train/val/test/test_unseen; kind "good", a defect kind, "outside_roi"
    ground_truth/<split>/<kind>/<name>.png   defect mask (0/255) for every non-good image, outside_roi included
    roi/<split>/<kind>/<name>.png      ROI (0/255) for every image

``outside_roi`` images carry defects that lie strictly outside the ROI: their line label is GOOD. Without
``labels.jsonl`` the index is built from the folders. :func:`check_dataset` reads every file and reports every
problem with the file it concerns, because a silently skipped image biases the metrics a line is released on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test", "test_unseen")
GOOD_KINDS: tuple[str, ...] = ("good", "outside_roi")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_LISTED = 200


class DatasetError(ValueError):
    """The dataset has problems; ``problems`` lists each one, naming its file (one text: one problem).

    The one dataset error of the package: the checker raises it with every problem it found, the training and
    evaluation readers with the first one they hit."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if isinstance(problems, str):
            super().__init__(problems)
            return
        shown = self.problems[:MAX_LISTED]
        more = len(self.problems) - len(shown)
        text = f"{len(self.problems)} dataset problem(s):\n  " + "\n  ".join(shown)
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(text)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a linecam dataset; paths are absolute. ``roi_path`` is None when no ROI file exists."""

    path: Path
    split: str
    kind: str
    line_label: str
    mask_path: Path | None
    roi_path: Path | None
    defects: tuple[dict[str, Any], ...] = ()

    @property
    def is_defect(self) -> bool:
        return self.line_label == "defect"


@dataclass
class CheckReport:
    """Result of a clean :func:`check_dataset`: counts per split and kind, image size, images read."""

    root: Path
    counts: dict[str, dict[str, int]]
    image_size: tuple[int, int] | None
    images: int
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.root}: {self.images} images, size {self.image_size}"]
        for split, kinds in self.counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{k}={n}" for k, n in kinds.items()))
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _line_label(kind: str) -> str:
    return "good" if kind in GOOD_KINDS else "defect"


def _from_labels(root: Path, index: Path) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    problems: list[str] = []
    with index.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{index}:{lineno}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(entry, dict):
                problems.append(f"{where}: expected a JSON object")
                continue
            missing = [f for f in ("path", "split", "kind", "line_label", "roi") if f not in entry]
            if missing:
                problems.append(f"{where}: field(s) {missing} missing")
                continue
            if entry["line_label"] not in ("good", "defect"):
                problems.append(f"{where}: field 'line_label' must be 'good' or 'defect', got {entry['line_label']!r}")
                continue
            if entry["line_label"] != _line_label(str(entry["kind"])):
                problems.append(f"{where}: line_label {entry['line_label']!r} contradicts kind {entry['kind']!r}")
            mask = root / entry["mask"] if entry.get("mask") else None
            roi = root / entry["roi"] if entry.get("roi") else None
            records.append(
                ImageRecord(
                    path=root / entry["path"],
                    split=str(entry["split"]),
                    kind=str(entry["kind"]),
                    line_label=str(entry["line_label"]),
                    mask_path=mask,
                    roi_path=roi if roi is not None and roi.is_file() else None,
                    defects=tuple(entry.get("defects") or ()),
                )
            )
    if problems:
        raise DatasetError(problems)
    return records


def _from_folders(root: Path) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for kind_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            kind = kind_dir.name
            for img in sorted(p for p in kind_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                rel = Path(split) / kind / f"{img.stem}.png"
                mask = root / "ground_truth" / rel
                roi = root / "roi" / rel
                records.append(
                    ImageRecord(
                        path=img,
                        split=split,
                        kind=kind,
                        line_label=_line_label(kind),
                        mask_path=mask if kind != "good" else None,
                        roi_path=roi if roi.is_file() else None,
                    )
                )
    return records


def load_index(root: str | Path) -> list[ImageRecord]:
    """All images of the dataset at ``root``, from labels.jsonl when present, else from the folder layout.

    Does not read pixels (use :func:`check_dataset` for that); raises DatasetError on a malformed index.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError([f"{root}: dataset folder does not exist"])
    index = root / "labels.jsonl"
    records = _from_labels(root, index) if index.is_file() else _from_folders(root)
    if not records:
        raise DatasetError([f"{root}: no images found (expected labels.jsonl or <split>/<kind>/*.png)"])
    return records


def _read(path: Path, flags: int) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None or data.size == 0:
        return None
    return cv2.imdecode(data, flags)


def _check_binary(arr: np.ndarray, path: Path, what: str, problems: list[str]) -> None:
    vals = np.unique(arr)
    if not np.all(np.isin(vals, (0, 255))):
        problems.append(f"{path}: {what} must be 0/255, found values {vals[:6].tolist()}")


def check_dataset(root: str | Path) -> CheckReport:
    """Read every image, mask and ROI; raise DatasetError listing all problems, or return the counts.

    Checks: readable files, 3-channel images, image/mask/ROI sizes agree (and match dataset.json), masks present and
    non-empty for every non-good image, outside_roi masks that do not touch the ROI, ROI present and non-empty for
    every image, labels.jsonl and folders agree, no identical image (pixel hash) in two splits, only good images in
    train, and unseen kinds only in test_unseen.
    """
    root = Path(root).resolve()
    problems: list[str] = []
    warnings: list[str] = []
    records = load_index(root)
    manifest: dict[str, Any] = {}
    man_path = root / "dataset.json"
    if man_path.is_file():
        try:
            manifest = json.loads(man_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"{man_path}: not valid JSON ({exc.msg})")
        if manifest and manifest.get("format") != "linecam-dataset":
            problems.append(f"{man_path}: field 'format' must be 'linecam-dataset', got {manifest.get('format')!r}")
    expected_size = tuple(manifest["image_size"]) if isinstance(manifest.get("image_size"), list) else None

    listed = {r.path for r in records}
    if (root / "labels.jsonl").is_file():
        for split in SPLITS:
            if (root / split).is_dir():
                for p in sorted((root / split).glob("*/*")):
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in listed:
                        problems.append(f"{p}: image on disk but not listed in labels.jsonl")

    unseen = set(manifest.get("unseen_kinds") or ()) if isinstance(manifest.get("unseen_kinds"), list) else set()
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    hashes: dict[str, tuple[str, Path]] = {}
    sizes: Counter[tuple[int, int]] = Counter()
    for rec in records:
        counts[rec.split][rec.kind] += 1
        if rec.split not in SPLITS:
            problems.append(f"{rec.path}: unknown split {rec.split!r}; expected one of {list(SPLITS)}")
        if rec.split == "train" and rec.kind not in GOOD_KINDS:
            problems.append(f"{rec.path}: a {rec.kind} image in train (training takes good images only)")
        if rec.kind in unseen and rec.split != "test_unseen":
            problems.append(f"{rec.path}: unseen kind {rec.kind!r} outside test_unseen leaks it into {rec.split}")
        img = _read(rec.path, cv2.IMREAD_UNCHANGED)
        if img is None:
            problems.append(f"{rec.path}: image missing or unreadable")
            continue
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            problems.append(f"{rec.path}: expected 8-bit 3-channel image, got shape {img.shape} {img.dtype}")
        hw = (int(img.shape[0]), int(img.shape[1]))
        sizes[hw] += 1
        if expected_size is not None and hw != expected_size:
            problems.append(f"{rec.path}: image size {hw} differs from dataset.json image_size {list(expected_size)}")
        digest = hashlib.sha1(img.tobytes() + repr(img.shape).encode()).hexdigest()
        if digest in hashes and hashes[digest][0] != rec.split:
            problems.append(f"{rec.path}: identical pixels to {hashes[digest][1]} ({hashes[digest][0]} split)")
        hashes.setdefault(digest, (rec.split, rec.path))

        roi = None
        if rec.roi_path is None:
            problems.append(f"{rec.path}: ROI missing (expected roi/{rec.split}/{rec.kind}/{rec.path.stem}.png)")
        else:
            roi = _read(rec.roi_path, cv2.IMREAD_GRAYSCALE)
            if roi is None:
                problems.append(f"{rec.roi_path}: ROI unreadable")
            elif roi.shape != hw:
                problems.append(f"{rec.roi_path}: ROI size {roi.shape} differs from image size {hw} of {rec.path}")
                roi = None
            else:
                _check_binary(roi, rec.roi_path, "ROI", problems)
                if not roi.any():
                    problems.append(f"{rec.roi_path}: ROI is empty")

        if rec.kind == "good":
            continue
        if rec.mask_path is None:
            problems.append(f"{rec.path}: defect mask missing for a {rec.kind} image")
            continue
        mask = _read(rec.mask_path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            problems.append(f"{rec.mask_path}: defect mask missing or unreadable (image {rec.path})")
            continue
        if mask.shape != hw:
            problems.append(f"{rec.mask_path}: mask size {mask.shape} differs from image size {hw} of {rec.path}")
            continue
        _check_binary(mask, rec.mask_path, "mask", problems)
        if not mask.any():
            problems.append(f"{rec.mask_path}: mask is empty in a {rec.kind} folder")
        elif rec.kind == "outside_roi" and roi is not None and np.any((mask > 0) & (roi > 0)):
            problems.append(f"{rec.mask_path}: outside_roi defect overlaps the ROI")

    if len(sizes) > 1:
        warnings.append(f"images of several sizes: {dict(sizes)}")
    out_counts = {s: dict(sorted(counts[s].items())) for s in SPLITS if s in counts}
    if isinstance(manifest.get("splits"), dict):
        for split, kinds in manifest["splits"].items():
            if isinstance(kinds, dict) and dict(sorted(kinds.items())) != out_counts.get(split, {}):
                problems.append(f"{man_path}: splits.{split} says {kinds}, found {out_counts.get(split, {})}")
    if problems:
        raise DatasetError(problems)
    size = next(iter(sizes)) if len(sizes) == 1 else None
    return CheckReport(root=root, counts=out_counts, image_size=size, images=len(records), warnings=warnings)
