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
#: the INT8 (quantize-dequantize) graph; listed in the card only after it passed the INT8 quality gate.
ONNX_INT8_NAME = "model.int8.onnx"
GOLDEN_DIR = "golden"
#: per-machine files derived from a model (TensorRT plans, the ``auto`` trial) live beside its folder, never in it:
#: a published version folder is immutable and the same on every machine, these are not.
CACHE_DIR = ".engines"


def model_cache_dir(model_dir: Path) -> Path:
    """``<model_dir>/../.engines/<model_dir name>/``: where this machine's files for that model go."""
    model_dir = Path(model_dir).resolve()
    return model_dir.parent / CACHE_DIR / model_dir.name


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


def int8_refusal(card: Any, backend: str) -> str | None:
    """Why ``backend`` must not run the card's INT8 graph (None when its quality gate passed on that backend)."""
    record = getattr(card, "int8", None)
    if not isinstance(record, dict):
        return "the card records no INT8 quality gate (run `linecam quantize`)"
    gates = record.get("gates") or {}
    gate = gates.get(backend)
    if not isinstance(gate, dict):
        return f"the INT8 quality gate was not run on {backend} (run on: {', '.join(sorted(gates)) or 'none'})"
    if not gate.get("passed"):
        return f"the INT8 graph failed its quality gate on {backend}: {'; '.join(gate.get('why') or ['failed'])}"
    return None


def onnx_for_precision(model_dir: Path, card: Any, precision: str, backend: str) -> Path:
    """The verified ONNX file ``backend`` runs for ``precision``: ``model.int8.onnx`` for int8, only where its
    quality gate passed on that backend (:mod:`linecam.backends.quantize`), else ``model.onnx`` (the fp32 graph;
    a bf16 run is a compile-time choice of the backend)."""
    if precision == "int8":
        from linecam.grdnet.modeldir import ModelDirError

        path = Path(model_dir) / ONNX_INT8_NAME
        refusal = int8_refusal(card, backend) if path.is_file() else None
        if refusal is not None:
            raise ModelDirError(f"{path}: not used by {backend}: {refusal}")
        return verified_file(model_dir, card, ONNX_INT8_NAME,
                             hint=f"run `linecam quantize --model {model_dir} --data DATASET`; the INT8 graph is "
                                  "listed only when it passed the quality gate")
    return verified_file(model_dir, card, ONNX_NAME, hint=f"run `linecam export --model {model_dir}` first")


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
