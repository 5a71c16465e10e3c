"""Long commands report progress when their output is not a terminal (a log file, CI, the systemd journal).

Each command runs as a real process with stderr piped, so it sees no terminal; the line interval is set to 0 so
every step writes its line and the test does not depend on how fast the machine is.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from linecam.progress import INTERVAL_ENV, Progress, phase
from tests.grdnet.builders import make_vial_dataset


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, INTERVAL_ENV: "0", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "linecam", *args], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_every_long_command_reports_progress_in_a_log(tmp_path: Path) -> None:
    data = make_vial_dataset(tmp_path / "vials")
    synth = _run("synth", "--out", str(tmp_path / "ds"), "--size", "64", "--workers", "2",
                 "--counts", "train=6,val=2,val/*=1,test=0,test/*=0,test_unseen=0")
    n = int(re.search(r"wrote (\d+) images", synth.stdout).group(1))  # type: ignore[union-attr]
    assert f"{n}/{n} images (100%) in" in synth.stderr and f"1/{n} images" in synth.stderr

    model = tmp_path / "model"
    train = _run("train", "--data", str(data), "--out", str(model), "--image-size", "32", "--epochs", "1",
                 "--batch-size", "4", "--max-steps-per-epoch", "2", "--precision", "fp32")
    assert "train epoch 1/1: 1/2 steps (50%)" in train.stderr and "train epoch 1/1: 2/2 steps (100%)" in train.stderr
    assert re.search(r"train epoch 1/1: val_loss [0-9.]+", train.stderr)

    ev = _run("eval", "--model", str(model), "--data", str(data), "--json", str(tmp_path / "m.json"),
              "--report", str(tmp_path / "report"))
    for split in ("val", "test"):
        assert f"eval {split}: 9/9 images (100%) in" in ev.stderr, ev.stderr
    assert "eval test_unseen: 2/2 images (100%)" in ev.stderr and "eval report into" in ev.stderr

    images = [str(p) for p in sorted((data / "test" / "spot").glob("*.png"))]
    pred = _run("predict", "--model", str(model), "--json", str(tmp_path / "p.json"), *images)
    assert f"predict: 1/{len(images)} images" in pred.stderr

    cal = _run("calibrate", "threshold", "--model", str(model), "--data", str(data), "--target-frr", "0.0",
               "--out", str(tmp_path / "cal"))
    assert "calibrate: scoring val: 9/9 images (100%) in" in cal.stderr

    exp = _run("export", "--model", str(model), "--no-fp16")
    assert re.search(r"export: tracing .* to ONNX \(torch.export\) \.\.\.", exp.stderr)
    assert re.search(r"export: checking the graph .*: done in \d+ s", exp.stderr)


def test_progress_lines_and_terminal_bar() -> None:
    log = io.StringIO()
    with Progress(10, "work", stream=log, interval_s=3600) as bar:
        for _ in range(10):
            bar.update()
    lines = log.getvalue().splitlines()
    assert lines[0] == "work: 0/10 images" and re.fullmatch(r"work: 10/10 images \(100%\) in \d+ s", lines[1])
    assert len(lines) == 2  # nothing between start and end inside the interval

    log = io.StringIO()
    bar = Progress(4, "step", unit="steps", stream=log, interval_s=0)
    bar.set_postfix(loss="0.5")
    bar.update(2)
    assert re.search(r"step: 2/4 steps \(50%\), [0-9.]+ steps/s, about \d+ s left, loss=0.5$", log.getvalue())
    bar.close()
    bar.close()  # idempotent: one end line
    assert log.getvalue().count("in ") == 1

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    with Progress(3, "bar", stream=tty, interval_s=0) as bar:
        bar.update(3)
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()  # tqdm redraws in place

    quiet = io.StringIO()
    with Progress(3, "off", stream=quiet, enabled=False) as bar:
        bar.update(3)
    with phase("silent", stream=quiet, enabled=False):
        pass
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("value", ["junk", "-1"])
def test_a_bad_interval_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(INTERVAL_ENV, value)
    assert Progress(1, "x", stream=io.StringIO()).interval_s == 5.0
