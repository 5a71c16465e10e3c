"""Dataset writer: layout, manifest, labels, determinism across worker counts, separate seed streams."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linecam.dataset import check_dataset, load_index
from linecam.synth.dataset import default_counts, parse_counts, write_dataset


def _read(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    assert img is not None, path
    return np.asarray(img)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_manifest_and_labels(small_dataset: Path) -> None:
    man = json.loads((small_dataset / "dataset.json").read_text())
    assert man["format"] == "linecam-dataset" and man["format_version"] == 1
    assert man["image_size"] == [96, 96] and man["channels"] == 3 and man["area"] == "meniscus"
    assert man["pixel_scale_um"] == pytest.approx(10240 / 96, abs=1e-3)
    assert man["defect_kinds"] == ["particle", "spot", "scratch", "fibre"]
    assert man["unseen_kinds"] == ["inclusion", "deformation", "die_lines", "flake"]
    assert man["splits"]["test"] == {"fibre": 2, "good": 3, "outside_roi": 2, "particle": 2, "scratch": 2, "spot": 2}
    lines = [json.loads(x) for x in (small_dataset / "labels.jsonl").read_text().splitlines()]
    assert len(lines) == 6 + 2 + 5 + 3 + 10 + 4 * 2
    for rec in lines:
        assert (small_dataset / rec["path"]).is_file() and (small_dataset / rec["roi"]).is_file()
        if rec["kind"] == "good":
            assert rec["mask"] is None and rec["defects"] == []
        else:
            mask = _read(small_dataset / rec["mask"], cv2.IMREAD_GRAYSCALE)
            roi = _read(small_dataset / rec["roi"], cv2.IMREAD_GRAYSCALE)
            assert mask.any()
            inside = np.any((mask > 0) & (roi > 0))
            assert inside == (rec["kind"] != "outside_roi")
            assert rec["line_label"] == ("good" if rec["kind"] == "outside_roi" else "defect")
            assert rec["defects"][0]["bbox"][2] > 0
    unseen = {"inclusion", "deformation", "die_lines", "flake"}
    assert {r["split"] for r in lines if r["kind"] in unseen} == {"test_unseen"}
    assert {r["kind"] for r in lines if r["split"] == "test_unseen"} == unseen
    report = check_dataset(small_dataset)
    assert report.images == len(lines) and report.image_size == (96, 96)
    assert len(load_index(small_dataset)) == len(lines)


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path: Path) -> None:
    counts = parse_counts("train=4,val=0,val/*=0,test=2,test/*=1,test_unseen=1")
    write_dataset(tmp_path / "a", seed=9, size=64, counts=counts, workers=1)
    write_dataset(tmp_path / "b", seed=9, size=64, counts=counts, workers=2)
    write_dataset(tmp_path / "c", seed=10, size=64, counts=counts, workers=1)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["train/good/0000.png"] != fc["train/good/0000.png"]


def test_train_and_test_use_different_seed_streams(small_dataset: Path) -> None:
    a = _read(small_dataset / "train/good/0000.png")
    b = _read(small_dataset / "test/good/0000.png")
    c = _read(small_dataset / "val/good/0000.png")
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_counts_parsing_and_refusals(tmp_path: Path) -> None:
    c = parse_counts("train=10,val/*=3,test/particle=7,test_unseen=4")
    assert c["train"] == {"good": 10}
    assert c["val"]["fibre"] == 3 and c["val"]["outside_roi"] == 3 and c["val"]["good"] == 150
    assert c["test"]["particle"] == 7 and c["test"]["spot"] == 50
    assert c["test_unseen"] == {"inclusion": 4, "deformation": 4, "die_lines": 4, "flake": 4}
    assert default_counts()["train"] == {"good": 600}
    for bad, msg in (("trian=3", "unknown split"), ("train/particle=3", "not allowed"), ("val=x", "integer"),
                     ("test=-1", ">= 0"), ("val", "KEY=N"), ("val/inclusion=2", "not allowed")):
        with pytest.raises(ValueError, match=msg):
            parse_counts(bad)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="full"):
        write_dataset(tmp_path / "full", counts=parse_counts("train=1"))


def test_overwrite_replaces_a_previous_dataset_only(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, seed=1, size=64, counts={"train": {"good": 3}, "test": {"spot": 2}})
    write_dataset(root, seed=1, size=64, counts={"train": {"good": 1}}, overwrite=True)
    assert sorted(p.name for p in (root / "train/good").iterdir()) == ["0000.png"]
    assert not (root / "test").exists() and not (root / "ground_truth").exists()
    assert check_dataset(root).images == 1
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a linecam dataset"):
        write_dataset(other, counts={"train": {"good": 1}}, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_growing_a_split_keeps_the_existing_images_bit_identical(tmp_path: Path) -> None:
    """The default split sizes grew in session 6; figures on the old images must stay comparable."""
    small, large = tmp_path / "small", tmp_path / "large"
    write_dataset(small, seed=3, size=64, counts={"train": {"good": 2}, "test": {"good": 1, "spot": 2}})
    write_dataset(large, seed=3, size=64, counts={"train": {"good": 2}, "test": {"good": 3, "spot": 4}})
    old = [json.loads(line) for line in (small / "labels.jsonl").read_text().splitlines()]
    new = {r["path"]: r for r in (json.loads(line) for line in (large / "labels.jsonl").read_text().splitlines())}
    assert len(new) == 2 + 3 + 4
    for record in old:
        assert new[record["path"]] == record
        for key in ("path", "mask", "roi"):
            if record.get(key):
                assert (small / record[key]).read_bytes() == (large / record[key]).read_bytes(), record[key]
    assert (large / "test/spot/0003.png").read_bytes() != (large / "test/spot/0001.png").read_bytes()
