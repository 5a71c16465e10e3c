"""The inspection archive and ``linecam dataset from-archive``: the worker archives rejects and a reproducible
sample of accepts (frame, heatmap, 16-bit map, verdict); retention and the size cap prune the oldest first;
a full queue drops and counts instead of blocking; reviewed folders become a dataset that passes
``check_dataset`` and the trainer's reader; bad review entries name their file."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from linecam.backends.base import Detection
from linecam.cli import main as cli_main
from linecam.config import ArchiveConfig, ConfigError, LineConfig, parse_config
from linecam.dataset import check_dataset, load_index
from linecam.grdnet.modeldir import ModelCard, write_card
from linecam.grdnet.profiles import get_profile
from linecam.lifecycle.from_archive import build_dataset, region_crop
from linecam.runtime.archive import (
    ArchiveError,
    ArchiveItem,
    ArchiveWriter,
    archive_bytes,
    day_folders,
    prune_archive,
    sample_fraction,
    write_item,
)
from linecam.runtime.infer import InferWorker
from linecam.runtime.messages import FrameHeader, Truth, Verdict, encode_frame, now_ns

SIZE = 32


class BrightnessDetector:
    """Deterministic detector: score = mean brightness / 255; map = per-pixel brightness / 255."""

    backend = "brightness"
    model_version = "b1"
    input_size = (SIZE, SIZE)

    def detect(self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False) -> Detection:
        scores = images.reshape(images.shape[0], -1).mean(axis=1).astype(np.float32) / 255.0
        maps = images.mean(axis=3).astype(np.float32) / 255.0 if return_maps else None
        return Detection(scores=scores, maps=maps)

    def close(self) -> None:
        pass


def _line(tmp_path: Path, archive: dict[str, Any]) -> LineConfig:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    write_card(model, ModelCard(name="stub", version="", profile=get_profile("fast", image_size=64),
                                input_size=(64, 64), roi_variant="learned_silence", threshold=0.5))
    doc = {
        "line": {"name": "t", "station": "s1"},
        "runtime_dir": str(tmp_path / "rt"),
        "models": {"demo": {"path": "model"}},
        "cameras": [{"name": "cam1", "source": {"kind": "synthetic", "width": SIZE, "height": SIZE},
                     "regions": [{"name": "vial", "box": None, "model": "demo"}]}],
        "infer": {"max_batch": 4, "threads": 1, "metrics_port": 0, "warmup": False},
        "gate": {"metrics_port": 0},
        "archive": archive,
    }
    return parse_config(doc, "test-line.yaml", tmp_path)


def _frame(seq: int, value: int, truth: Truth | None = None, camera: str = "cam1") -> list[Any]:
    img = np.full((SIZE, SIZE, 3), value, np.uint8)
    img[0, 0] = (seq % 256, 7, 9)  # every frame distinct, and a pixel that checks losslessness
    header = FrameHeader(camera=camera, seq=seq, slot=seq + 100, t_capture_ns=now_ns(), shape=img.shape,
                         dtype="uint8", pixel_format="RGB8", truth=truth)
    return encode_frame(header, img)


def _noise(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _verdict(seq: int, decision: str = "reject", capture: dt.datetime | None = None, camera: str = "cam1") -> Verdict:
    t = capture or dt.datetime.now(dt.timezone.utc)
    return Verdict(camera=camera, seq=seq, slot=seq, decision=decision,  # type: ignore[arg-type]
                   reason="anomaly" if decision == "reject" else "ok", scores={"vial": 0.7},
                   thresholds={"vial": 0.5}, model_version="m1", timestamps={"capture": int(t.timestamp() * 1e9)})


def _item(seq: int, day: dt.date, decision: str = "reject", seed: int | None = None) -> ArchiveItem:
    capture = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.timezone.utc)
    amap = np.random.default_rng(seq).random((SIZE, SIZE)).astype(np.float32)
    return ArchiveItem(_verdict(seq, decision, capture), _noise(seed if seed is not None else seq),
                       {"vial": ((0, 0, SIZE, SIZE), amap)})


# -- the worker's archive --------------------------------------------------------------------------------------
def test_worker_archives_rejects_with_maps_and_a_reproducible_sample_of_accepts(tmp_path: Path) -> None:
    rate = 0.3
    cfg = _line(tmp_path, {"path": "arch", "accept_sample_rate": rate, "max_bytes": "1 GB"})
    assert cfg.archive is not None and cfg.archive.path == tmp_path / "arch"  # resolved against the config
    worker = InferWorker(cfg, detectors={"demo": BrightnessDetector()}, metrics_port=-1, bind=False)
    truth = Truth(line_label="defect", kind="particle")
    msgs = [(_frame(s, 200 if s % 5 == 0 else 20, truth if s == 5 else None), now_ns()) for s in range(40)]
    msgs.append(([b'{"camera": "cam1", "seq": 77, "slot": 3, "dtype": "int32"}', b"xx"], now_ns()))  # bad frame
    verdicts = [v for i in range(0, len(msgs), 4) for v in worker.process_batch(msgs[i : i + 4])]
    worker.close()  # drains the writer

    root = tmp_path / "arch"
    [(_, day)] = day_folders(root)
    rejects = {int(p.name.split("_")[0]) for p in (day / "cam1" / "reject").glob("*_verdict.json")}
    accepts = {int(p.name.split("_")[0]) for p in (day / "cam1" / "accept").glob("*_verdict.json")}
    assert rejects == {v.seq for v in verdicts if v.decision == "reject"} == {0, 5, 10, 15, 20, 25, 30, 35, 77}
    expected_accepts = {s for s in range(40) if s % 5 and sample_fraction("cam1", s) < rate}
    assert accepts == expected_accepts and 0 < len(accepts) < 32

    stem = day / "cam1" / "reject" / "000000005_105"
    raw = cv2.cvtColor(cv2.imread(f"{stem}.png"), cv2.COLOR_BGR2RGB)
    assert raw.shape == (SIZE, SIZE, 3) and tuple(raw[0, 0]) == (5, 7, 9) and int(raw[5, 5, 0]) == 200  # lossless
    heat = cv2.imread(f"{stem}_heatmap.png")
    assert heat.shape == (SIZE, SIZE, 3) and not np.array_equal(heat[5, 5], raw[5, 5, ::-1])
    amap = cv2.imread(f"{stem}_map-vial.png", cv2.IMREAD_UNCHANGED)
    assert amap.dtype == np.uint16 and int(amap[5, 5]) == round(200 / 255 * 65535)
    record = json.loads(Path(f"{stem}_verdict.json").read_text())
    assert record["decision"] == "reject" and record["reason"] == "anomaly" and record["model_version"] == "b1"
    assert record["scores"]["vial"] == pytest.approx(verdicts[5].scores["vial"])
    assert record["thresholds"] == {"vial": 0.5} and "capture" in record["timestamps"]
    assert record["truth"] == {"line_label": "defect", "kind": "particle"}
    assert record["archive"]["boxes"] == {"vial": [0, 0, SIZE, SIZE]} and record["archive"]["map_scale"] == 65535

    bad = day / "cam1" / "reject"
    assert sorted(p.name for p in bad.glob("000000077_3*")) == ["000000077_3_verdict.json"]  # no pixels: verdict only
    assert json.loads((bad / "000000077_3_verdict.json").read_text())["reason"] == "bad_frame"
    reg = worker.metrics.registry
    assert reg.get_sample_value("linecam_archive_written_total", {"decision": "reject"}) == 9
    assert reg.get_sample_value("linecam_archive_written_total", {"decision": "accept"}) == len(expected_accepts)
    assert reg.get_sample_value("linecam_archive_bytes") == archive_bytes(root) > 0
    assert (root / "README.txt").read_text().startswith("linecam inspection archive")

    # the same frames again (a second run): the same accepts are chosen, and nothing is overwritten
    worker = InferWorker(cfg, detectors={"demo": BrightnessDetector()}, metrics_port=-1, bind=False)
    for i in range(0, 40, 4):
        worker.process_batch(msgs[i : i + 4])
    worker.close()
    again = {p.name for p in (day / "cam1" / "accept").glob("*-2_verdict.json")}
    assert again == {f"{s:09d}_{s + 100}-2_verdict.json" for s in expected_accepts}


def test_sample_is_spread_evenly_and_does_not_alias_with_a_carousel_period() -> None:
    fractions = np.array([sample_fraction("cam1", s) for s in range(8000)])
    assert abs(float(np.mean(fractions < 0.25)) - 0.25) < 0.02
    per_nest = [float(np.mean(fractions[nest::8] < 0.25)) for nest in range(8)]  # a carousel of 8 nests
    assert min(per_nest) > 0.18 and max(per_nest) < 0.32
    assert sample_fraction("cam1", 3) != sample_fraction("cam2", 3)


def test_archive_config_is_strict_and_reads_sizes(tmp_path: Path) -> None:
    cfg = _line(tmp_path, {"path": "a", "max_bytes": "500MiB", "reasons": ["anomaly"]})
    assert cfg.archive is not None and cfg.archive.max_bytes == 500 * 2**20 and cfg.archive.reasons == ["anomaly"]
    with pytest.raises(ConfigError, match=r"test-line.yaml: archive.max_age_dayz"):
        _line(tmp_path, {"path": "a", "max_age_dayz": 3})
    with pytest.raises(ConfigError, match=r"archive.max_bytes.*'20 XB'"):
        _line(tmp_path, {"path": "a", "max_bytes": "20 XB"})
    with pytest.raises(ConfigError, match=r"archive.reasons"):
        _line(tmp_path, {"path": "a", "reasons": ["overload"]})


# -- pruning ---------------------------------------------------------------------------------------------------
def _set_mtime(folder: Path, stem: str, t: float) -> None:
    for p in folder.glob(f"{stem}*"):
        os.utime(p, (t, t))


def test_retention_then_cap_remove_the_oldest_first_and_never_reviewed(tmp_path: Path) -> None:
    root = tmp_path / "arch"
    today = dt.date(2026, 6, 30)
    days = [today - dt.timedelta(days=d) for d in (40, 31, 30, 2, 0)]
    for i, day in enumerate(days):
        for j in range(3):
            write_item(root, _item(10 * i + j, day))
    # within the day that is pruned first, the middle item (seq 21) gets the OLDEST file time
    mid = root / days[2].isoformat() / "cam1" / "reject"
    base = dt.datetime(2026, 5, 31, 13, tzinfo=dt.timezone.utc).timestamp()
    for seq, offset in ((20, 100), (21, 0), (22, 200)):
        _set_mtime(mid, f"{seq:09d}_{seq}", base + offset)
    (root / "reviewed" / "good").mkdir(parents=True)
    shutil.copy(mid / "000000021_21.png", root / "reviewed" / "good" / "keep.png")
    (root / "notes").mkdir()
    (root / "notes" / "shift.txt").write_text("x" * 100_000)  # not a day folder: neither counted nor touched

    per_item = archive_bytes(root) / 15
    res = prune_archive(root, max_bytes=10**12, max_age_days=30, today=today)
    assert res.removed_days == [days[0].isoformat(), days[1].isoformat()] and res.files["age"] == 6 * 4
    assert res.files["cap"] == 0 and [d.isoformat() for d, _ in day_folders(root)] == [d.isoformat() for d in days[2:]]

    cap = int(per_item * 8.5)  # 9 items left: over the cap; prune to 0.9 * cap = 7.65 items -> 7 remain
    res = prune_archive(root, max_bytes=cap, max_age_days=30, prune_to_fraction=0.9, today=today)
    assert res.files["cap"] == 2 * 4 and res.remaining_bytes == archive_bytes(root) <= 0.9 * cap
    left = sorted(p.name for p in mid.glob("*"))
    assert left == ["000000022_22.png", "000000022_22_heatmap.png", "000000022_22_map-vial.png",
                    "000000022_22_verdict.json"]  # seq 21 (oldest time) then 20 went, whole items at once
    assert (root / "reviewed" / "good" / "keep.png").is_file() and (root / "notes" / "shift.txt").is_file()

    res = prune_archive(root, max_bytes=int(per_item * 1.5), max_age_days=30, prune_to_fraction=0.7, today=today)
    assert not (root / days[2].isoformat()).exists() and not (root / days[3].isoformat()).exists()
    assert len(list((root / today.isoformat()).rglob("*_verdict.json"))) == 1
    assert days[2].isoformat() in res.removed_days


def test_writer_prunes_at_start_and_when_over_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "arch"
    today = dt.datetime.now(dt.timezone.utc).date()
    write_item(root, _item(1, today - dt.timedelta(days=10)))  # past a 5-day retention
    per_item = archive_bytes(root)
    cfg = ArchiveConfig.model_validate({"path": root, "max_bytes": int(per_item * 3.5), "max_age_days": 5,
                                        "prune_to_fraction": 0.6, "queue": 64})
    writer = ArchiveWriter(cfg)
    for seq in range(10, 20):
        assert writer.offer(_item(seq, today).verdict, _noise(seq), {"vial": ((0, 0, SIZE, SIZE), None)})
    writer.close()
    assert writer.written == 10 and writer.failed == 0
    assert [d for d, _ in day_folders(root)] == [today]
    m = writer.metrics
    assert m.pruned.labels(cause="age")._value.get() == 4
    assert m.pruned.labels(cause="cap")._value.get() > 0
    assert m.bytes._value.get() == archive_bytes(root) <= cfg.max_bytes
    kept = sorted(int(p.name[:9]) for p in root.rglob("*_verdict.json"))
    assert kept[-1] == 19 and kept == list(range(20 - len(kept), 20))  # the newest survive, the oldest went


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    class StuckDisk(ArchiveWriter):
        def _write(self, item: ArchiveItem) -> None:
            entered.set()
            release.wait(30)
            super()._write(item)

    cfg = ArchiveConfig.model_validate({"path": tmp_path / "arch", "queue": 2, "accept_sample_rate": 0.0})
    writer = StuckDisk(cfg)
    try:
        assert writer.offer(_verdict(0), _noise(0))
        assert entered.wait(30)  # the writer holds item 0 and is stuck on the "disk"
        results = [writer.offer(_verdict(s), _noise(s)) for s in range(1, 6)]
        assert results == [True, True, False, False, False]
        assert writer.offer(_verdict(9, "accept"), _noise(9)) is False  # not sampled at rate 0: not even queued
        assert writer.dropped == 3 and writer.metrics.dropped._value.get() == 3
    finally:
        release.set()
        writer.close()
    assert writer.written == 3 and len(list((tmp_path / "arch").rglob("*_verdict.json"))) == 3


# -- from-archive ------------------------------------------------------------------------------------------------
def _reviewed_archive(root: Path) -> Path:
    """An archive with 7 good frames (one a duplicate), 3 particle frames (2 with masks) reviewed, 2 unreviewed."""
    today = dt.datetime.now(dt.timezone.utc).date()
    for seq in range(12):
        write_item(root, _item(seq, today, "reject" if seq >= 6 else "accept", seed=seq))
    src = root / today.isoformat() / "cam1"
    good, particle = root / "reviewed" / "good", root / "reviewed" / "particle"
    good.mkdir(parents=True)
    particle.mkdir(parents=True)
    for seq in range(6):
        for p in src.glob(f"accept/{seq:09d}_{seq}*"):  # moved with its sidecars, as a person would
            shutil.move(p, good / p.name)
    shutil.copy(good / "000000000_0.png", good / "copy_of_0.png")  # a duplicate: skipped, counted
    (good / "notes.txt").write_text("checked by QA")
    for seq in (6, 7, 8):
        shutil.move(src / "reject" / f"{seq:09d}_{seq}.png", particle / f"{seq:09d}_{seq}.png")
    for seq in (6, 7):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[10 : 14 + seq, 12:20] = 255
        cv2.imwrite(str(particle / f"{seq:09d}_{seq}_mask.png"), mask)
    return root


def test_from_archive_builds_a_dataset_that_passes_the_check_and_the_trainer_reader(tmp_path: Path,
                                                                                   capsys: Any) -> None:
    root = _reviewed_archive(tmp_path / "arch")
    roi = np.zeros((SIZE, SIZE), np.uint8)
    roi[4:28, 6:26] = 255
    cv2.imwrite(str(tmp_path / "roi.png"), roi)
    out = tmp_path / "ds"
    rc = cli_main(["dataset", "from-archive", str(root), "--out", str(out), "--val-share", "0.2", "--seed", "3",
                   "--roi", str(tmp_path / "roi.png")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "3 unreviewed" in printed and "1 duplicate" in printed and "1 non-image" in printed

    report = check_dataset(out)  # the one layout checker
    assert report.counts == {"train": {"good": 5}, "val": {"good": 1, "particle": 3}} and report.image_size == (32, 32)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["skipped"] == {"unreviewed": 3, "duplicates": 1, "ignored_files": 1}
    assert manifest["defect_kinds"] == ["particle"] and manifest["masks_from_roi"] == 1
    records = load_index(out)
    for rec in records:
        assert rec.roi_path is not None and np.array_equal(cv2.imread(str(rec.roi_path), 0), roi)
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert sorted(e["mask_source"] for e in labels if e["kind"] == "particle") == ["file", "file", "roi"]
    by_source = {e["source"]: e for e in labels}
    mask6 = cv2.imread(str(out / by_source["reviewed/particle/000000006_6.png"]["mask"]), 0)
    assert int(mask6.sum() // 255) == 10 * 8 and by_source["reviewed/particle/000000006_6.png"]["defects"] == [
        {"kind": "particle", "bbox": [12, 10, 8, 10]}]
    pixels = cv2.imread(str(out / by_source["reviewed/good/000000003_3.png"]["path"]))
    assert np.array_equal(pixels, cv2.cvtColor(_noise(3), cv2.COLOR_RGB2BGR))  # the frame, unchanged

    from linecam.grdnet.datasets import list_records

    train = list_records(out, "train", require_roi=True)  # what `linecam train` reads
    assert len(train) == 5 and {r.kind for r in train} == {"good"}
    assert {r.kind for r in list_records(out, "val", require_roi=True)} == {"good", "particle"}

    out2 = tmp_path / "ds2"  # same seed: same split
    build_dataset(root, out2, val_share=0.2, seed=3, roi=tmp_path / "roi.png")
    split_of = {e["source"]: e["split"] for e in labels}
    assert {e["source"]: e["split"] for e in map(json.loads, (out2 / "labels.jsonl").read_text().splitlines())} \
        == split_of
    with pytest.raises(ArchiveError, match=r"ds2: output exists"):
        build_dataset(root, out2)
    with pytest.raises(ArchiveError, match=r"000000008_8.png: defect mask missing"):
        build_dataset(root, tmp_path / "ds3", require_masks=True)


@pytest.mark.parametrize("damage, named", [
    ("loose_file", "reviewed/000000009_9.png: a file directly in reviewed/"),
    ("bad_kind", "reviewed/Particle X: kind folder name"),
    ("orphan_mask", "reviewed/particle/ghost_mask.png: mask without its frame"),
    ("mask_size", "reviewed/particle/000000006_6_mask.png: defect mask is 16x16, the image of"),
    ("empty_mask", "reviewed/particle/000000007_7_mask.png: defect mask is empty"),
    ("contradiction", "reviewed/particle/copy.png: identical pixels to"),
    ("unreadable", "reviewed/good/broken.png: image unreadable"),
    ("good_mask", "reviewed/good/000000001_1_mask.png: a defect mask in reviewed/good/"),
    ("roi_size", "roi.png: ROI is 8x8"),
    ("outside_roi_no_mask", "reviewed/outside_roi/000000008_8.png: an outside_roi image needs its mask"),
])
def test_bad_review_entries_name_the_file(tmp_path: Path, capsys: Any, damage: str, named: str) -> None:
    root = _reviewed_archive(tmp_path / "arch")
    rev = root / "reviewed"
    args = ["dataset", "from-archive", str(root), "--out", str(tmp_path / "ds")]
    src = next(root.glob("2*/cam1/reject"))
    if damage == "loose_file":
        shutil.copy(src / "000000009_9.png", rev / "000000009_9.png")
    elif damage == "bad_kind":
        (rev / "Particle X").mkdir()
    elif damage == "orphan_mask":
        cv2.imwrite(str(rev / "particle" / "ghost_mask.png"), np.full((SIZE, SIZE), 255, np.uint8))
    elif damage == "mask_size":
        cv2.imwrite(str(rev / "particle" / "000000006_6_mask.png"), np.full((16, 16), 255, np.uint8))
    elif damage == "empty_mask":
        cv2.imwrite(str(rev / "particle" / "000000007_7_mask.png"), np.zeros((SIZE, SIZE), np.uint8))
    elif damage == "contradiction":
        shutil.copy(rev / "good" / "000000002_2.png", rev / "particle" / "copy.png")
    elif damage == "unreadable":
        (rev / "good" / "broken.png").write_bytes(b"\x89PNG not really")
    elif damage == "good_mask":
        cv2.imwrite(str(rev / "good" / "000000001_1_mask.png"), np.full((SIZE, SIZE), 255, np.uint8))
    elif damage == "roi_size":
        cv2.imwrite(str(tmp_path / "roi.png"), np.full((8, 8), 255, np.uint8))
        args += ["--roi", str(tmp_path / "roi.png")]
    elif damage == "outside_roi_no_mask":
        (rev / "outside_roi").mkdir()
        shutil.move(rev / "particle" / "000000008_8.png", rev / "outside_roi" / "000000008_8.png")
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert named in err, err
    assert not (tmp_path / "ds").exists()  # nothing written while a problem remains


def test_archive_prune_and_status_commands(tmp_path: Path, capsys: Any) -> None:
    root = tmp_path / "arch"
    today = dt.datetime.now(dt.timezone.utc).date()
    write_item(root, _item(1, today - dt.timedelta(days=9)))
    write_item(root, _item(2, today))
    (tmp_path / "line.yaml").write_text(json.dumps({
        "line": {"name": "t", "station": "s"}, "models": {"demo": {"path": "m"}},
        "cameras": [{"name": "cam1", "source": {"kind": "synthetic"}, "regions": [{"name": "v", "model": "demo"}]}],
        "archive": {"path": "arch", "max_age_days": 3, "max_bytes": "1GB"}}))
    assert cli_main(["archive", "status", str(root)]) == 0
    assert "2 day folder(s)" in capsys.readouterr().out
    assert cli_main(["archive", "prune", "--config", str(tmp_path / "line.yaml")]) == 0
    assert "removed 4 file(s) older than 3 days (1 day folder(s) gone)" in capsys.readouterr().out
    assert [d for d, _ in day_folders(root)] == [today]
    assert cli_main(["archive", "prune", str(root)]) == 2
    assert "give --max-bytes, --max-age-days" in capsys.readouterr().err


def test_from_archive_crops_one_region_of_a_multi_region_camera(tmp_path: Path, capsys: Any) -> None:
    root = _reviewed_archive(tmp_path / "arch")
    particle = root / "reviewed" / "particle"
    mask7 = np.zeros((SIZE, SIZE), np.uint8)
    mask7[20:28, 4:10] = 255  # seq 7: a defect in the bottom half only
    cv2.imwrite(str(particle / "000000007_7_mask.png"), mask7)
    # seq 8 has no mask: its archived verdict says which region rejected it (moved along, as a person would).
    [sidecar] = root.glob("*/cam1/reject/000000008_8_verdict.json")
    verdict = json.loads(sidecar.read_text())
    verdict["scores"], verdict["thresholds"] = {"top": 0.9, "bottom": 0.1}, {"top": 0.5, "bottom": 0.5}
    (particle / sidecar.name).write_text(json.dumps(verdict))
    sidecar.unlink()
    cal = tmp_path / "cal"
    cal.mkdir()
    (cal / "regions.yaml").write_text(yaml.safe_dump({"regions": [
        {"name": "top", "box": [0, 0, SIZE, 16], "model": "m"},
        {"name": "bottom", "box": [0, 16, SIZE, 16], "model": "m"}]}))

    found = {}
    for name in ("top", "bottom"):
        out = tmp_path / f"ds_{name}"
        assert cli_main(["dataset", "from-archive", str(root), "--out", str(out), "--calibration", str(cal),
                         "--region", name]) == 0
        assert "1 defect(s) lie in other regions" in capsys.readouterr().out
        assert check_dataset(out).image_size == (16, SIZE)
        labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
        found[name] = sorted(e["source"].split("/")[-1] for e in labels if e["kind"] == "particle")
        good = next(e for e in labels if e["source"].endswith("good/000000003_3.png"))
        y0 = 0 if name == "top" else 16
        expected = cv2.cvtColor(_noise(3), cv2.COLOR_RGB2BGR)[y0 : y0 + 16]
        assert np.array_equal(cv2.imread(str(out / good["path"])), expected)  # the region's pixels, unchanged
        masked = next(e for e in labels if e["source"].endswith("000000006_6.png"))
        rows = np.nonzero(cv2.imread(str(out / masked["mask"]), 0).any(axis=1))[0]
        assert (rows.min(), rows.max()) == ((10, 15) if name == "top" else (0, 3))  # mask rows 10..19, cropped
    assert found == {"top": ["000000006_6.png", "000000008_8.png"], "bottom": ["000000006_6.png", "000000007_7.png"]}

    (particle / sidecar.name).unlink()  # an unmasked defect with no verdict cannot be placed: named, not guessed
    with pytest.raises(ArchiveError, match=r"000000008_8.png: no mask drawn and its verdict"):
        build_dataset(root, tmp_path / "ds_x", region=region_crop(cal, "top"))
    with pytest.raises(ArchiveError, match=r"regions.yaml: no region named 'side'"):
        region_crop(cal, "side")
