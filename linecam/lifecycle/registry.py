"""The model registry's write side: publish immutable versions under ``model/<name>/<version>/``, move CURRENT.

Why this shape: a line must always know exactly which bytes made a verdict. A published version folder is
written once (staged under a hidden name, then renamed into place), its files and folder are made
read-only, and its card lists the sha256 of every file plus golden images with the scores they produced at
publish time, so a loader can check both the bytes and the behaviour. Which version the line runs is a
separate one-line file ``model/<name>/CURRENT`` replaced atomically (write + rename), so a watcher never
reads half a pointer; every pointer move is appended to ``HISTORY.jsonl`` so ``rollback`` knows where to go.

The read side (versions, CURRENT, verification) is :mod:`linecam.modelstore.versions`, re-exported here for the
offline tools.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from linecam.modelstore.versions import (
    CURRENT_FILE,
    DEFAULT_GOLDEN_TOLERANCE,
    GOLDEN_DIR,
    HISTORY_FILE,
    RegistryError,
    VersionInfo,
    check_version_name,
    current_dir,
    golden_entries,
    golden_tolerance,
    list_version_names,
    list_versions,
    next_version,
    read_current,
    read_golden,
    read_history,
    reference_scores,
    resolve_version,
    show,
    verify_version,
)

DEFAULT_GOLDEN_COUNT = 4


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _append_history(registry: Path, record: dict[str, Any]) -> None:
    with open(registry / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


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


# ------------------------------------------------------------------------------------------ verification
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


def _int8_golden_scores(stage: Path, card: Any, images: list[Any]) -> dict[str, list[float]]:
    """The INT8 graph's golden scores per backend whose quality gate passed, where that backend is installed."""
    import numpy as np

    from linecam.backends import create_detector
    from linecam.backends.base import BackendUnavailableError
    from linecam.backends.modelfiles import ONNX_INT8_NAME, int8_refusal

    if ONNX_INT8_NAME not in card.files:
        return {}
    out: dict[str, list[float]] = {}
    for backend in sorted((getattr(card, "int8", None) or {}).get("gates") or {}):
        if int8_refusal(card, backend) is not None:
            continue
        try:
            detector = create_detector(stage, backend, precision="int8")
        except (BackendUnavailableError, ImportError, ValueError):
            continue  # not installed here: a loader then compares with fp32 plus the gate's difference
        try:
            out[backend] = [float(s) for s in detector.detect(np.stack(images)).scores]
        finally:
            detector.close()
    return out


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
    sign_key: str | Path | None = None,
) -> Path:
    """Publish ``model_dir`` as ``<registry_root>/<name>/<version>`` and return that folder.

    Copies the weights (hash-checked), exports ``model.onnx`` when the source has none, writes golden
    images and their fp32 reference scores into the card, records the command, signs the card with
    ``sign_key`` (Ed25519 private key) when given, then renames the staged folder into place and makes it
    read-only. An existing version is never overwritten.
    """
    import cv2

    from linecam.grdnet.modeldir import (
        CARD_FILE,
        GoldenImage,
        GoldenSet,
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
        golden_set = GoldenSet(images=[GoldenImage.model_validate(e) for e in entries], tolerance=float(tolerance),
                               recorded_with="torch fp32 eager (InferenceGraph)",
                               int8_scores=_int8_golden_scores(stage, final_card, images))
        extra = {"golden": golden_set,
                 "published": {"time": _now_iso(), "source": str(src.resolve()), "by": _user(),
                               "source_command": card.command},
                 "command": command or final_card.command}
        write_card(stage, final_card.model_copy(update=extra))
        verify_version(stage)
        if sign_key is not None:
            from linecam.lifecycle.signing import sign_version

            sign_version(stage, sign_key)
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


__all__: Sequence[str] = [
    "CURRENT_FILE", "DEFAULT_GOLDEN_TOLERANCE", "GOLDEN_DIR", "HISTORY_FILE", "RegistryError", "VersionInfo",
    "check_version_name", "current_dir", "golden_entries", "golden_tolerance", "list_version_names",
    "list_versions", "next_version", "publish", "read_current", "read_golden", "read_history",
    "reference_scores", "resolve_version", "rollback", "set_current", "show", "verify_version",
]
