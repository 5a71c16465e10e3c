"""Model directory persistence: ``weights.pt`` + ``card.json`` with a sha256 for every file.

Layout of ``model/<name>/<version>/``: ``weights.pt`` (state dict of GRDNet = generator + U-Net; the
adversarial discriminator only lives in training checkpoints), ``card.json`` (``ModelCard``) and any extra
files (``model.onnx``, reports). The card lists the sha256 of every other file; loading refuses a directory
whose files do not match (DESIGN: "files whose hash does not match the card are refused"), naming the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from linecam.files import atomic_write
from linecam.grdnet.profiles import ModelProfile

if TYPE_CHECKING:  # torch loads only where weights are read or written: the card alone is read by light tools
    import torch

    from linecam.grdnet.model import GRDNet

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"


class ModelDirError(RuntimeError):
    """A model directory is missing a file, has a file whose hash does not match the card, or is unreadable."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class GoldenImage(pydantic.BaseModel):
    """One golden image of a published version: its file, its sha256 and the fp32 score recorded at publish."""

    file: str
    sha256: str
    score: float | None = None


class GoldenSet(pydantic.BaseModel):
    """The golden images a loader re-scores before a version may serve, and the score difference it accepts."""

    images: list[GoldenImage]
    tolerance: float = 0.02
    recorded_with: str = ""
    #: scores of the INT8 graph per backend, recorded at publish where its quality gate passed and the backend
    #: was installed: an INT8 detector is checked against its own behaviour, not against fp32 (they differ by
    #: up to a tenth on single images while ranking the same).
    int8_scores: dict[str, list[float]] = pydantic.Field(default_factory=dict)


class ModelCard(pydantic.BaseModel, extra="allow"):
    """What a model directory holds and how it was made (``extra="allow"``: tools may add fields).

    ``golden`` and ``published`` are set by publishing (a published version's golden images and its publish
    record); a working model directory has neither.
    """

    name: str
    version: str
    profile: ModelProfile
    input_size: tuple[int, int]
    channels: int = 3
    normalization: dict[str, Any] = pydantic.Field(default_factory=lambda: {"scale": 1 / 255})
    roi_variant: str
    threshold: float | None = None
    metrics: dict[str, Any] = pydantic.Field(default_factory=dict)
    training: dict[str, Any] = pydantic.Field(default_factory=dict)
    command: str = ""
    created: str = pydantic.Field(default_factory=_now_iso)
    files: dict[str, str] = pydantic.Field(default_factory=dict)  # file name -> sha256 (hex)
    golden: GoldenSet | None = None
    published: dict[str, Any] | None = None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name == CARD_FILE:
        raise ModelDirError(f"invalid model directory file name {name!r}")


def published_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``published`` record of the card in ``path`` (when, from where, by whom), or None when the folder is
    not a published registry version (or has no readable card)."""
    try:
        raw = json.loads((Path(path) / CARD_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("published") is None:
        return None
    record = raw["published"]
    return record if isinstance(record, dict) else {"value": record}


def write_card(path: str | os.PathLike[str], card: ModelCard) -> None:
    """Write ``card.json`` (pretty JSON, stable key order).

    Refuses to rewrite the card of a published registry version, whatever the file permissions say (root
    ignores them): the line reads its threshold from there, and a published version must stay the bytes that
    were checked and promoted. Calibrate or evaluate a working copy and publish it as a new version instead.
    """
    if published_record(path) is not None:
        raise ModelDirError(f"{Path(path) / CARD_FILE}: {Path(path)} is a published model version and is never "
                            "rewritten; write into a working copy of the model directory and publish it as a "
                            "new version")
    unset = {name for name in ("golden", "published") if getattr(card, name) is None}  # working dirs: absent
    text = json.dumps(card.model_dump(mode="json", exclude=unset), indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path) / CARD_FILE, text.encode(), durable=True)


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate ``card.json``; errors name the file."""
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        raise ModelDirError(f"{card_path}: missing model card")
    try:
        return ModelCard.model_validate_json(card_path.read_bytes())
    except pydantic.ValidationError as exc:
        raise ModelDirError(f"{card_path}: invalid model card: {exc}") from exc


def save_model_dir(
    path: str | os.PathLike[str],
    model: GRDNet,
    card: ModelCard,
    extra_files: dict[str, bytes] | None = None,
) -> ModelCard:
    """Write weights.pt, the extra files and card.json (with every file's sha256); return the written card.

    The card's profile must be the model's profile: a card that rebuilds a different network than the one
    whose weights are stored would only fail at load time.
    """
    out = Path(path)
    if card.profile != model.profile:
        raise ModelDirError(f"{out / CARD_FILE}: card profile {card.profile.name!r} differs from the model's profile")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    buf = io.BytesIO()
    import torch

    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    blobs = {WEIGHTS_FILE: buf.getvalue()}
    for name, data in (extra_files or {}).items():
        _check_name(name)
        if name == WEIGHTS_FILE:
            raise ModelDirError(f"extra file {name!r} would overwrite the weights")
        blobs[name] = data
    for name, data in blobs.items():
        atomic_write(out / name, data, durable=True)
        files[name] = hashlib.sha256(data).hexdigest()
    written = card.model_copy(update={"files": files})
    write_card(out, written)
    return written


def register_file(path: str | os.PathLike[str], name: str) -> ModelCard:
    """Add (or refresh) the sha256 of a file already written into the model directory, e.g. ``model.onnx``."""
    _check_name(name)
    d = Path(path)
    target = d / name
    if not target.is_file():
        raise ModelDirError(f"{target}: file to register does not exist")
    card = read_card(d)
    files = dict(card.files)
    files[name] = file_sha256(target)
    card = card.model_copy(update={"files": files})
    write_card(d, card)
    return card


def verify_model_dir(path: str | os.PathLike[str], card: ModelCard | None = None) -> ModelCard:
    """Check every file listed in the card exists and matches its sha256; raise ModelDirError naming the file."""
    d = Path(path)
    card = read_card(d) if card is None else card
    if WEIGHTS_FILE not in card.files:
        raise ModelDirError(f"{d / CARD_FILE}: the card lists no {WEIGHTS_FILE}")
    for name, digest in card.files.items():
        _check_name(name)
        f = d / name
        if not f.is_file():
            raise ModelDirError(f"{f}: missing (listed in {CARD_FILE})")
        actual = file_sha256(f)
        if actual != digest:
            raise ModelDirError(f"{f}: sha256 mismatch (card {digest[:12]}..., file {actual[:12]}...); refused")
    return card


def load_model_dir(
    path: str | os.PathLike[str],
    verify: bool = True,
    map_location: str | torch.device = "cpu",
) -> tuple[GRDNet, ModelCard]:
    """Rebuild the GRDNet from the card's profile, load weights.pt, return (model in eval mode, card)."""
    import torch

    from linecam.grdnet.model import build_grdnet

    d = Path(path)
    card = read_card(d)
    if verify:
        verify_model_dir(d, card)
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{weights}: missing")
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise ModelDirError(f"{weights}: cannot be read: {exc}") from exc
    model = build_grdnet(card.profile)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise ModelDirError(f"{weights}: does not fit profile {card.profile.name!r}: {exc}") from exc
    model.to(map_location)
    model.eval()
    return model, card
