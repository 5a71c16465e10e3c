"""Files the backends add to or read from a model directory, checked against the model card's sha256.

The model directory (``linecam.grdnet.modeldir``) is the unit of trust: a file whose hash does not match
``card.json`` is refused. The torch backends get that from ``load_model_dir``; the ONNX-based backends only
need the card and ``model.onnx``, so they check that one file here without loading the torch weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
