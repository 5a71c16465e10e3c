"""A checkpoint can carry no code: every load is weights-only, and --init-from checks the hash the card recorded.

Before, ``linecam train --init-from DIR`` unpickled ``DIR/training/checkpoint_last.pt`` in full, and that file
was not hashed in the card: a crafted checkpoint ran code.
"""

from __future__ import annotations

import pathlib
import shutil
from pathlib import Path

import pytest
import torch

from linecam.grdnet.modeldir import read_card
from linecam.grdnet.train import CHECKPOINT_LAST, TRAINING_SUBDIR, TrainConfig, Trainer, TrainError, run_training
from tests.grdnet.builders import TINY, make_vial_dataset


class _RunsCode:
    """Unpickling this calls Path.touch: the side effect a crafted checkpoint could have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {"data": data, "out": out, "profile": "fast", "profile_overrides": TINY,
                               "batch_size": 4, "epochs": 1, "max_steps_per_epoch": 2, "seed": 3, "progress": False,
                               "rotation": 0.0, "precision": "fp32"}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    data = make_vial_dataset(root / "vials")
    out = run_training(_cfg(data, root / "model"))
    assert out is not None
    return data, out


def test_the_card_records_the_checkpoint_hash_and_resume_reads_it_weights_only(trained: tuple[Path, Path]) -> None:
    data, model = trained
    card = read_card(model)
    assert len(card.training["checkpoint_last_sha256"]) == 64
    torch.load(model / TRAINING_SUBDIR / CHECKPOINT_LAST, weights_only=True)  # plain tensors and containers only
    again = Trainer(_cfg(data, model, epochs=2))
    assert again.resume() == 1  # RNG states included


def test_init_from_refuses_a_checkpoint_that_would_run_code(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    crafted = shutil.copytree(model, tmp_path / "crafted")
    marker = tmp_path / "code-ran"
    torch.save({"format": "linecam-grdnet-checkpoint", "discriminator": _RunsCode(marker)},
               crafted / TRAINING_SUBDIR / CHECKPOINT_LAST)
    card = read_card(crafted)
    training = {k: v for k, v in card.training.items() if k != "checkpoint_last_sha256"}  # no hash to catch it
    (crafted / "card.json").write_text(card.model_copy(update={"training": training}).model_dump_json())
    with pytest.raises(TrainError, match="cannot be read as a plain checkpoint"):
        Trainer(_cfg(data, tmp_path / "out", init_from=crafted))
    assert not marker.exists()


def test_init_from_refuses_a_checkpoint_that_differs_from_the_card(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    tampered = shutil.copytree(model, tmp_path / "tampered")
    path = tampered / TRAINING_SUBDIR / CHECKPOINT_LAST
    state = torch.load(path, weights_only=True)
    state["discriminator"] = {k: torch.zeros_like(v) for k, v in state["discriminator"].items()}
    torch.save(state, path)
    with pytest.raises(TrainError, match="sha256 differs from the one recorded in the model card"):
        Trainer(_cfg(data, tmp_path / "out", init_from=tampered))
    Trainer(_cfg(data, tmp_path / "out2", init_from=model))  # the untouched one is taken
