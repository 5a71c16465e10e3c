"""The model registry: immutable published versions under ``model/<name>/<version>/`` and a CURRENT pointer.

Why this shape: a line must always know exactly which bytes made a verdict. A published version folder is
written once (staged under a hidden name, then renamed into place), its files and folder are made
read-only, and its card lists the sha256 of every file plus golden images with the scores they produced at
publish time, so a loader can check both the bytes and the behaviour. Which version the line runs is a
separate one-line file ``model/<name>/CURRENT`` replaced atomically (write + rename), so a watcher never
reads half a pointer; every pointer move is appended to ``HISTORY.jsonl`` so ``rollback`` knows where to go.

This module imports nothing heavy at import time: the line config resolves registry references through it.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY.jsonl"
GOLDEN_DIR = "golden"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: default |score difference| allowed between the card's golden scores and a loaded backend's scores.
#: bf16 on CPU and fp16 on GPU move scores by a few 1e-3 on the tiny test models; 0.02 leaves margin
#: while still catching a wrong or corrupted network (those move scores by tenths).
DEFAULT_GOLDEN_TOLERANCE = 0.02
DEFAULT_GOLDEN_COUNT = 4


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


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
             and (p / "card.json").is_file()]

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
    if not (path / "card.json").is_file():
        raise RegistryError(f"{root / CURRENT_FILE}: points at {version!r}, which is not a published version")
    return path


def _append_history(registry: Path, record: dict[str, Any]) -> None:
    with open(registry / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


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


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def set_current(registry: str | Path, version: str, action: str = "promote", verify: bool = True) -> str | None:
    """Point CURRENT at ``version`` (verified first) atomically; returns the previous version."""
    root = Path(registry)
    check_version_name(version)
    target = root / version
    if not (target / "card.json").is_file():
        raise RegistryError(f"{target}: no such published version; versions: {list_version_names(root)}")
    if verify:
        verify_version(target)
    previous = read_current(root)
    tmp = root / f".{CURRENT_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT_FILE)
    _append_history(root, {"time": _now_iso(), "action": action, "version": version, "previous": previous,
                           "user": _user()})
    return previous


def rollback(registry: str | Path) -> tuple[str, str]:
    """Point CURRENT back at the version it pointed to before the last move -> (from, to)."""
    root = Path(registry)
    current = read_current(root)
    if current is None:
        raise RegistryError(f"{root / CURRENT_FILE}: nothing to roll back (no current version)")
    for record in reversed(read_history(root)):
        if record.get("version") == current and record.get("previous"):
            target = str(record["previous"])
            set_current(root, target, action="rollback")
            return current, target
    raise RegistryError(f"{root / HISTORY_FILE}: no earlier version recorded before {current!r}")


def list_versions(registry: str | Path) -> list[VersionInfo]:
    """Every published version with its creation date, threshold and whether it is current."""
    root = Path(registry)
    current = read_current(root)
    out = []
    for v in list_version_names(root):
        card = json.loads((root / v / "card.json").read_text(encoding="utf-8"))
        out.append(VersionInfo(str(card.get("name", root.name)), v, root / v, str(card.get("created", "")),
                               card.get("threshold"), v == current))
    return out


# ------------------------------------------------------------------------------------------ verification
def golden_entries(card: Any) -> list[dict[str, Any]]:
    """The card's golden images: [{file, sha256, score}], [] when the card has none."""
    extra = card.model_extra if hasattr(card, "model_extra") else None
    golden = (extra or {}).get("golden") if extra is not None else getattr(card, "golden", None)
    if not golden:
        return []
    images = golden.get("images")
    if not isinstance(images, list):
        raise RegistryError(f"card of {card.name}/{card.version}: golden.images must be a list")
    return images


def golden_tolerance(card: Any) -> float:
    extra = card.model_extra or {}
    return float((extra.get("golden") or {}).get("tolerance", DEFAULT_GOLDEN_TOLERANCE))


def verify_version(path: str | Path) -> Any:
    """Check every file of the card and every golden image against its sha256 -> the card (ModelCard).

    Raises ``ModelDirError`` (from the model-dir check) or RegistryError, naming the file.
    """
    from linecam.grdnet.modeldir import file_sha256, verify_model_dir

    d = Path(path)
    card = verify_model_dir(d)
    for entry in golden_entries(card):
        f = d / str(entry.get("file", ""))
        if not f.is_file():
            raise RegistryError(f"{f}: golden image listed in the card is missing")
        if file_sha256(f) != entry.get("sha256"):
            raise RegistryError(f"{f}: sha256 mismatch with the card; refused")
    return card


def read_golden(path: str | Path, card: Any) -> tuple[Any, Any]:
    """(images uint8 (N,H,W,3), recorded scores float64 (N,)) of a version's golden set."""
    import numpy as np

    from linecam.grdnet.datasets import read_rgb

    entries = golden_entries(card)
    if not entries:
        raise RegistryError(f"{Path(path) / 'card.json'}: the card records no golden images")
    images = np.stack([read_rgb(Path(path) / str(e["file"])) for e in entries])
    scores = np.array([float(e["score"]) for e in entries], dtype=np.float64)
    return images, scores


# ------------------------------------------------------------------------------------------ publishing
def _golden_from_source(source: Path | None, size: tuple[int, int], count: int) -> list[Any]:
    """RGB uint8 golden images at the model size: from a folder of images, a linecam dataset's val split
    (good and defective, alternating), or deterministic structured stand-ins when no source is given."""
    import cv2
    import numpy as np

    from linecam.grdnet.datasets import read_rgb

    h, w = size
    if source is None:
        from linecam.backends.export import structured_images

        return list(structured_images(count, (h, w), seed=1234))
    if not source.exists():
        raise RegistryError(f"{source}: golden image source not found")
    paths: list[Path]
    if source.is_dir() and (source / "val").is_dir():
        from linecam.dataset import load_index

        records = [r for r in load_index(source) if r.split == "val"]
        good = [r.path for r in records if not r.is_defect]
        bad = [r.path for r in records if r.is_defect]
        paths = [p for pair in zip(good, bad, strict=False) for p in pair][:count]
        if len(paths) < count:
            paths += [p for p in good + bad if p not in paths][: count - len(paths)]
    elif source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
        paths = paths[:count]
    else:
        paths = [source]
    if not paths:
        raise RegistryError(f"{source}: no golden images found")
    out = []
    for p in paths:
        rgb = read_rgb(p)
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(rgb))
    return out


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


def _make_read_only(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for p in sorted((q for q in folder.rglob("*") if q.is_dir()), reverse=True):
        p.chmod(0o555)
    folder.chmod(0o555)


def publish(
    model_dir: str | Path,
    registry_root: str | Path,
    name: str,
    version: str | None = None,
    golden: str | Path | None = None,
    golden_count: int = DEFAULT_GOLDEN_COUNT,
    tolerance: float = DEFAULT_GOLDEN_TOLERANCE,
    fp16: bool = True,
    command: str = "",
    promote: bool = False,
) -> Path:
    """Publish ``model_dir`` as ``<registry_root>/<name>/<version>`` and return that folder.

    Copies the weights (hash-checked), exports ``model.onnx`` when the source has none, writes golden
    images and their fp32 reference scores into the card, records the command, then renames the staged
    folder into place and makes it read-only. An existing version is never overwritten.
    """
    import cv2

    from linecam.grdnet.modeldir import (
        CARD_FILE,
        ModelCard,
        ModelDirError,
        file_sha256,
        verify_model_dir,
        write_card,
    )

    src = Path(model_dir)
    check_version_name(name)
    try:
        card = verify_model_dir(src)
    except ModelDirError as exc:
        raise RegistryError(f"cannot publish {src}: {exc}") from None
    root = Path(registry_root) / name
    root.mkdir(parents=True, exist_ok=True)
    version = check_version_name(version) if version is not None else next_version(root)
    final = root / version
    if final.exists():
        raise RegistryError(f"{final}: version already exists; published versions are never overwritten")
    stage = root / f".staging-{version}-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        for fname in card.files:
            shutil.copy2(src / fname, stage / fname)
        size = (int(card.input_size[0]), int(card.input_size[1]))
        images = _golden_from_source(Path(golden) if golden is not None else None, size, golden_count)
        (stage / GOLDEN_DIR).mkdir()
        entries: list[dict[str, Any]] = []
        for i, img in enumerate(images):
            rel = f"{GOLDEN_DIR}/{i:03d}.png"
            if not cv2.imwrite(str(stage / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise RegistryError(f"{stage / rel}: cannot write golden image")
            entries.append({"file": rel, "sha256": file_sha256(stage / rel)})
        # A re-published version starts without its source's publish record and golden set (both are new here).
        fields = {k: v for k, v in card.model_dump().items() if k not in ("published", "golden")}
        staged_card = ModelCard.model_validate({**fields, "name": name, "version": version})
        write_card(stage, staged_card)
        if "model.onnx" not in card.files:
            from linecam.backends.export import export_model_dir

            export_model_dir(stage, fp16=fp16)
        import numpy as np

        scores = reference_scores(stage, images)
        if not np.all(np.isfinite(scores)):
            raise RegistryError(f"{src}: golden scores are not finite ({scores.tolist()}); refusing to publish "
                                "a model that produces NaN/inf")
        for entry, s in zip(entries, scores, strict=True):
            entry["score"] = float(s)
        from linecam.grdnet.modeldir import read_card

        final_card = read_card(stage)
        extra = {"golden": {"images": entries, "tolerance": float(tolerance),
                            "recorded_with": "torch fp32 eager (InferenceGraph)"},
                 "published": {"time": _now_iso(), "source": str(src.resolve()), "by": _user(),
                               "source_command": card.command},
                 "command": command or final_card.command}
        write_card(stage, final_card.model_copy(update=extra))
        verify_version(stage)
        (stage / CARD_FILE).chmod(0o644)
        _make_read_only(stage)
        if final.exists():
            raise RegistryError(f"{final}: version already exists; published versions are never overwritten")
        os.rename(stage, final)
    except BaseException:
        if stage.exists():
            for p in [stage, *stage.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o755)
            shutil.rmtree(stage, ignore_errors=True)
        raise
    if promote or read_current(root) is None:
        set_current(root, version, action="promote" if promote else "first-publish")
    return final


def show(path: str | Path) -> dict[str, Any]:
    """The card of a version (as JSON data) plus whether its files verify."""
    d = Path(path)
    card_path = d / "card.json"
    if not card_path.is_file():
        raise RegistryError(f"{d}: not a published version (no card.json)")
    data: dict[str, Any] = json.loads(card_path.read_text(encoding="utf-8"))
    try:
        verify_version(d)
        data["verified"] = True
    except Exception as exc:  # report, do not raise: `show` is how a person finds out what is wrong
        data["verified"] = False
        data["verify_error"] = str(exc)
    return data


def resolve_version(registry: str | Path, version: str | None) -> Path:
    """``version`` of the registry, or the current one when None."""
    root = Path(registry)
    if version is None:
        return current_dir(root)
    path = root / check_version_name(version)
    if not (path / "card.json").is_file():
        raise RegistryError(f"{path}: no such published version; versions: {list_version_names(root)}")
    return path


__all__: Sequence[str] = [
    "CURRENT_FILE", "DEFAULT_GOLDEN_TOLERANCE", "GOLDEN_DIR", "HISTORY_FILE", "RegistryError", "VersionInfo",
    "check_version_name", "current_dir", "golden_entries", "golden_tolerance", "list_version_names",
    "list_versions", "next_version", "publish", "read_current", "read_golden", "read_history",
    "reference_scores", "resolve_version", "rollback", "set_current", "show", "verify_version",
]
