"""Contact sheet of a linecam dataset: what a quality engineer looks at before trusting a benchmark.

Each tile shows one image with its defect mask outlined in red and its ROI outlined in green, and a label bar with
split/kind/name; good images come first, then a few of every defect kind.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from linecam.dataset import DatasetError, ImageRecord, load_index

RED = (0, 0, 255)  # BGR
GREEN = (0, 200, 0)
LABEL_H = 18


def _pick(records: list[ImageRecord], per_kind: int, good: int) -> list[ImageRecord]:
    by_kind: dict[str, list[ImageRecord]] = defaultdict(list)
    for rec in records:
        by_kind[rec.kind].append(rec)
    order = ["good"] + sorted(k for k in by_kind if k not in ("good", "outside_roi")) + ["outside_roi"]
    picked: list[ImageRecord] = []
    for kind in order:
        group = by_kind.get(kind, [])
        # Prefer the test split: it is what the reported metrics are computed on.
        group = sorted(group, key=lambda r: (r.split != "test", r.split, r.path.name))
        picked.extend(group[: good if kind == "good" else per_kind])
    return picked


def _tile(rec: ImageRecord, root: Path, tile: int) -> np.ndarray:
    img = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError([f"{rec.path}: image missing or unreadable"])
    h, w = img.shape[:2]
    for path, colour in ((rec.roi_path, GREEN), (rec.mask_path, RED)):
        if path is None:
            continue
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if m is None or m.shape != (h, w):
            raise DatasetError([f"{path}: unreadable or not {h}x{w} (image {rec.path})"])
        region = (m > 0).astype(np.uint8)
        if colour == RED:
            # Outline *around* the defect (2 px out) so the defect pixels themselves stay visible.
            region = np.asarray(cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))), np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if colour == RED:
            # Tiny defects get a circle so the eye finds them on the sheet.
            for c in contours:
                x, y, cw, ch = cv2.boundingRect(c)
                if max(cw, ch) < 12:
                    cv2.circle(img, (x + cw // 2, y + ch // 2), 10, colour, 1, cv2.LINE_AA)
        cv2.drawContours(img, contours, -1, colour, 1, cv2.LINE_AA)
    img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA if h > tile else cv2.INTER_LINEAR)
    bar = np.full((LABEL_H, tile, 3), 32, np.uint8)
    label = f"{rec.split}/{rec.kind}/{rec.path.stem}"
    cv2.putText(bar, label, (4, LABEL_H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def make_contact_sheet(
    root: str | Path, out: str | Path, per_kind: int = 4, good: int = 6, tile: int = 192, columns: int = 6
) -> Path:
    """Write a PNG grid of good and defective samples of the dataset at ``root``; returns the output path."""
    root = Path(root)
    records = _pick(load_index(root), per_kind, good)
    tiles = [_tile(r, root, tile) for r in records]
    blank = np.zeros_like(tiles[0])
    while len(tiles) % columns:
        tiles.append(blank)
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    sheet = np.vstack(rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet):
        raise OSError(f"{out}: cannot write the contact sheet")
    return out
