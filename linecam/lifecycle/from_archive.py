"""``linecam dataset from-archive``: reviewed archive items -> a dataset in linecam's layout.

Review convention (chosen over a ``review.jsonl`` file because the archive prunes its day folders: an item a
person has judged must survive retention, and moving a file in a file manager is the review tool every
quality engineer already has)::

    <archive>/reviewed/good/<name>.png                       good
    <archive>/reviewed/<kind>/<name>.png                     a real defect of ``kind`` (lower case: particle, ...)
    <archive>/reviewed/<kind>/<name>_mask.png                optional defect mask (white = defect, same size)

Sidecars moved along with a frame (``_heatmap``, ``_map-*``, ``_verdict.json``) are ignored. Sub-folders of a
kind folder are read too. Frames still in the day folders are unreviewed: skipped and counted.

Output: reviewed good images are split into ``train/good`` and ``val/good`` (``val_share``, seeded);
reviewed defects go to ``val/<kind>`` only (GRD-Net trains on good images only; val calibrates the threshold).
Every image gets an ROI (the calibration ``roi.png`` when given, else the full frame).

Multi-region cameras: ``region`` (a :class:`RegionCrop`, from ``--calibration DIR --region NAME``) makes a
dataset for that one inspection region: every frame, ROI and mask is cropped to the region's box (the region's
own mask, when it has one, is the ROI). A reviewed defect belongs to the region when its drawn mask touches the
box; without a mask, when the archived verdict (``_verdict.json``) shows that region's score above its
threshold. Defects of other regions are skipped and counted, never relabelled good. A defect without a
mask gets the ROI as its mask (the defect is "somewhere in the inspected area": image-level labels stay
exact, pixel metrics on such images are not meaningful; ``labels.jsonl`` marks them ``"mask_source": "roi"``)
unless ``require_masks`` is set. Everything is checked before the first file is written, every problem
names its file, and the result is verified with :func:`linecam.dataset.check_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linecam.config.regions import REGIONS_FILE, RegionError, load_regions
from linecam.dataset import GOOD_KINDS, IMAGE_SUFFIXES, CheckReport, DatasetError, check_dataset
from linecam.runtime.archive import (
    MASK_SUFFIX,
    REVIEWED_DIR,
    VERDICT_SUFFIX,
    ArchiveError,
    day_folders,
    is_sidecar,
)

__all__ = ["DatasetPlan", "FromArchiveResult", "RegionCrop", "ReviewedImage", "build_dataset", "check_reviewed",
           "collect_reviewed", "count_unreviewed", "region_crop", "write_planned"]

_KIND = re.compile(r"^[a-z0-9][a-z0-9_]*$")
GENERATOR = "linecam dataset from-archive"


@dataclass(frozen=True)
class ReviewedImage:
    """One reviewed frame: its file, the label (``good`` or a defect kind) and its mask file, if drawn."""

    path: Path
    kind: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class RegionCrop:
    """One inspection region of a multi-region camera: its name, box ``(x, y, w, h)`` and optional ROI mask."""

    name: str
    box: tuple[int, int, int, int]
    roi: Path | None = None  # a mask of the region's size (the region's fixed mask), or None


def region_crop(calibration: str | Path, name: str) -> RegionCrop:
    """The region ``name`` of ``<calibration>/regions.yaml`` as a crop; ArchiveError naming the file otherwise."""
    try:
        regions = load_regions(calibration)
    except RegionError as exc:
        raise ArchiveError([str(exc)]) from None
    path = Path(calibration) / REGIONS_FILE
    found = [r for r in regions if r.name == name]
    if not found:
        raise ArchiveError([f"{path}: no region named {name!r} (regions: {[r.name for r in regions]})"])
    if found[0].box is None:
        raise ArchiveError([f"{path}: region {name!r} is the full frame; build without --region"])
    return RegionCrop(name, found[0].box, found[0].mask)


def _in_region_by_verdict(frame: Path, region: str, problems: list[str]) -> bool | None:
    """Whether the archived verdict of ``frame`` rejected it in ``region`` (score above threshold)."""
    sidecar = frame.with_name(frame.stem + VERDICT_SUFFIX)
    try:
        record = json.loads(sidecar.read_text())
        score, threshold = record["scores"][region], record["thresholds"][region]
        return float(score) > float(threshold)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"{frame}: no mask drawn and its verdict {sidecar.name} gives no score/threshold for "
                        f"region {region!r} ({type(exc).__name__}: {exc}); draw {frame.stem}{MASK_SUFFIX}.png "
                        "to say where the defect is")
        return None


def _crop(a: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    if box is None:
        return a
    x, y, w, h = box
    return np.ascontiguousarray(a[y:y + h, x:x + w])


@dataclass
class FromArchiveResult:
    """What :func:`build_dataset` wrote (counts per split and kind) and what it skipped."""

    out: Path
    counts: dict[str, dict[str, int]]
    unreviewed: int
    duplicates: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    masks_from_roi: int = 0
    check: CheckReport | None = None
    other_region: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.out}: " + "; ".join(f"{s} " + ", ".join(f"{k}={n}" for k, n in kinds.items())
                                          for s, kinds in self.counts.items())]
        lines.append(f"  skipped: {self.unreviewed} unreviewed frame(s) in the day folders, "
                     f"{len(self.duplicates)} duplicate(s), {len(self.ignored)} non-image file(s)")
        if self.masks_from_roi:
            lines.append(f"  {self.masks_from_roi} defect(s) without a drawn mask: mask = ROI (image-level label only)")
        if self.other_region:
            lines.append(f"  {len(self.other_region)} defect(s) lie in other regions of the frame: not in this dataset")
        lines.extend(f"  duplicate: {d}" for d in self.duplicates[:20])
        lines.extend(f"  ignored: {p}" for p in self.ignored[:20])
        return "\n".join(lines)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def count_unreviewed(archive: Path) -> int:
    """Frames still in the day folders (not moved into ``reviewed/``)."""
    return sum(1 for _, day in day_folders(Path(archive)) for p in day.rglob("*")
               if p.is_file() and _is_image(p) and not is_sidecar(p))


def collect_reviewed(archive: Path) -> tuple[list[ReviewedImage], list[str]]:
    """The reviewed frames (sorted by path) and the non-image files found among them (ignored, reported).

    Raises ArchiveError naming every misplaced file, bad kind folder, orphan mask or mask on a good image.
    """
    archive = Path(archive)
    reviewed = archive / REVIEWED_DIR
    if not archive.is_dir():
        raise ArchiveError([f"{archive}: archive folder does not exist"])
    if not reviewed.is_dir():
        raise ArchiveError([f"{reviewed}: no reviewed folder; move reviewed frames into {reviewed}/good/ and "
                            f"{reviewed}/<kind>/ first"])
    problems: list[str] = []
    ignored: list[str] = []
    images: list[ReviewedImage] = []
    for entry in sorted(reviewed.iterdir()):
        if not entry.is_dir():
            problems.append(f"{entry}: a file directly in {REVIEWED_DIR}/ has no label; move it into "
                            f"{REVIEWED_DIR}/good/ or {REVIEWED_DIR}/<kind>/")
            continue
        kind = entry.name
        if not _KIND.match(kind):
            problems.append(f"{entry}: kind folder name {kind!r} must be lower case letters, digits and '_' "
                            "(e.g. good, particle, outside_roi)")
            continue
        files = sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith("."))
        frames = {p.with_suffix(""): p for p in files if _is_image(p) and not is_sidecar(p)}
        masks = {p for p in files if _is_image(p) and p.stem.endswith(MASK_SUFFIX)}
        for mask in sorted(masks):
            owner = mask.with_name(mask.stem[: -len(MASK_SUFFIX)])
            if owner not in frames:
                problems.append(f"{mask}: mask without its frame (expected {owner.name}.png next to it)")
            elif kind == "good":
                problems.append(f"{mask}: a defect mask in {REVIEWED_DIR}/good/ contradicts the label good; "
                                "move the frame and mask to the defect's kind folder, or delete the mask")
        for stem, frame in sorted(frames.items()):
            mask_path = next((m for m in masks if m.with_name(m.stem[: -len(MASK_SUFFIX)]) == stem), None)
            images.append(ReviewedImage(frame, kind, mask_path if kind != "good" else None))
        ignored.extend(str(p) for p in files if not _is_image(p) and not is_sidecar(p))
    if problems:
        raise ArchiveError(problems)
    return images, ignored


def _read_rgb_bgr(path: Path, problems: list[str]) -> np.ndarray | None:
    """The image as 8-bit 3-channel BGR (gray replicated, alpha dropped); None (and a problem) otherwise."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        problems.append(f"{path}: image unreadable")
        return None
    if img.dtype != np.uint8:
        problems.append(f"{path}: expected an 8-bit image, got {img.dtype} (archive frames are 8-bit RGB PNG)")
        return None
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])
    if img.shape[2] == 3:
        return img
    problems.append(f"{path}: expected 1, 3 or 4 channels, got {img.shape[2]}")
    return None


def _read_binary(path: Path, hw: tuple[int, int], what: str, owner: Path | None,
                 problems: list[str]) -> np.ndarray | None:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        problems.append(f"{path}: {what} unreadable")
        return None
    if m.shape != hw:
        of = f" of {owner}" if owner is not None else ""
        problems.append(f"{path}: {what} is {m.shape[1]}x{m.shape[0]}, the image{of} is {hw[1]}x{hw[0]}")
        return None
    out = np.where(m > 127, 255, 0).astype(np.uint8)
    if not out.any():
        problems.append(f"{path}: {what} is empty (no pixel above 127)")
        return None
    return out


def _split_good(good: list[ReviewedImage], val_share: float, seed: int) -> tuple[list[ReviewedImage],
                                                                                  list[ReviewedImage]]:
    """(train, val): ``round(n * val_share)`` to val, at least one each side when there are two or more."""
    n = len(good)
    n_val = round(n * val_share)
    if val_share > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    n_val = min(n_val, max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    return ([g for i, g in enumerate(good) if i not in val_idx], [g for i, g in enumerate(good) if i in val_idx])


def _bbox(mask: np.ndarray) -> list[int]:
    x, y, w, h = cv2.boundingRect(mask)
    return [int(x), int(y), int(w), int(h)]


@dataclass
class DatasetPlan:
    """What pass 1 found, checked: the images to write, their common size, the crop, the ROI and the masks."""

    keep: list[ReviewedImage]
    size: tuple[int, int]  # (h, w) of the reviewed frames
    box: tuple[int, int, int, int] | None  # the region's box, None for the full frame
    roi_mask: np.ndarray  # (h, w) of the crop, 0/255
    masks: dict[Path, np.ndarray]  # cropped defect masks drawn by the reviewer
    duplicates: list[str] = field(default_factory=list)
    other_region: list[str] = field(default_factory=list)

    @property
    def crop_hw(self) -> tuple[int, int]:
        return (self.box[3], self.box[2]) if self.box is not None else self.size


def _unique_readable(images: list[ReviewedImage], problems: list[str]
                     ) -> tuple[list[ReviewedImage], dict[Path, tuple[int, int]], list[str]]:
    """The readable images without pixel-identical repeats -> (kept, size of each, duplicates); a repeat with
    another label is a problem, since one of the two labels is wrong."""
    shape_of: dict[Path, tuple[int, int]] = {}
    first_of_hash: dict[str, ReviewedImage] = {}
    keep: list[ReviewedImage] = []
    duplicates: list[str] = []
    for rec in images:
        img = _read_rgb_bgr(rec.path, problems)
        if img is None:
            continue
        digest = hashlib.sha1(img.tobytes() + repr(img.shape).encode()).hexdigest()
        seen = first_of_hash.get(digest)
        if seen is not None:
            if seen.kind != rec.kind:
                problems.append(f"{rec.path}: identical pixels to {seen.path}, but labelled {rec.kind!r} there "
                                f"{seen.kind!r}; keep one")
            else:
                duplicates.append(f"{rec.path} = {seen.path}")
            continue
        first_of_hash[digest] = rec
        shape_of[rec.path] = (int(img.shape[0]), int(img.shape[1]))
        keep.append(rec)
    return keep, shape_of, duplicates


def _crop_roi(roi: str | Path | None, region: RegionCrop | None, size: tuple[int, int],
              box: tuple[int, int, int, int] | None, problems: list[str]) -> np.ndarray | None:
    """The ROI of the crop: the region's own mask, else the frame ROI cropped to the box, else everything."""
    crop_hw = (box[3], box[2]) if box is not None else size
    if region is not None and region.roi is not None:
        return _read_binary(region.roi, crop_hw, f"mask of region {region.name!r}", None, problems)
    if roi is not None:
        frame_roi = _read_binary(Path(roi), size, "ROI", None, problems)
        roi_mask = _crop(frame_roi, box) if frame_roi is not None else None
        if roi_mask is not None and not roi_mask.any():
            problems.append(f"{roi}: the ROI has no pixel inside region box {list(box or ())}")
        return roi_mask
    return np.full(crop_hw, 255, np.uint8)


def _defect_masks(keep: list[ReviewedImage], shape_of: dict[Path, tuple[int, int]], size: tuple[int, int],
                  region: RegionCrop | None, roi_mask: np.ndarray | None, require_masks: bool,
                  problems: list[str]) -> tuple[dict[Path, np.ndarray], list[str]]:
    """The cropped mask of every reviewed defect (checked against the ROI for outside_roi) -> (masks, the
    defects of other regions); the latter are removed from ``keep``."""
    box = region.box if region is not None else None
    masks: dict[Path, np.ndarray] = {}
    other_region: list[str] = []
    for rec in list(keep):
        if rec.kind == "good" or shape_of[rec.path] != size:
            continue
        in_region: bool | None = True
        m: np.ndarray | None = None
        if rec.mask_path is not None:
            full = _read_binary(rec.mask_path, size, "defect mask", rec.path, problems)
            if full is None:
                continue
            m = _crop(full, box)
            in_region = bool(m.any())
        elif region is not None:
            in_region = _in_region_by_verdict(rec.path, region.name, problems)
        if in_region is None:
            continue
        if not in_region:
            other_region.append(str(rec.path))
            keep.remove(rec)
            continue
        if m is not None:
            if rec.kind == "outside_roi" and roi_mask is not None and np.any((m > 0) & (roi_mask > 0)):
                problems.append(f"{rec.mask_path}: an outside_roi defect must lie outside the ROI, this mask "
                                "overlaps it")
            masks[rec.path] = m
        elif rec.kind == "outside_roi":
            problems.append(f"{rec.path}: an outside_roi image needs its mask ({rec.path.stem}{MASK_SUFFIX}.png): "
                            "the ROI cannot stand in for a defect that lies outside it")
        elif require_masks:
            problems.append(f"{rec.path}: defect mask missing ({rec.path.stem}{MASK_SUFFIX}.png; --require-masks)")
    return masks, other_region


def check_reviewed(archive: Path, images: list[ReviewedImage], roi: str | Path | None = None,
                   require_masks: bool = False, region: RegionCrop | None = None) -> DatasetPlan:
    """Pass 1: read and check every reviewed image, ROI and mask; ArchiveError listing every problem (each
    naming its file) when one remains. Nothing is written."""
    problems: list[str] = []
    if not any(i.kind == "good" for i in images):
        problems.append(f"{archive / REVIEWED_DIR / 'good'}: no reviewed good images (GRD-Net trains on good "
                        "images only)")
    keep, shape_of, duplicates = _unique_readable(images, problems)
    sizes = Counter(shape_of[r.path] for r in keep)
    if not sizes:  # nothing readable: the problems above say why
        raise ArchiveError(problems or [f"{archive / REVIEWED_DIR}: no reviewed images"])
    size = sizes.most_common(1)[0][0]
    for rec in keep:
        if shape_of[rec.path] != size:
            h, w = shape_of[rec.path]
            problems.append(f"{rec.path}: {w}x{h} differs from the other reviewed images ({size[1]}x{size[0]}); "
                            "a dataset holds one camera's frames")
    box = region.box if region is not None else None
    if region is not None and (region.box[0] + region.box[2] > size[1] or region.box[1] + region.box[3] > size[0]):
        raise ArchiveError(problems + [f"region {region.name!r} box {list(region.box)} does not fit the "
                                       f"{size[1]}x{size[0]} reviewed frames"])
    roi_mask = _crop_roi(roi, region, size, box, problems)
    masks, other_region = _defect_masks(keep, shape_of, size, region, roi_mask, require_masks, problems)
    if problems:
        raise ArchiveError(problems)
    assert roi_mask is not None
    return DatasetPlan(keep, size, box, roi_mask, masks, duplicates, other_region)


def _write_image(out: Path, archive: Path, split: str, rec: ReviewedImage, n: int, plan: DatasetPlan
                 ) -> tuple[dict[str, Any], bool]:
    """Write one image with its ROI (and mask) -> (its labels.jsonl entry, whether its mask is the ROI)."""
    rel = Path(split) / rec.kind / f"{n:04d}.png"
    for folder in ("", "roi", "ground_truth"):
        if folder != "ground_truth" or rec.kind != "good":
            (out / folder / rel).parent.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    img = _read_rgb_bgr(rec.path, problems)
    if img is None:  # changed since pass 1
        raise ArchiveError(problems)
    cv2.imwrite(str(out / rel), _crop(img, plan.box))
    cv2.imwrite(str(out / "roi" / rel), plan.roi_mask)
    entry: dict[str, Any] = {"path": str(rel), "split": split, "kind": rec.kind,
                             "line_label": "good" if rec.kind in GOOD_KINDS else "defect",
                             "mask": None, "roi": str(Path("roi") / rel), "defects": [],
                             "source": str(rec.path.relative_to(archive))}
    from_roi = False
    if rec.kind != "good":
        mask = plan.masks.get(rec.path)
        if mask is None:
            mask, entry["mask_source"], from_roi = plan.roi_mask, "roi", True
        else:
            entry["mask_source"] = "file"
        cv2.imwrite(str(out / "ground_truth" / rel), mask)
        entry["mask"] = str(Path("ground_truth") / rel)
        entry["defects"] = [{"kind": rec.kind, "bbox": _bbox(mask)}]
    return entry, from_roi


def write_planned(plan: DatasetPlan, archive: Path, out: Path, ignored: list[str], val_share: float = 0.2,
                  seed: int = 0, roi: str | Path | None = None, region: RegionCrop | None = None
                  ) -> FromArchiveResult:
    """Pass 2: write the checked plan as a linecam dataset (good split into train/val, defects into val), its
    index and manifest, then verify it with the dataset checker."""
    train_good, val_good = _split_good([r for r in plan.keep if r.kind == "good"], val_share, seed)
    order = [("train", r) for r in train_good] + [("val", r) for r in val_good]
    order += [("val", r) for r in plan.keep if r.kind != "good"]
    numbers: Counter[tuple[str, str]] = Counter()
    lines: list[str] = []
    masks_from_roi = 0
    out.mkdir(parents=True, exist_ok=True)
    for split, rec in order:
        entry, from_roi = _write_image(out, archive, split, rec, numbers[(split, rec.kind)], plan)
        numbers[(split, rec.kind)] += 1
        masks_from_roi += from_roi
        lines.append(json.dumps(entry, sort_keys=True))
    counts: dict[str, dict[str, int]] = {}
    for (split, kind), n in sorted(numbers.items()):
        counts.setdefault(split, {})[kind] = n
    unreviewed = count_unreviewed(archive)
    (out / "labels.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = {
        "format": "linecam-dataset",
        "format_version": 1,
        "generator": GENERATOR,
        "source_archive": str(archive.resolve()),
        "seed": seed,
        "val_share": val_share,
        "image_size": list(plan.crop_hw),
        "region": {"name": region.name, "box": list(region.box)} if region is not None else None,
        "channels": 3,
        "roi": str(Path(roi).resolve()) if roi is not None else "full frame",
        "defect_kinds": sorted({r.kind for r in plan.keep if r.kind not in GOOD_KINDS}),
        "unseen_kinds": [],
        "splits": counts,
        "masks_from_roi": masks_from_roi,
        "skipped": {"unreviewed": unreviewed, "duplicates": len(plan.duplicates), "ignored_files": len(ignored)},
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    try:
        report = check_dataset(out)
    except DatasetError as exc:  # a bug here, not the reviewer's: say so with the checker's list
        raise ArchiveError([f"{out}: the written dataset fails its check (please report): {p}"
                            for p in exc.problems]) from None
    return FromArchiveResult(out=out, counts=counts, unreviewed=unreviewed, duplicates=plan.duplicates,
                             ignored=ignored, masks_from_roi=masks_from_roi, check=report,
                             other_region=plan.other_region)


def build_dataset(archive: str | Path, out: str | Path, val_share: float = 0.2, seed: int = 0,
                  roi: str | Path | None = None, require_masks: bool = False,
                  region: RegionCrop | None = None) -> FromArchiveResult:
    """Turn ``<archive>/reviewed/`` into a linecam dataset at ``out`` (which must not exist or be empty);
    with ``region``, a dataset of that inspection region's crops. Everything is checked before the first
    file is written (:func:`check_reviewed`), then written (:func:`write_planned`)."""
    archive, out = Path(archive), Path(out)
    if not 0.0 <= val_share < 1.0:
        raise ArchiveError([f"--val-share {val_share}: must be in [0, 1) (train needs good images)"])
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArchiveError([f"{out}: output exists and is not an empty folder; choose a new one"])
    images, ignored = collect_reviewed(archive)
    plan = check_reviewed(archive, images, roi, require_masks, region)
    return write_planned(plan, archive, out, ignored, val_share, seed, roi, region)
