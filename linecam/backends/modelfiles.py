"""Files the backends add to or read from a model directory, checked against the model card's sha256.

The model directory (``linecam.grdnet.modeldir``) is the unit of trust: a file whose hash does not match
``card.json`` is refused. The torch backends get that from ``load_model_dir``; the ONNX-based backends only
need the card and ``model.onnx``, so they check that one file here without loading the torch weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ONNX_NAME = "model.onnx"
ONNX_FP16_NAME = "model.fp16.onnx"
GOLDEN_DIR = "golden"


def read_card(model_dir: Path) -> tuple[Any, str]:
    """Read ``card.json`` of ``model_dir`` (no weights) -> (ModelCard, "name/version")."""
    from linecam.backends.torch_common import model_version_of
    from linecam.grdnet.modeldir import read_card as read_model_card

    card = read_model_card(model_dir)
    return card, model_version_of(card)


def verified_file(model_dir: Path, card: Any, name: str, hint: str = "") -> Path:
    """Path of ``model_dir/name`` after checking it exists, is listed in the card and matches its sha256.

    Raises ``ModelDirError`` naming the file otherwise: a stale or tampered engine input must never load.
    """
    from linecam.grdnet.modeldir import ModelDirError, file_sha256

    path = Path(model_dir) / name
    suffix = f" ({hint})" if hint else ""
    if not path.is_file():
        raise ModelDirError(f"{path} does not exist{suffix}")
    expected = dict(card.files).get(name)
    if expected is None:
        raise ModelDirError(f"{path} is not listed in {Path(model_dir) / 'card.json'} files{suffix}")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelDirError(
            f"{path}: sha256 {actual} does not match the model card ({expected}); the file was modified "
            "or corrupted, refusing to load it"
        )
    return path


def read_golden_images(model_dir: Path, files: Sequence[str] | None = None) -> list[np.ndarray]:
    """Golden images of a model directory as (H, W, C) uint8 RGB(a)/gray arrays: the listed ``files`` (relative
    to ``model_dir``, in that order) or every ``golden/*.png``. The one reader of golden images: the export's
    parity check and the loader's golden check see the same pixels. An unreadable or non-8-bit file is a
    ValueError naming it, never a skip."""
    import cv2

    if files is None:
        folder = Path(model_dir) / GOLDEN_DIR
        paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    else:
        paths = [Path(model_dir) / f for f in files]
    out = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"{path}: cannot read golden image")
        if img.dtype != np.uint8:
            raise ValueError(f"{path}: golden images must be 8-bit, got {img.dtype}")
        if img.ndim == 2:
            img = img[..., None]
        elif img.shape[-1] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.shape[-1] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        out.append(np.ascontiguousarray(img))
    return out
