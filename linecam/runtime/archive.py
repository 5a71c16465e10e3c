"""The inspection archive: rejects (and a sample of accepts) with heatmaps and verdicts, capped and aged.

Why: the continuous-improvement loop needs the frames the line actually saw. A person reviews archived
rejects (true defect or false reject?) and sampled accepts (escapes?), and ``linecam dataset from-archive``
turns what was reviewed into a training/calibration dataset. The archive lives on the inspection PC, so it
must never fill the disk and never slow a verdict: the worker hands items to a bounded queue (full: the item
is dropped and counted), one background thread writes them, and the same thread prunes.

Layout (``ARCHIVE_README`` is the same text, written into the archive as README.txt)::

    <archive>/<YYYY-MM-DD>/<camera>/<accept|reject>/<seq>_<slot>.png           the frame (8-bit RGB, lossless)
                                                    <seq>_<slot>_heatmap.png   frame + per-region heatmap overlay
                                                    <seq>_<slot>_map-<region>.png  raw smoothed map, 16-bit
                                                                               (value / 65535, model input size)
                                                    <seq>_<slot>_verdict.json  the full verdict + archive fields
    <archive>/reviewed/good/<name>.png                    reviewed: good (accepted or falsely rejected)
    <archive>/reviewed/<kind>/<name>.png [+ <name>_mask.png]   reviewed: a real defect of that kind
    <archive>/README.txt

* The day is the UTC date of the capture time (one calendar for every host, no DST folds).
* ``<seq>`` is zero-padded to 9 digits; when acquire restarts and a name repeats within a day, ``-2``, ``-3``
  ... is appended rather than overwriting.
* Rejects are archived when their reason is in ``archive.reasons`` (default: anomaly, error, bad_frame,
  timeout); a frame that could not be decoded has no pixels, so only its verdict.json is stored.
  Accepts are archived when ``sample_fraction(camera, seq) < accept_sample_rate``: a hash, so the choice is
  reproducible and does not alias with the carousel's nest period the way ``seq % N`` would.
* Pruning (at start, every ``prune_interval_s`` and whenever the running total passes ``max_bytes``):
  day folders older than ``max_age_days`` are removed whole; then, while the day folders hold more than
  ``max_bytes``, the oldest items (oldest day first, oldest file time first) are removed, down to
  ``prune_to_fraction * max_bytes`` so the next write does not prune again. ``reviewed/`` and any other
  folder that is not a day are never counted or pruned: moving an item into ``reviewed/`` keeps it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from linecam.config import ArchiveConfig
from linecam.files import atomic_write
from linecam.runtime.messages import Verdict
from linecam.runtime.rejects import BackgroundWriter, overlay

log = logging.getLogger(__name__)

__all__ = [
    "ARCHIVE_README",
    "REVIEWED_DIR",
    "ArchiveError",
    "ArchiveItem",
    "ArchiveMetrics",
    "ArchiveWriter",
    "PruneResult",
    "archive_bytes",
    "day_folders",
    "is_sidecar",
    "item_key",
    "prune_archive",
    "sample_fraction",
    "wants_archive",
    "write_item",
]

REVIEWED_DIR = "reviewed"
HEATMAP_SUFFIX = "_heatmap"
MAP_INFIX = "_map-"
MASK_SUFFIX = "_mask"
VERDICT_SUFFIX = "_verdict.json"
MAP_SCALE = 65535
ITEM_FORMAT = "linecam-archive-item"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")

Regions = Mapping[str, tuple[tuple[int, int, int, int], np.ndarray | None]]

ARCHIVE_README = """\
linecam inspection archive
==========================
<YYYY-MM-DD>/<camera>/<accept|reject>/<seq>_<slot>.png          frame as inspected (8-bit RGB, lossless)
                                      <seq>_<slot>_heatmap.png  frame with the anomaly map overlaid per region
                                      <seq>_<slot>_map-<region>.png  raw map, 16-bit PNG, value/65535
                                      <seq>_<slot>_verdict.json scores, thresholds, model version, reason,
                                                                timestamps, truth (when the source knew it)
Days are UTC dates of the capture time. Old days and, above the size cap, the oldest items are deleted
automatically. Nothing under reviewed/ is ever deleted.

Review: MOVE (or copy) the frame <seq>_<slot>.png (sidecar files may come along; they are ignored) into
  reviewed/good/            the product is good (a false reject, or a checked accept)
  reviewed/<kind>/          a real defect of that kind (lower case, e.g. particle, scratch, outside_roi)
and optionally draw the defect as <name>_mask.png (white = defect, same size) next to it.
Then: linecam dataset from-archive <this folder> --out <dataset folder> [--roi calibration/.../roi.png]
"""


class ArchiveError(ValueError):
    """Problems with an archive or its review; ``problems`` lists each one, naming its file or folder."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = self.problems[:200]
        text = f"{len(self.problems)} archive problem(s):\n  " + "\n  ".join(shown)
        if len(self.problems) > len(shown):
            text += f"\n  ... and {len(self.problems) - len(shown)} more"
        super().__init__(text)


# -- what goes in --------------------------------------------------------------------------------------------
def sample_fraction(camera: str, seq: int) -> float:
    """A number in [0, 1) fixed by (camera, seq): accepts with a fraction below the rate are archived."""
    digest = hashlib.blake2b(f"{camera}\0{seq}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def wants_archive(verdict: Verdict, cfg: ArchiveConfig) -> bool:
    """Rejects by reason, accepts by the deterministic sample."""
    if verdict.decision == "reject":
        return verdict.reason in cfg.reasons
    return cfg.accept_sample_rate > 0 and sample_fraction(verdict.camera, verdict.seq) < cfg.accept_sample_rate


@dataclass
class ArchiveItem:
    """One verdict to archive; ``image`` (H, W, 3) RGB uint8 owned by the item (None: no usable pixels)."""

    verdict: Verdict
    image: np.ndarray | None
    regions: dict[str, tuple[tuple[int, int, int, int], np.ndarray | None]] = field(default_factory=dict)
    truth: dict[str, Any] | None = None


def day_of(verdict: Verdict) -> str:
    """UTC date (YYYY-MM-DD) of the capture, else of the worker's receipt, else now."""
    ns = verdict.timestamps.get("capture") or verdict.timestamps.get("received") or time.time_ns()
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def _png(image: np.ndarray, what: Path) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{what}: PNG encoding failed for an array {image.shape} {image.dtype}")
    return buf.tobytes()


def write_item(root: Path, item: ArchiveItem, save_maps: bool = True) -> tuple[Path, int]:
    """Write one item under ``root``; returns (path of its verdict.json, bytes written)."""
    v = item.verdict
    camera = _SAFE.sub("_", v.camera).strip(".") if v.camera != "?" else ""  # a bad header's name: no "..")
    camera = camera or "_unknown"
    folder = root / day_of(v) / camera / v.decision
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{v.seq:09d}_{v.slot}"
    name, n = base, 1
    while (folder / f"{name}{VERDICT_SUFFIX}").exists() or (folder / f"{name}.png").exists():
        n += 1
        name = f"{base}-{n}"
    written = 0
    files: dict[str, Any] = {"image": None, "heatmap": None, "maps": {}}
    if item.image is not None:
        path = folder / f"{name}.png"
        written += atomic_write(path, _png(cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR), path))
        files["image"] = path.name
        if any(m is not None for _, m in item.regions.values()):
            path = folder / f"{name}{HEATMAP_SUFFIX}.png"
            heat = overlay(item.image, dict(item.regions), thresholds=dict(item.verdict.thresholds))
            written += atomic_write(path, _png(heat, path))
            files["heatmap"] = path.name
    if save_maps:
        for region, (_, amap) in item.regions.items():
            if amap is None:
                continue
            path = folder / f"{name}{MAP_INFIX}{_SAFE.sub('_', region)}.png"
            raw = np.rint(np.clip(np.asarray(amap, np.float32), 0.0, 1.0) * MAP_SCALE).astype(np.uint16)
            written += atomic_write(path, _png(raw, path))
            files["maps"][region] = path.name
    record = {
        **v.model_dump(mode="json"),
        "truth": item.truth,
        "archive": {
            "format": ITEM_FORMAT,
            "format_version": 1,
            "archived_ns": time.time_ns(),
            "sampled": v.decision == "accept",
            "image_shape": list(item.image.shape) if item.image is not None else None,
            "boxes": {r: list(box) for r, (box, _) in item.regions.items()},
            "map_scale": MAP_SCALE,
            **files,
        },
    }
    path = folder / f"{name}{VERDICT_SUFFIX}"
    written += atomic_write(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return path, written


# -- size and pruning ----------------------------------------------------------------------------------------
def is_sidecar(path: Path) -> bool:
    """True for the files that travel with a frame (heatmap, raw maps, verdict, a reviewer's mask)."""
    name = path.name
    if name.endswith(VERDICT_SUFFIX):
        return True
    stem = path.stem
    return stem.endswith(HEATMAP_SUFFIX) or stem.endswith(MASK_SUFFIX) or MAP_INFIX in stem


def item_key(path: Path) -> str:
    """The item a file belongs to: its name with the sidecar suffix taken off (``000000007_107``)."""
    name = path.name
    if name.endswith(VERDICT_SUFFIX):
        return name[: -len(VERDICT_SUFFIX)]
    stem = path.stem
    for suffix in (HEATMAP_SUFFIX, MASK_SUFFIX):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    if MAP_INFIX in stem:
        return stem[: stem.rindex(MAP_INFIX)]
    return stem


def day_folders(root: Path) -> list[tuple[dt.date, Path]]:
    """The archive's day folders, oldest first; folders that are not valid dates are not the archive's."""
    out: list[tuple[dt.date, Path]] = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        if p.is_dir() and _DAY.match(p.name):
            try:
                out.append((dt.date.fromisoformat(p.name), p))
            except ValueError:
                continue
    return sorted(out)


def _files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    out: list[tuple[Path, os.stat_result]] = []
    for p in folder.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:  # removed by a reviewer meanwhile
            continue
        if p.is_file() and not p.is_symlink():
            out.append((p, st))
    return out


def archive_bytes(root: Path) -> int:
    """Bytes in the day folders (what ``max_bytes`` caps; ``reviewed/`` is not counted)."""
    return sum(st.st_size for _, day in day_folders(root) for _, st in _files(day))


@dataclass
class PruneResult:
    """What one pruning pass removed (files and bytes, by cause ``age`` / ``cap``) and what remains."""

    files: dict[str, int] = field(default_factory=lambda: {"age": 0, "cap": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"age": 0, "cap": 0})
    remaining_bytes: int = 0
    removed_days: list[str] = field(default_factory=list)


def _remove_empty_dirs(folder: Path) -> None:
    """Remove the empty folders under ``folder`` (deepest first) and ``folder`` itself when empty."""
    for p in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: a kept item or a reviewer's file
            p.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def prune_archive(root: Path, max_bytes: int, max_age_days: int, prune_to_fraction: float = 0.9,
                  today: dt.date | None = None) -> PruneResult:
    """Remove day folders older than ``max_age_days``, then the oldest items until the day folders hold at
    most ``prune_to_fraction * max_bytes`` (when they held more than ``max_bytes``)."""
    if max_bytes < 1 or max_age_days < 0 or not 0 < prune_to_fraction <= 1:
        raise ValueError(f"prune {root}: max_bytes {max_bytes} must be >= 1, max_age_days {max_age_days} >= 0, "
                         f"prune_to_fraction {prune_to_fraction} in (0, 1]")
    root = Path(root)
    today = today or dt.datetime.now(dt.timezone.utc).date()
    cutoff = today - dt.timedelta(days=max_age_days)
    result = PruneResult()
    kept: list[tuple[dt.date, Path, list[tuple[Path, os.stat_result]]]] = []
    for day, folder in day_folders(root):
        files = _files(folder)
        if day < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            result.files["age"] += len(files)
            result.bytes["age"] += sum(st.st_size for _, st in files)
            result.removed_days.append(folder.name)
        else:
            kept.append((day, folder, files))
    total = sum(st.st_size for _, _, files in kept for _, st in files)
    if total > max_bytes:
        target = int(max_bytes * prune_to_fraction)
        for _, folder, files in kept:
            if total <= target:
                break
            items: dict[tuple[Path, str], list[tuple[Path, os.stat_result]]] = {}
            for p, st in files:
                items.setdefault((p.parent, item_key(p)), []).append((p, st))
            for group in sorted(items.values(), key=lambda g: (max(st.st_mtime for _, st in g), str(g[0][0]))):
                if total <= target:
                    break
                for p, st in group:
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        continue
                    total -= st.st_size
                    result.files["cap"] += 1
                    result.bytes["cap"] += st.st_size
            _remove_empty_dirs(folder)
            if not folder.exists():
                result.removed_days.append(folder.name)
    result.remaining_bytes = total
    return result


# -- the writer ----------------------------------------------------------------------------------------------
class ArchiveMetrics:
    """``linecam_archive_*`` collectors in a process's registry (no per-product labels)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.written = Counter("linecam_archive_written", "Items written to the archive, by decision",
                               ["decision"], registry=r)
        self.dropped = Counter("linecam_archive_dropped", "Items not archived because the queue was full",
                               registry=r)
        self.failed = Counter("linecam_archive_failed", "Items whose write failed (disk full, permissions)",
                              registry=r)
        self.pruned = Counter("linecam_archive_pruned", "Files deleted by the archive pruner, by cause (age, cap)",
                              ["cause"], registry=r)
        self.pruned_bytes = Counter("linecam_archive_pruned_bytes", "Bytes deleted by the archive pruner",
                                    ["cause"], registry=r)
        self.bytes = Gauge("linecam_archive_bytes", "Bytes held in the archive's day folders", registry=r)
        self.queue_depth = Gauge("linecam_archive_queue_depth", "Items waiting for the archive writer", registry=r)
        for cause in ("age", "cap"):
            self.pruned.labels(cause=cause)
            self.pruned_bytes.labels(cause=cause)


class ArchiveWriter(BackgroundWriter[ArchiveItem]):
    """Archives verdicts off the hot path: :meth:`offer` decides and copies, a thread writes and prunes."""

    def __init__(self, cfg: ArchiveConfig, registry: CollectorRegistry | None = None,
                 today: Callable[[], dt.date] | None = None) -> None:
        self.cfg = cfg
        self.root = Path(cfg.path)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            readme = self.root / "README.txt"
            if not readme.exists():
                readme.write_text(ARCHIVE_README)
        except OSError as exc:
            raise ArchiveError([f"archive.path {self.root}: cannot create the archive folder ({exc})"]) from None
        self.metrics = ArchiveMetrics(registry)
        self._today = today
        self._bytes = 0
        self.last_prune: PruneResult | None = None
        super().__init__("archive-writer", cfg.queue, on_drop=self.metrics.dropped.inc,
                         on_depth=self.metrics.queue_depth.set, tick_s=cfg.prune_interval_s)
        self.start()

    def offer(self, verdict: Verdict, image: np.ndarray | None, regions: Regions | None = None,
              truth: dict[str, Any] | None = None) -> bool:
        """Queue ``verdict`` when the archive wants it (copying the pixels); True when queued."""
        if not wants_archive(verdict, self.cfg):
            return False
        pixels = np.array(image, dtype=np.uint8, copy=True) if image is not None else None
        maps = {k: (box, np.array(m, copy=True) if m is not None else None)
                for k, (box, m) in (regions or {}).items()}
        return self.submit(ArchiveItem(verdict, pixels, maps, truth))

    def _describe(self, item: ArchiveItem) -> str:
        return f"archive item camera={item.verdict.camera} seq={item.verdict.seq}"

    def _write(self, item: ArchiveItem) -> None:
        try:
            _, written = write_item(self.root, item, self.cfg.save_maps)
        except Exception:
            self.metrics.failed.inc()
            raise
        self.metrics.written.labels(decision=item.verdict.decision).inc()
        self._bytes += written
        self.metrics.bytes.set(self._bytes)
        if self._bytes > self.cfg.max_bytes:
            self.prune()

    def _tick(self) -> None:
        self.prune()

    def prune(self) -> PruneResult:
        """One pruning pass (called by the writer thread; safe from elsewhere only once it is closed)."""
        today = self._today() if self._today is not None else None
        result = prune_archive(self.root, self.cfg.max_bytes, self.cfg.max_age_days, self.cfg.prune_to_fraction,
                               today=today)
        for cause in ("age", "cap"):
            if result.files[cause]:
                self.metrics.pruned.labels(cause=cause).inc(result.files[cause])
                self.metrics.pruned_bytes.labels(cause=cause).inc(result.bytes[cause])
        if result.files["age"] or result.files["cap"]:
            log.info("archive %s: pruned %d old + %d over-cap files; %d bytes remain", self.root,
                     result.files["age"], result.files["cap"], result.remaining_bytes)
        self._bytes = result.remaining_bytes
        self.metrics.bytes.set(self._bytes)
        self.last_prune = result
        return result
