"""Model directory: round trip on real files, sha256 refusal naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from linecam.grdnet.model import build_grdnet
from linecam.grdnet.modeldir import (
    ModelCard,
    ModelDirError,
    file_sha256,
    load_model_dir,
    register_file,
    save_model_dir,
)
from linecam.grdnet.profiles import ModelProfile, get_profile


def small_profile() -> ModelProfile:
    return get_profile(
        "fast", image_size=64, gen_widths=(8, 16), disc_widths=(8,), unet_widths=(8, 16), latent_channels=4
    )


def make_card(profile: ModelProfile) -> ModelCard:
    return ModelCard(
        name="vials",
        version="1",
        profile=profile,
        input_size=(64, 64),
        roi_variant="learned_silence",
        threshold=0.42,
        metrics={"image_auroc": 0.99},
        training={"epochs": 1},
        command="linecam train ...",
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    profile = small_profile()
    model = build_grdnet(profile)
    # move the BatchNorm running statistics away from their defaults so they must be saved too
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))
    model.eval()
    d = tmp_path / "model" / "vials" / "1"
    save_model_dir(d, model, make_card(profile), extra_files={"notes.txt": b"hello"})
    return d, model


def test_round_trip_identical_outputs(saved: tuple[Path, torch.nn.Module]) -> None:
    d, model = saved
    loaded, card = load_model_dir(d)
    assert not loaded.training
    assert card.profile == model.profile and card.threshold == 0.42 and card.input_size == (64, 64)
    assert card.normalization == {"scale": 1 / 255}
    assert set(card.files) == {"weights.pt", "notes.txt"}
    assert card.files["weights.pt"] == file_sha256(d / "weights.pt")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    on_disk = json.loads((d / "card.json").read_text())
    assert on_disk["profile"]["gen_widths"] == [8, 16]


def test_tampered_weights_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    d, _ = saved
    data = bytearray((d / "weights.pt").read_bytes())
    data[-100] ^= 0xFF
    (d / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="weights.pt"):
        load_model_dir(d)


def test_missing_and_tampered_extra_file(saved: tuple[Path, torch.nn.Module]) -> None:
    d, _ = saved
    (d / "notes.txt").write_bytes(b"hellO")
    with pytest.raises(ModelDirError, match="notes.txt.*sha256"):
        load_model_dir(d)
    (d / "notes.txt").unlink()
    with pytest.raises(ModelDirError, match="notes.txt.*missing"):
        load_model_dir(d)
    # verify=False skips the hashes (e.g. for forensics) but still loads the weights
    model, _ = load_model_dir(d, verify=False)
    assert model.profile == small_profile()


def test_register_file_and_missing_card(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    d, _ = saved
    (d / "model.onnx").write_bytes(b"onnx bytes")
    card = register_file(d, "model.onnx")
    assert card.files["model.onnx"] == file_sha256(d / "model.onnx")
    load_model_dir(d)
    with pytest.raises(ModelDirError, match="card.json"):
        load_model_dir(tmp_path / "nowhere")


def test_card_with_unknown_profile_field_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    d, _ = saved
    card = json.loads((d / "card.json").read_text())
    card["profile"]["depth"] = 7
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match="card.json"):
        load_model_dir(d)


def test_weights_of_another_profile_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    d, _ = saved
    other = get_profile(
        "fast", image_size=64, gen_widths=(8, 8), disc_widths=(8,), unet_widths=(8, 16), latent_channels=4
    )
    torch.save(build_grdnet(other).state_dict(), d / "weights.pt")
    card = json.loads((d / "card.json").read_text())
    card["files"]["weights.pt"] = file_sha256(d / "weights.pt")
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match="weights.pt.*does not fit"):
        load_model_dir(d)


def test_save_refuses_mismatched_card(tmp_path: Path) -> None:
    model = build_grdnet(small_profile())
    with pytest.raises(ModelDirError, match="profile"):
        save_model_dir(tmp_path, model, make_card(get_profile("fast")))


def test_the_shipped_demo_model_is_the_fast_profile_and_loads() -> None:
    """The README and the profile docstring quote the demo model's figures as the ``fast`` profile's."""
    demo = Path(__file__).resolve().parents[2] / "model" / "demo"
    model, card = load_model_dir(demo)  # hash-checked against its card
    assert card.profile == get_profile("fast")
    assert card.profile.unet_stem() == 1  # the U-Net sees the full resolution
    with torch.no_grad():
        prob = model(torch.full((1, 3, 256, 256), 0.5))
    assert prob.shape == (1, 1, 256, 256) and 0.0 <= float(prob.min()) <= float(prob.max()) <= 1.0
