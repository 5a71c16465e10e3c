"""Who may change a model card: evaluation never does by default, calibration says what it changed, and nothing
rewrites a published version, even as root (which ignores the read-only file modes publishing sets)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from linecam.cli import main
from linecam.grdnet.modeldir import ModelDirError, read_card, write_card
from tests.grdnet.builders import make_vial_dataset


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def vials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vial_dataset(tmp_path_factory.mktemp("vials"))


def test_a_published_version_is_never_rewritten(published: Path, vials: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    version = published / "demo" / "1"
    before = _tree_digest(version)
    card = read_card(version)
    with pytest.raises(ModelDirError, match="published model version"):
        write_card(version, card.model_copy(update={"threshold": 0.01}))
    rc = main(["eval", "--model", str(version), "--data", str(vials), "--json", str(tmp_path / "m.json"),
               "--precision", "fp32", "--store"])
    assert rc == 2 and "published model version" in capsys.readouterr().err
    rc = main(["calibrate", "threshold", "--model", str(version), "--data", str(vials), "--target-frr", "0.0",
               "--card"])
    assert rc == 2 and "published model version" in capsys.readouterr().err
    rc = main(["export", "--model", str(version), "--no-fp16"])
    assert rc == 2 and "published model version" in capsys.readouterr().err
    rc = main(["eval", "--model", str(version), "--data", str(vials), "--json", str(tmp_path / "m.json"),
               "--precision", "fp32"])  # read-only evaluation of a published version is fine
    assert rc == 0 and "unchanged (threshold 0.5" in capsys.readouterr().out
    assert _tree_digest(version) == before
    if os.geteuid() == 0:  # the refusal does not rest on the file modes: root could have written
        assert os.access(version / "card.json", os.W_OK)


def test_calibrate_threshold_into_the_card_says_what_it_changed(source_models: tuple[Path, Path], vials: Path,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = shutil.copytree(source_models[0], tmp_path / "work")
    assert read_card(model).threshold == 0.5
    out = tmp_path / "cal"
    rc = main(["calibrate", "threshold", "--model", str(model), "--data", str(vials), "--target-frr", "0.0",
               "--card", "--out", str(out), "--model-name", "demo"])
    assert rc == 0
    new = read_card(model).threshold
    assert new is not None and new != 0.5
    text = capsys.readouterr().out
    assert f"card.json: threshold 0.5 -> {new:.6g}" in text
    assert f"regions.yaml: region product, version seed0: threshold none -> {new:.6g}" in text
    rc = main(["calibrate", "threshold", "--model", str(model), "--data", str(vials), "--target-frr", "0.0",
               "--out", str(out), "--model-name", "demo"])
    assert rc == 0 and f"threshold {new:.6g} -> {new:.6g}" in capsys.readouterr().out
    assert main(["calibrate", "threshold", "--model", str(model), "--data", str(vials), "--target-frr", "0.0"]) == 2
    assert "nothing to write" in capsys.readouterr().err
