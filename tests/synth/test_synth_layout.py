"""Layout checks: every kind of breakage is reported and names the offending file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from linecam.dataset import DatasetError, check_dataset, load_index


@pytest.fixture()
def ds(small_dataset: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(small_dataset, dst)
    return dst


def _problems(root: Path) -> list[str]:
    with pytest.raises(DatasetError) as info:
        check_dataset(root)
    assert isinstance(info.value, ValueError)
    return info.value.problems


def test_corrupt_png_is_named(ds: Path) -> None:
    bad = ds / "test/particle/0001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (p,) = _problems(ds)
    assert str(bad) in p and "unreadable" in p


def test_mask_of_wrong_size_is_named(ds: Path) -> None:
    bad = ds / "ground_truth/val/spot/0000.png"
    cv2.imwrite(str(bad), np.full((50, 96), 255, np.uint8))
    (p,) = _problems(ds)
    assert str(bad) in p and "size" in p


def test_missing_roi_is_named(ds: Path) -> None:
    (ds / "roi/train/good/0002.png").unlink()
    (p,) = _problems(ds)
    assert "train/good/0002.png" in p and "ROI missing" in p


def test_empty_mask_in_defect_folder_is_named(ds: Path) -> None:
    bad = ds / "ground_truth/test/fibre/0000.png"
    cv2.imwrite(str(bad), np.zeros((96, 96), np.uint8))
    (p,) = _problems(ds)
    assert str(bad) in p and "empty" in p


def test_duplicate_across_splits_is_named(ds: Path) -> None:
    shutil.copy(ds / "train/good/0000.png", ds / "test/good/0001.png")
    (p,) = _problems(ds)
    assert str(ds / "test/good/0001.png") in p and "train/good/0000.png" in p


def test_outside_roi_mask_touching_roi_is_named(ds: Path) -> None:
    bad = ds / "ground_truth/val/outside_roi/0000.png"
    roi = cv2.imread(str(ds / "roi/val/outside_roi/0000.png"), cv2.IMREAD_GRAYSCALE)
    assert roi is not None
    cv2.imwrite(str(bad), roi)
    (p,) = _problems(ds)
    assert str(bad) in p and "overlaps the ROI" in p


def test_all_problems_are_listed_together(ds: Path) -> None:
    (ds / "roi/train/good/0000.png").unlink()
    (ds / "test/good/0000.png").write_bytes(b"")
    problems = _problems(ds)
    assert len(problems) == 2
    assert any("train/good/0000.png" in p for p in problems)
    assert any("test/good/0000.png" in p for p in problems)


def test_unlisted_image_and_bad_index_line(ds: Path) -> None:
    shutil.copy(ds / "train/good/0000.png", ds / "train/good/9999.png")
    assert any("9999.png" in p and "not listed" in p for p in _problems(ds))
    with (ds / "labels.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(DatasetError, match="labels.jsonl:"):
        load_index(ds)


def test_index_without_labels_comes_from_folders(ds: Path) -> None:
    from_labels = {(r.path, r.split, r.kind, r.line_label, r.mask_path, r.roi_path) for r in load_index(ds)}
    (ds / "labels.jsonl").unlink()
    from_dirs = {(r.path, r.split, r.kind, r.line_label, r.mask_path, r.roi_path) for r in load_index(ds)}
    assert from_labels == from_dirs
    outside = [r for r in load_index(ds) if r.kind == "outside_roi"]
    assert outside and all(r.line_label == "good" and r.mask_path is not None for r in outside)
    man = json.loads((ds / "dataset.json").read_text())
    man["splits"]["train"]["good"] = 99
    (ds / "dataset.json").write_text(json.dumps(man))
    assert any("splits.train" in p for p in _problems(ds))


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_index(tmp_path / "nope")


def test_defects_in_train_and_leaked_unseen_kinds_are_named(ds: Path) -> None:
    (ds / "labels.jsonl").unlink()  # index from folders, so moved files are picked up as they lie
    for sub in ("", "ground_truth/", "roi/"):
        (ds / f"{sub}train/spot").mkdir(parents=True)
        shutil.move(ds / f"{sub}val/spot/0000.png", ds / f"{sub}train/spot/0000.png")
        (ds / f"{sub}test/inclusion").mkdir(parents=True)
        shutil.move(ds / f"{sub}test_unseen/inclusion/0000.png", ds / f"{sub}test/inclusion/0000.png")
    problems = _problems(ds)
    assert any(str(ds / "train/spot/0000.png") in p and "train" in p for p in problems)
    assert any(str(ds / "test/inclusion/0000.png") in p and "unseen" in p for p in problems)
