"""Dataset readers on tiny real PNG trees (MVTec AD and linecam layouts)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linecam.grdnet.datasets import (
    DatasetError,
    InspectionDataset,
    detect_layout,
    list_records,
    list_splits,
    open_split,
    summarize,
)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return path


def _bgr(value: tuple[int, int, int], size: int = 32) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = value  # BGR order on disk
    return img


def _mask(size: int = 32, box: tuple[int, int, int, int] = (4, 4, 12, 12)) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def make_mvtec(root: Path, with_roi: bool = False) -> Path:
    cat = root / "bottle"
    for i in range(3):
        _png(cat / "train" / "good" / f"{i:03d}.png", _bgr((10, 20, 30)))
        _png(cat / "test" / "good" / f"{i:03d}.png", _bgr((10, 20, 30)))
    for i in range(2):
        _png(cat / "test" / "crack" / f"{i:03d}.png", _bgr((0, 0, 255)))
        _png(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png", _mask())
    if with_roi:
        _png(cat / "roi.png", _mask(box=(0, 0, 16, 32)))
    return cat


def make_linecam(root: Path, size: int = 32) -> Path:
    entries = []

    def add(split: str, kind: str, name: str, label: str, defect: bool, img_size: int = size) -> None:
        rel = f"{split}/{kind}/{name}.png"
        _png(root / rel, _bgr((0, 200, 0) if defect else (50, 50, 50), img_size))
        roi_rel = f"roi/{split}/{kind}/{name}.png"
        _png(root / roi_rel, _mask(img_size, (0, 0, img_size // 2, img_size)))
        mask_rel = None
        if kind != "good":
            mask_rel = f"ground_truth/{split}/{kind}/{name}.png"
            box = (2, 2, 6, 6) if kind != "outside_roi" else (20, 20, 28, 28)
            _png(root / mask_rel, _mask(img_size, box))
        entries.append({"path": rel, "split": split, "kind": kind, "line_label": label, "mask": mask_rel,
                        "roi": roi_rel})

    for i in range(4):
        add("train", "good", f"g{i}", "good", False)
    add("val", "good", "g0", "good", False)
    add("val", "scratch", "s0", "defect", True)
    add("val", "outside_roi", "o0", "good", True)
    add("test", "good", "g0", "good", False)
    add("test", "scratch", "s0", "defect", True)
    add("test", "outside_roi", "o0", "good", True)
    add("test_unseen", "crack", "c0", "defect", True)
    (root / "dataset.json").write_text(json.dumps({"format": "linecam-dataset", "image_size": size,
                                                   "defect_kinds": ["scratch"], "unseen_kinds": ["crack"],
                                                   "splits": ["train", "val", "test", "test_unseen"]}))
    (root / "labels.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return root


def test_mvtec_layout_labels_masks_and_full_frame_roi(tmp_path: Path) -> None:
    cat = make_mvtec(tmp_path)
    assert detect_layout(cat) == "mvtec"
    assert list_splits(cat) == ["test", "train"]
    ds = open_split(cat, "test", 16)
    assert len(ds) == 5 and sorted(ds.labels) == [0, 0, 0, 1, 1]
    item = ds[0]
    assert item["kind"] == "crack" and item["label"] == 1
    assert item["image"].shape == (3, 16, 16)
    # BGR (0,0,255) on disk is pure red in RGB.
    assert item["image"][0].min() == 1.0 and item["image"][1:].max() == 0.0
    # 32->16: the 8x8 box at (4..12) becomes 4x4 at (2..6).
    assert item["mask"].shape == (1, 16, 16) and int(item["mask"].sum()) == 16
    assert item["mask"][0, 2:6, 2:6].min() == 1.0
    assert float(item["roi"].min()) == 1.0  # no ROI on disk -> full frame
    good = ds[4]
    assert good["label"] == 0 and float(good["mask"].sum()) == 0.0


def test_mvtec_shared_roi_and_required_roi(tmp_path: Path) -> None:
    cat = make_mvtec(tmp_path / "a", with_roi=True)
    ds = open_split(cat, "train", 32, require_roi=True)
    assert float(ds[0]["roi"].mean()) == pytest.approx(0.5)
    bare = make_mvtec(tmp_path / "b")
    with pytest.raises(DatasetError, match=r"000\.png: ROI required"):
        list_records(bare, "train", require_roi=True)


def test_mvtec_missing_ground_truth_names_file(tmp_path: Path) -> None:
    cat = make_mvtec(tmp_path)
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match="001_mask.png"):
        list_records(cat, "test")


def test_linecam_layout_outside_roi_is_good_and_roi_is_read(tmp_path: Path) -> None:
    root = make_linecam(tmp_path / "ds")
    assert detect_layout(root) == "linecam"
    assert list_splits(root) == ["test", "test_unseen", "train", "val"]
    test = open_split(root, "test", 32, require_roi=True)
    by_kind = {test[i]["kind"]: test[i] for i in range(len(test))}
    assert by_kind["outside_roi"]["label"] == 0
    assert by_kind["scratch"]["label"] == 1
    assert by_kind["good"]["label"] == 0 and float(by_kind["good"]["mask"].sum()) == 0
    assert float(by_kind["outside_roi"]["mask"].sum()) == 64  # defect pixels exist, outside the ROI
    roi = by_kind["scratch"]["roi"][0]
    assert float(roi[:16].min()) == 1.0 and float(roi[16:].max()) == 0.0
    assert float((by_kind["outside_roi"]["mask"] * by_kind["outside_roi"]["roi"]).sum()) == 0.0
    assert summarize(test.records)["kinds"] == {"good": 1, "outside_roi": 1, "scratch": 1}


def test_linecam_unreadable_image_names_file(tmp_path: Path) -> None:
    root = make_linecam(tmp_path / "ds")
    (root / "train" / "good" / "g2.png").write_bytes(b"not a png")
    ds = open_split(root, "train", 32, cache=True)
    with pytest.raises(DatasetError, match=r"g2\.png: unreadable image"):
        ds.preload()


def test_linecam_mask_of_wrong_size_names_file(tmp_path: Path) -> None:
    root = make_linecam(tmp_path / "ds")
    _png(root / "ground_truth" / "test" / "scratch" / "s0.png", _mask(24))
    ds = open_split(root, "test", 32)
    idx = next(i for i, r in enumerate(ds.records) if r.kind == "scratch")
    with pytest.raises(DatasetError, match=r"s0\.png: mask size 24x24 differs"):
        ds[idx]


def test_linecam_missing_roi_and_bad_index(tmp_path: Path) -> None:
    root = make_linecam(tmp_path / "ds")
    (root / "roi" / "val" / "good" / "g0.png").unlink()
    with pytest.raises(DatasetError, match=r"roi/val/good/g0\.png"):
        list_records(root, "val")
    with (root / "labels.jsonl").open("a") as fh:
        fh.write("{broken\n")
    with pytest.raises(DatasetError, match=r"labels\.jsonl:\d+: not valid JSON"):
        list_records(root, "train")


def test_cache_returns_same_tensors_without_rereading(tmp_path: Path) -> None:
    root = make_linecam(tmp_path / "ds")
    ds = InspectionDataset(list_records(root, "train"), 16, cache=True)
    first = ds[0]["image"].clone()
    for rec in ds.records:
        rec.image.unlink()  # served from memory from now on
    ds2 = ds[0]["image"]
    assert ds2.equal(first)
    with pytest.raises(DatasetError, match="unreadable image"):
        ds[1]


def test_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a linecam dataset"):
        detect_layout(tmp_path)
