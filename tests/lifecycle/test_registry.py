"""Publishing and the registry on real files: immutability, hashes, golden scores, pointer moves, CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from linecam.cli import main
from linecam.grdnet.modeldir import file_sha256, read_card
from linecam.lifecycle import registry as reg

from .conftest import copy_registry, make_writable


def test_publish_writes_an_immutable_verified_version(published: Path, source_models: tuple[Path, Path]) -> None:
    demo = published / "demo"
    assert reg.list_version_names(demo) == ["1", "2"]
    assert reg.read_current(demo) == "1"  # the first publish becomes current; later ones need a promote
    v1 = demo / "1"
    card = read_card(v1)
    assert (card.name, card.version) == ("demo", "1")
    assert card.command == "test publish 1"
    assert set(card.files) == {"weights.pt", "model.onnx"}
    for name, digest in card.files.items():
        assert file_sha256(v1 / name) == digest
        assert not os.stat(v1 / name).st_mode & stat.S_IWUSR  # read-only
    assert file_sha256(v1 / "weights.pt") == file_sha256(source_models[0] / "weights.pt")
    assert not os.stat(v1).st_mode & stat.S_IWUSR
    golden = reg.golden_entries(card)
    assert len(golden) == 4 and all(g.score is not None and np.isfinite(g.score) for g in golden)
    images, recorded = reg.read_golden(v1, card)
    assert images.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(reg.reference_scores(v1, list(images)), recorded, atol=1e-6)
    assert card.published is not None and card.published["source_command"] == "linecam train (test)"
    assert not [p for p in demo.iterdir() if p.name.startswith(".staging")]


def test_existing_version_is_never_overwritten(published: Path, source_models: tuple[Path, Path]) -> None:
    before = file_sha256(published / "demo" / "1" / "card.json")
    with pytest.raises(reg.RegistryError, match="already exists"):
        reg.publish(source_models[1], published, "demo", version="1", fp16=False)
    assert file_sha256(published / "demo" / "1" / "card.json") == before


def test_promote_rollback_and_history(tmp_path: Path, published: Path) -> None:
    demo = copy_registry(published, tmp_path / "r") / "demo"
    assert reg.set_current(demo, "2") == "1"
    assert reg.current_dir(demo) == demo / "2"
    assert reg.rollback(demo) == ("2", "1")
    assert reg.read_current(demo) == "1"
    actions = [(h["action"], h["version"], h["previous"]) for h in reg.read_history(demo)]
    assert actions == [("first-publish", "1", None), ("promote", "2", "1"), ("rollback", "1", "2")]
    with pytest.raises(reg.RegistryError, match="no such published version"):
        reg.set_current(demo, "7")


def test_tampered_version_cannot_be_promoted(tmp_path: Path, published: Path) -> None:
    demo = copy_registry(published, tmp_path / "r") / "demo"
    make_writable(demo / "2")
    with open(demo / "2" / "weights.pt", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(Exception, match=r"weights.pt.*sha256 mismatch"):
        reg.set_current(demo, "2")
    assert reg.read_current(demo) == "1"
    (demo / "2" / "golden" / "001.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match="sha256"):
        reg.verify_version(demo / "2")


def test_publish_refuses_a_model_with_bad_hashes(tmp_path: Path, source_models: tuple[Path, Path]) -> None:
    import shutil

    src = tmp_path / "m"
    shutil.copytree(source_models[0], src)
    with open(src / "weights.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(reg.RegistryError, match="weights.pt"):
        reg.publish(src, tmp_path / "reg", "demo", fp16=False)
    assert not (tmp_path / "reg" / "demo" / "1").exists()


def test_models_cli(tmp_path: Path, published: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_registry(published, tmp_path / "r")
    assert main(["models", "--registry", str(root), "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("* demo/1") and out[1].startswith("  demo/2")
    assert main(["models", "--registry", str(root), "promote", "demo", "2"]) == 0
    assert (root / "demo" / "CURRENT").read_text() == "2\n"
    capsys.readouterr()
    assert main(["models", "--registry", str(root), "show", "demo"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "2" and shown["verified"] is True
    assert main(["models", "--registry", str(root), "rollback", "demo"]) == 0
    assert (root / "demo" / "CURRENT").read_text() == "1\n"
    assert main(["models", "--registry", str(root), "promote", "demo", "../x"]) == 2
    assert "invalid version name" in capsys.readouterr().err


def test_publish_cli_records_its_command(tmp_path: Path, source_models: tuple[Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "model"
    rc = main(["publish", str(source_models[0]), "--name", "cam", "--registry", str(root), "--version", "2026.1",
               "--no-fp16", "--promote"])
    assert rc == 0, capsys.readouterr().err
    card = read_card(root / "cam" / "2026.1")
    assert card.command.startswith("linecam ") and reg.read_current(root / "cam") == "2026.1"
