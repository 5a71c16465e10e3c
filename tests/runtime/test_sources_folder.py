"""The folder source: real PNG/JPEG files, name order, labels.jsonl truth, loop / end of stream, bad files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from linecam.config.sources import FolderSourceConfig
from linecam.runtime.sources import EndOfStream, SourceError, create_source


def _write(folder: Path, name: str, image: np.ndarray) -> None:
    assert cv2.imwrite(str(folder / name), image)


def _drain(source, n: int) -> list:  # type: ignore[no-untyped-def, type-arg]
    out = []
    while len(out) < n:
        frame = source.grab(1.0)
        if frame is not None:
            out.append(frame)
    return out


def test_replays_in_name_order_with_formats_and_loop(tmp_path: Path) -> None:
    _write(tmp_path, "b.png", np.full((20, 30), 2, np.uint8))  # Mono8
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's BGR order
    _write(tmp_path, "a.png", bgr)
    _write(tmp_path, "c.png", np.full((20, 30), 1000, np.uint16))  # Mono16
    (tmp_path / "notes.txt").write_text("not an image")
    source = create_source(FolderSourceConfig(path=tmp_path, fps=100, loop=True))
    source.open()
    try:
        frames = _drain(source, 4)
    finally:
        source.close()
    assert [f.pixel_format for f in frames] == ["RGB8", "Mono8", "Mono16", "RGB8"]
    assert frames[0].image[0, 0].tolist() == [0, 0, 255]  # delivered as RGB
    assert frames[2].image.dtype == np.uint16 and int(frames[2].image[0, 0]) == 1000
    assert all(f.truth is None for f in frames)


def test_labels_give_truth_and_end_of_stream(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    _write(tmp_path / "img", "0.png", np.zeros((16, 16, 3), np.uint8))
    _write(tmp_path / "img", "1.jpg", np.full((16, 16, 3), 200, np.uint8))
    lines = [{"path": "img/1.jpg", "split": "test", "kind": "spot", "line_label": "defect"},
             {"path": "img/0.png", "split": "test", "kind": "good", "line_label": "good"}]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    source = create_source(FolderSourceConfig(path=tmp_path, fps=200, loop=False))
    source.open()
    frames = _drain(source, 2)
    with pytest.raises(EndOfStream):
        source.grab(1.0)
    assert [(f.truth.line_label, f.truth.kind) for f in frames] == [("defect", "spot"), ("good", "good")]


def test_pacing(tmp_path: Path) -> None:
    _write(tmp_path, "x.png", np.zeros((8, 8), np.uint8))
    source = create_source(FolderSourceConfig(path=tmp_path, fps=20, loop=True))
    source.open()
    _drain(source, 1)
    t0 = time.monotonic()
    _drain(source, 6)
    assert time.monotonic() - t0 == pytest.approx(6 / 20, abs=0.12)


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        create_source(FolderSourceConfig(path=tmp_path / "missing")).open()
    with pytest.raises(SourceError, match="no PNG/JPEG"):
        create_source(FolderSourceConfig(path=tmp_path)).open()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    source = create_source(FolderSourceConfig(path=tmp_path, fps=100))
    source.open()
    with pytest.raises(SourceError, match="broken.png"):
        source.grab(1.0)
    (tmp_path / "labels.jsonl").write_text('{"path": "broken.png"}\n')
    with pytest.raises(SourceError, match=r"labels.jsonl:1"):
        create_source(FolderSourceConfig(path=tmp_path)).open()
