"""The model store's read side: published versions under ``model/<name>/<version>/``, the CURRENT pointer,
and the checks a loader runs on a version (every file's sha256, the golden images and their recorded scores).

Why a layer of its own: the line config resolves registry references, the worker watches CURRENT and checks a
candidate before swapping it in, and ``linecam models`` lists and shows versions; all of them only read. Writing
(publish, promote, rollback) is an offline act and lives in :mod:`linecam.lifecycle.registry`. The model
directory format itself (card, weights, hashes) is :mod:`linecam.grdnet.modeldir`; golden files are named in
:mod:`linecam.backends.modelfiles`. Nothing heavier than the card's schema loads at import time: the line
config reads it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linecam.backends.modelfiles import GOLDEN_DIR, read_golden_images
from linecam.grdnet.modeldir import CARD_FILE, GoldenImage, ModelCard

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY.jsonl"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: default |score difference| allowed between the card's golden scores and a loaded backend's scores.
#: bf16 on CPU and fp16 on GPU move scores by a few 1e-3 on the tiny test models; 0.02 leaves margin
#: while still catching a wrong or corrupted network (those move scores by tenths).
DEFAULT_GOLDEN_TOLERANCE = 0.02

__all__ = [
    "CURRENT_FILE", "DEFAULT_GOLDEN_TOLERANCE", "GOLDEN_DIR", "HISTORY_FILE", "RegistryError", "VersionInfo",
    "check_version_name", "current_dir", "expected_golden", "golden_entries", "golden_tolerance",
    "list_version_names", "list_versions", "next_version", "read_current", "read_golden", "read_history",
    "reference_scores", "resolve_version", "show", "verify_version",
]


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message names the folder, file or version."""


@dataclass(frozen=True)
class VersionInfo:
    """One published version as ``linecam models list`` shows it."""

    name: str
    version: str
    path: Path
    created: str
    threshold: float | None
    current: bool


def check_version_name(version: str) -> str:
    """Refuse names that could escape the folder or collide with registry files."""
    if not VERSION_PATTERN.match(version) or version in (CURRENT_FILE, HISTORY_FILE):
        raise RegistryError(f"invalid version name {version!r}: use letters, digits, '.', '_', '-' "
                            "(not starting with '.' or '-', at most 64 characters)")
    return version


def list_version_names(registry: str | Path) -> list[str]:
    """Published versions of one model (hidden staging/engine folders excluded), numeric ones in order."""
    root = Path(registry)
    if not root.is_dir():
        raise RegistryError(f"{root}: model registry folder not found")
    names = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
             and (p / CARD_FILE).is_file()]

    def key(v: str) -> tuple[int, int, str]:
        return (0, int(v), "") if v.isdigit() else (1, 0, v)

    return sorted(names, key=key)


def next_version(registry: str | Path) -> str:
    """One more than the largest numeric version (``1`` for an empty registry)."""
    root = Path(registry)
    numbers = [int(v) for v in list_version_names(root) if v.isdigit()] if root.is_dir() else []
    return str(max(numbers, default=0) + 1)


def read_current(registry: str | Path) -> str | None:
    """The version CURRENT points at, or None when nothing was promoted yet."""
    path = Path(registry) / CURRENT_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the pointer ({exc})") from None
    if not text:
        raise RegistryError(f"{path}: pointer file is empty")
    return check_version_name(text)


def current_dir(registry: str | Path) -> Path:
    """The folder of the version CURRENT points at; RegistryError if none or if it does not exist."""
    root = Path(registry)
    version = read_current(root)
    if version is None:
        raise RegistryError(f"{root / CURRENT_FILE}: no current version (run `linecam models promote`)")
    path = root / version
    if not (path / CARD_FILE).is_file():
        raise RegistryError(f"{root / CURRENT_FILE}: points at {version!r}, which is not a published version")
    return path


def read_history(registry: str | Path) -> list[dict[str, Any]]:
    """Every pointer move, oldest first."""
    path = Path(registry) / HISTORY_FILE
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise RegistryError(f"{path}: line {i + 1} is not JSON") from None
    return out


def list_versions(registry: str | Path) -> list[VersionInfo]:
    """Every published version with its creation date, threshold and whether it is current."""
    from linecam.grdnet.modeldir import read_card

    root = Path(registry)
    current = read_current(root)
    out = []
    for v in list_version_names(root):
        card = read_card(root / v)
        out.append(VersionInfo(card.name or root.name, v, root / v, card.created, card.threshold, v == current))
    return out


def golden_entries(card: ModelCard) -> list[GoldenImage]:
    """The card's golden images, [] when the card has none."""
    return list(card.golden.images) if card.golden is not None else []


def golden_tolerance(card: ModelCard) -> float:
    """The |score| difference the card's golden check accepts."""
    return card.golden.tolerance if card.golden is not None else DEFAULT_GOLDEN_TOLERANCE


def verify_version(path: str | Path) -> ModelCard:
    """Check every file of the card and every golden image against its sha256 -> the card.

    Raises ``ModelDirError`` (from the model-dir check) or RegistryError, naming the file.
    """
    from linecam.grdnet.modeldir import file_sha256, verify_model_dir

    d = Path(path)
    card = verify_model_dir(d)
    for entry in golden_entries(card):
        f = d / entry.file
        if not f.is_file():
            raise RegistryError(f"{f}: golden image listed in the card is missing")
        if file_sha256(f) != entry.sha256:
            raise RegistryError(f"{f}: sha256 mismatch with the card; refused")
    return card


def read_golden(path: str | Path, card: ModelCard) -> tuple[Any, Any]:
    """(images uint8 (N,H,W,3), recorded scores float64 (N,)) of a version's golden set."""
    import numpy as np

    entries = golden_entries(card)
    if not entries or any(e.score is None for e in entries):
        raise RegistryError(f"{Path(path) / CARD_FILE}: the card records no golden images with scores")
    images = np.stack(read_golden_images(Path(path), [e.file for e in entries]))
    scores = np.array([float(e.score) for e in entries], dtype=np.float64)  # type: ignore[arg-type]
    return images, scores


def expected_golden(card: ModelCard, recorded: Any, backend: str, precision: str) -> tuple[Any, float, str]:
    """(scores a detector of ``backend`` at ``precision`` must reproduce, extra tolerance, what they are).

    fp32 and bf16 detectors reproduce the fp32 scores recorded at publish. An INT8 detector reproduces the INT8
    scores recorded for its backend; where none were recorded (the backend was not installed at publish), the
    fp32 scores with the largest difference the INT8 quality gate measured on the test split added.
    """
    import numpy as np

    if precision != "int8":
        return recorded, 0.0, "fp32 scores"
    by_backend = card.golden.int8_scores if card.golden is not None else {}
    if backend in by_backend and len(by_backend[backend]) == len(recorded):
        return np.asarray(by_backend[backend], dtype=np.float64), 0.0, f"{backend} int8 scores"
    gate = ((getattr(card, "int8", None) or {}).get("gates") or {}).get(backend) or {}
    return recorded, float(gate.get("max_abs_score_diff", 0.0)), "fp32 scores (+ the INT8 gate's largest difference)"


def reference_scores(model_dir: Path, images: Any) -> Any:
    """PyTorch fp32 eager scores of uint8 RGB images: what the card records and loaders compare with."""
    import numpy as np
    import torch

    from linecam.backends.graph import InferenceGraph
    from linecam.grdnet.modeldir import load_model_dir

    model, card = load_model_dir(model_dir, verify=True)
    graph = InferenceGraph(model.float(), (int(card.input_size[0]), int(card.input_size[1]))).eval()
    with torch.inference_mode():
        scores, _ = graph(torch.from_numpy(np.ascontiguousarray(np.stack(images))))
    return scores.double().numpy()


def show(path: str | Path) -> dict[str, Any]:
    """The card of a version (as JSON data) plus whether its files verify."""
    from linecam.grdnet.modeldir import ModelDirError, read_card

    d = Path(path)
    if not (d / CARD_FILE).is_file():
        raise RegistryError(f"{d}: not a published version (no card.json)")
    try:
        data: dict[str, Any] = read_card(d).model_dump(mode="json", exclude_none=True)
    except ModelDirError as exc:
        raise RegistryError(str(exc)) from None
    try:
        verify_version(d)
        data["verified"] = True
    except Exception as exc:  # report, do not raise: `show` is how a person finds out what is wrong
        data["verified"] = False
        data["verify_error"] = str(exc)
    from linecam.modelstore.signing import SignatureError, read_signature

    try:
        record = read_signature(d)
        data["signature"] = ({"key_id": record["key_id"], "signed": record.get("signed")} if record is not None
                             else None)
    except SignatureError as exc:
        data["signature"] = {"error": str(exc)}
    return data


def resolve_version(registry: str | Path, version: str | None) -> Path:
    """``version`` of the registry, or the current one when None."""
    root = Path(registry)
    if version is None:
        return current_dir(root)
    path = root / check_version_name(version)
    if not (path / CARD_FILE).is_file():
        raise RegistryError(f"{path}: no such published version; versions: {list_version_names(root)}")
    return path
