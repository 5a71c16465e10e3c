"""Fixtures of the lifecycle tests: tiny random-init model directories and a published registry.

Models are the ``fast`` profile at 32 px (random weights): publishing one (copy, ONNX export, golden
scores) takes a few seconds on two shared cores. Registries are session-scoped where tests only read them;
tests that change a registry copy it first (:func:`copy_registry`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SIZE = 32


def build_model_dir(path: Path, seed: int = 0, threshold: float = 0.5, size: int = SIZE) -> Path:
    """A random-init ``fast`` GRD-Net model directory (weights.pt + card.json)."""
    import torch

    from linecam.grdnet.model import build_grdnet
    from linecam.grdnet.modeldir import ModelCard, save_model_dir
    from linecam.grdnet.profiles import get_profile

    torch.manual_seed(seed)
    profile = get_profile("fast", image_size=size)
    model = build_grdnet(profile).eval()
    card = ModelCard(name="trained", version=f"seed{seed}", profile=profile, input_size=(size, size),
                     roi_variant="learned_silence", threshold=threshold, command="linecam train (test)")
    save_model_dir(path, model, card)
    return path


def copy_registry(src: Path, dst: Path) -> Path:
    """Copy a registry tree (published folders are read-only; copies keep the modes)."""
    shutil.copytree(src, dst)
    return dst


def make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.fixture(scope="session")
def source_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two trained-model folders (different seeds)."""
    base = tmp_path_factory.mktemp("src")
    return build_model_dir(base / "a", seed=0), build_model_dir(base / "b", seed=1, threshold=0.6)


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory, source_models: tuple[Path, Path]) -> Path:
    """Registry root with ``demo/1`` (CURRENT) and ``demo/2`` published (fp32 ONNX only). Read only: copy it."""
    from linecam.lifecycle.registry import publish

    root = tmp_path_factory.mktemp("registry")
    publish(source_models[0], root, "demo", fp16=False, command="test publish 1")
    publish(source_models[1], root, "demo", fp16=False, command="test publish 2")
    return root
