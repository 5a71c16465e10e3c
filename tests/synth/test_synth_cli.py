"""CLI handlers end to end on real files: synth -> data check -> data preview, and the failure exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import pytest

from linecam.commands.data import register


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="linecam")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_synth_check_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    counts = "train=3,val=1,val/*=1,test=2,test/*=1,test_unseen=1"
    assert _run(["synth", "--out", str(out), "--seed", "3", "--size", "80x100", "--counts", counts,
                 "--workers", "1", "--area", "body", "--sizes", "particle=200:400"]) == 0
    assert _run(["data", "check", str(out)]) == 0
    assert "test: fibre=1, good=2" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert _run(["data", "preview", str(out), "--out", str(sheet), "--tile", "96"]) == 0
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[1] == 6 * 96
    red = (img[..., 2] > 200) & (img[..., 1] < 60) & (img[..., 0] < 60)
    green = (img[..., 1] > 150) & (img[..., 2] < 80) & (img[..., 0] < 80)
    assert red.sum() > 10 and green.sum() > 100


def test_failures_give_nonzero_exit_and_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert _run(["synth", "--out", str(out), "--size", "64", "--counts", "train=2,val=0,val/*=0,test=1,test/*=0,"
                 "test_unseen=0", "--workers", "1"]) == 0
    (out / "roi/test/good/0000.png").unlink()
    assert _run(["data", "check", str(out)]) == 1
    assert "roi/test/good/0000.png" in capsys.readouterr().err
    assert _run(["synth", "--out", str(tmp_path / "x"), "--counts", "train/spot=2"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert _run(["synth", "--out", str(out)]) == 2  # not empty
    with pytest.raises(SystemExit):
        _run(["synth", "--out", str(tmp_path / "y"), "--size", "abc"])
