"""The worker's live models: one detector per model name, the regions and thresholds it serves, and hot swap.

Why a part of its own: which version of a model serves, with which threshold per region, changes at run time
(a new registry version is checked in the background, swapped in between two batches, kept on probation with
the previous version still loaded, and rolled back if it fails in service). The worker only asks this set to
score the crops of a batch; everything about versions stays here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from linecam.backends.base import Detector, create_detector
from linecam.config import ConfigError, LineConfig
from linecam.config.regions import RegionConfig
from linecam.modelstore.signing import SignatureError, TrustedKey, load_trusted_keys, verify_signature
from linecam.runtime.frames import FrameItem
from linecam.runtime.hotswap import ModelWatcher, WatcherThread, swap_counter
from linecam.runtime.metrics import LineMetrics
from linecam.runtime.regions import load_mask

log = logging.getLogger(__name__)

__all__ = ["Entry", "ModelSet", "Region", "card_version_threshold", "check_signatures", "load_detectors",
           "open_detector", "used_models"]


def card_version_threshold(model_dir: Path) -> tuple[str, float | None]:
    """(version, calibrated threshold or None) from ``<model_dir>/card.json``."""
    from linecam.grdnet.modeldir import ModelDirError, read_card

    try:
        card = read_card(model_dir)
    except ModelDirError as exc:
        raise ConfigError(str(exc)) from None
    return card.version, card.threshold


def used_models(cfg: LineConfig) -> list[str]:
    """Names of the models some camera region uses."""
    return sorted({r.model for cam in cfg.cameras for r in cam.region_list()})


def open_detector(cfg: LineConfig, path: Path, factory: Callable[..., Detector] = create_detector) -> Detector:
    """Open one model folder with the configured backend, thread count and ``infer.backend_options``.

    An option the backend does not take is reported as a configuration error naming the field, not as a
    bare ``TypeError`` from deep inside the backend.
    """
    options = cfg.infer.backend_options
    try:
        return factory(path, backend=cfg.infer.backend, threads=cfg.infer.threads, **options)
    except TypeError as exc:
        raise ValueError(f"infer.backend_options {options} do not fit backend {cfg.infer.backend!r} "
                         f"for {path}: {exc}") from exc


def check_signatures(cfg: LineConfig, model_dirs: Mapping[str, Path]) -> list[TrustedKey]:
    """The line's trusted keys, after checking that every model folder about to be served is signed by one.

    ConfigError names the model and the folder when one is not: a line configured to trust only signed models
    does not start on an unsigned one. Without ``infer.trusted_keys`` nothing is checked, and that is logged.
    """
    if not cfg.infer.trusted_keys:
        log.warning("model signatures are not checked (infer.trusted_keys is empty): any version whose files "
                    "match its card's sha256 list is served")
        return []
    try:
        trusted = load_trusted_keys(cfg.infer.trusted_keys)
        for name, folder in model_dirs.items():
            signer = verify_signature(folder, trusted)
            log.info("model %s: %s is signed by trusted key %s", name, folder, signer)
    except SignatureError as exc:
        raise ConfigError(f"{cfg.source_path or 'config'}: infer.trusted_keys: {exc}") from None
    return trusted


def load_detectors(cfg: LineConfig, factory: Callable[..., Detector] = create_detector,
                   model_dirs: Mapping[str, Path] | None = None) -> dict[str, Detector]:
    """Open every model the cameras' regions use, with the configured backend and thread count.

    ``model_dirs`` pins the folder per model (the worker resolves registry pointers once, so the detector
    and the thresholds it reads come from the same version); by default each reference is resolved here.
    """
    dirs = model_dirs or {name: cfg.models[name].model_dir() for name in used_models(cfg)}
    return {name: open_detector(cfg, dirs[name], factory) for name in used_models(cfg)}


@dataclass
class Region:
    """A region as served now: its configuration, the threshold for the serving version, its mask."""

    config: RegionConfig
    threshold: float
    mask: np.ndarray | None  # uint8 (h, w), 0 = ignore


@dataclass
class Probation:
    """A freshly swapped-in version and the previous one, kept loaded until the new one proves itself."""

    detector: Detector  # the PREVIOUS version's detector
    model_dir: Path
    version: str  # the new version on probation
    previous_version: str
    remaining: int  # frames (crops) the new version must still serve without error


#: one crop to score: the frame it belongs to, its region, its pixels.
Entry = tuple[FrameItem, Region, np.ndarray]


class ModelSet:
    """The serving detectors, their folders and regions, and the swap/probation/rollback of registry models."""

    def __init__(self, cfg: LineConfig, metrics: LineMetrics, detectors: Mapping[str, Detector] | None = None,
                 factory: Callable[..., Detector] = create_detector, want_maps: bool = False) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.want_maps = want_maps
        self._factory = factory
        #: the folder each model was loaded from (for registry models: the version CURRENT pointed at).
        self.model_dirs: dict[str, Path] = {name: cfg.models[name].model_dir() for name in used_models(cfg)}
        self.trusted_keys = check_signatures(cfg, self.model_dirs)
        self.detectors: dict[str, Detector] = (dict(detectors) if detectors is not None
                                               else load_detectors(cfg, factory, self.model_dirs))
        # (version, card threshold) per model FOLDER: a published folder never changes, so entries stay valid
        # across swaps and rollbacks and need no saving or restoring.
        self._card_thresholds: dict[Path, tuple[str, float | None]] = {}
        self.regions = self.resolve_regions()
        self.probation: dict[str, Probation] = {}
        self.swap_counter = swap_counter(metrics.registry)
        self.watchers = {
            name: ModelWatcher(name, ref.registry, self.model_dirs[name].name, self._open, self.swap_counter,
                               warm=self._make_warmer(name), tolerance=cfg.infer.golden_tolerance,
                               trusted=self.trusted_keys)
            for name, ref in cfg.models.items() if ref.registry is not None and name in self.model_dirs
        }
        self.watcher_thread = WatcherThread(list(self.watchers.values()), cfg.infer.swap_poll_s)
        self.publish_info()

    # -- what serves -------------------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        """The serving versions, comma-separated (what a verdict names when no model scored it)."""
        return ",".join(sorted({d.model_version for d in self.detectors.values()}))

    def publish_info(self) -> None:
        """``linecam_model_info``: the serving versions and backends."""
        self.metrics.set_model(self.model_version, ",".join(sorted({d.backend for d in self.detectors.values()})))

    def resolve_regions(self) -> dict[str, list[Region]]:
        """Every camera's regions with the threshold of the version now serving their model."""
        out: dict[str, list[Region]] = {}
        for cam in self.cfg.cameras:
            regions = []
            for region in cam.region_list():
                if region.model not in self.detectors:
                    raise ConfigError(f"camera {cam.name} region {region.name}: no detector for model "
                                      f"{region.model!r}")
                folder = self.model_dirs[region.model]
                if folder not in self._card_thresholds:
                    self._card_thresholds[folder] = card_version_threshold(folder)
                version, from_card = self._card_thresholds[folder]
                threshold, origin = region.threshold_for(version, from_card)
                if threshold is None:
                    raise ConfigError(f"camera {cam.name} region {region.name}: no threshold for model "
                                      f"{region.model!r} version {version!r} (regions.yaml has none for it and the "
                                      f"card has no calibrated threshold)")
                log.info("camera %s region %s: threshold %.5g for %s/%s from %s", cam.name, region.name,
                         threshold, region.model, version, origin)
                mask = load_mask(region.mask) if region.mask is not None else None
                regions.append(Region(region, float(threshold), mask))
            out[cam.name] = regions
        return out

    # -- scoring -----------------------------------------------------------------------------------------
    def score(self, model: str, entries: list[Entry]) -> None:
        """Score the crops of one model; a version on probation that fails hands the batch back to the previous
        version (no frame is lost) and is rolled back."""
        probation = self.probation.get(model)
        if probation is None:
            self._run_detector(model, entries)
            return
        failure = self._run_detector(model, entries, fail_fast=True)
        if failure is None:
            probation.remaining -= len(entries)
            if probation.remaining <= 0:
                self.commit(model)
            return
        self.roll_back(model, failure)
        for item, _, _ in entries:  # the previous version redoes the whole batch: no frame is lost
            item.scores.clear()
            item.maps.clear()
            item.models.discard(model)
        self._run_detector(model, entries)

    def _run_detector(self, model: str, entries: list[Entry], fail_fast: bool = False) -> str | None:
        """Score ``entries`` with the model's detector. With ``fail_fast`` (a version on probation) an
        exception or a non-finite score is returned as the failure text and no item is touched."""
        detector = self.detectors[model]
        shapes = {c.shape for _, _, c in entries}
        if len(shapes) == 1:
            stack = np.stack([c for _, _, c in entries])
        else:  # regions of different sizes share the model: bring them to its input size here
            h, w = detector.input_size
            stack = np.stack([cv2.resize(np.ascontiguousarray(c), (w, h), interpolation=cv2.INTER_AREA)
                              for _, _, c in entries])
        masks = None
        if any(r.mask is not None for _, r, _ in entries):
            h, w = detector.input_size
            masks = np.stack([
                cv2.resize(r.mask, (w, h), interpolation=cv2.INTER_NEAREST) if r.mask is not None
                else np.full((h, w), 255, np.uint8)
                for _, r, _ in entries
            ])
        try:
            detection = detector.detect(stack, masks=masks, return_maps=self.want_maps)
            scores = np.asarray(detection.scores, dtype=np.float64).reshape(-1)
            if scores.shape[0] != len(entries):
                raise RuntimeError(f"detector returned {scores.shape[0]} scores for {len(entries)} crops")
        except Exception as exc:
            log.exception("model %s failed on a batch of %d crops", model, len(entries))
            if fail_fast:
                return f"{type(exc).__name__}: {exc}"
            for item, region, _ in entries:
                if not item.reason:
                    item.reason = "error"
                    item.detail = f"model {model} region {region.config.name}: {type(exc).__name__}: {exc}"
            return None
        if fail_fast and not np.all(np.isfinite(scores)):
            return f"non-finite scores {scores[~np.isfinite(scores)][:3].tolist()}"
        for i, (item, region, _) in enumerate(entries):
            value = float(scores[i])
            item.scores[region.config.name] = value
            item.models.add(model)
            if not math.isfinite(value):
                if not item.reason:
                    item.reason, item.detail = "error", f"region {region.config.name}: non-finite score {value}"
                continue
            self.metrics.anomaly_score.observe(value)
            if detection.maps is not None:
                item.maps[region.config.name] = np.asarray(detection.maps[i])
        return None

    # -- hot swap ----------------------------------------------------------------------------------------
    def _open(self, path: Path) -> Detector:
        return open_detector(self.cfg, path, self._factory)

    def _make_warmer(self, model: str) -> Callable[[Detector], None]:
        """A function that runs a candidate on blank crops of every shape this model sees here, at batch
        sizes 1 and max_batch, twice (the torch backends trace and specialise on the first calls)."""

        def warm(detector: Detector) -> None:
            shapes: set[tuple[int, int, bool]] = set()
            for cam in self.cfg.cameras:
                size = cam.frame_size()
                for region in self.regions.get(cam.name, []):
                    if region.config.model != model:
                        continue
                    if region.config.box is not None:
                        shapes.add((region.config.box[3], region.config.box[2], region.mask is not None))
                    elif size is not None:
                        shapes.add((*size, region.mask is not None))
            h_in, w_in = detector.input_size
            for h, w, masked in sorted(shapes):
                for n in sorted({1, self.cfg.infer.max_batch}):
                    crops = np.zeros((n, h, w, 3), np.uint8)
                    masks = np.full((n, h_in, w_in), 255, np.uint8) if masked else None
                    for _ in range(2):
                        detector.detect(crops, masks=masks, return_maps=self.want_maps)

        return warm

    def apply_swaps(self) -> list[str]:
        """Swap in every ready candidate (called between batches); returns the models swapped."""
        swapped = []
        for name, watcher in self.watchers.items():
            candidate = watcher.take()
            if candidate is None:
                continue
            if name in self.probation:  # a newer version arrived while one is on probation: settle that first
                self.commit(name)
            old_detector, old_dir = self.detectors[name], self.model_dirs[name]
            self.detectors[name], self.model_dirs[name] = candidate.detector, candidate.path
            self._card_thresholds[candidate.path] = (candidate.version, candidate.threshold)  # the checked card
            try:
                self.regions = self.resolve_regions()
            except (ConfigError, ValueError) as exc:
                self.detectors[name], self.model_dirs[name] = old_detector, old_dir
                log.error("model %s: version %s REFUSED: %s", name, candidate.version, exc)
                watcher.count("load_error")
                candidate.detector.close()
                continue
            watcher.active_version = candidate.version
            self.probation[name] = Probation(old_detector, old_dir, watcher.active_version, old_dir.name,
                                             self.cfg.infer.swap_probation_frames)
            watcher.count("swapped")
            self.publish_info()
            log.info("model %s: swapped %s -> %s; previous kept until %d frames pass", name, old_dir.name,
                     candidate.version, self.cfg.infer.swap_probation_frames)
            swapped.append(name)
            if self.cfg.infer.swap_probation_frames == 0:
                self.commit(name)
        return swapped

    def commit(self, model: str) -> None:
        """The version on probation served its frames: release the previous one."""
        probation = self.probation.pop(model)
        log.info("model %s: version %s served its probation; releasing %s", model, probation.version,
                 probation.previous_version)
        self.watchers[model].count("committed")
        _close_quietly(probation.detector, f"the previous detector of {model}")

    def roll_back(self, model: str, failure: str) -> None:
        """The version on probation failed in service: the previous one serves again (CURRENT is not moved)."""
        probation = self.probation.pop(model)
        failed = self.detectors[model]
        self.detectors[model], self.model_dirs[model] = probation.detector, probation.model_dir
        self.regions = self.resolve_regions()
        watcher = self.watchers[model]
        watcher.active_version = probation.previous_version
        watcher.count("rolled_back")
        self.publish_info()
        log.error("model %s: version %s FAILED in service (%s); rolled back to %s (the CURRENT pointer is not "
                  "changed; fix or move it)", model, probation.version, failure, probation.previous_version)
        _close_quietly(failed, f"the failed detector of {model}")

    def close(self) -> None:
        """Stop watching the registry and release every detector, those on probation too."""
        self.watcher_thread.stop()
        for probation in self.probation.values():
            _close_quietly(probation.detector, "a previous detector")
        self.probation.clear()
        for detector in self.detectors.values():
            _close_quietly(detector, "a detector")


def _close_quietly(detector: Detector, what: str) -> None:
    try:
        detector.close()
    except Exception:
        log.exception("closing %s failed", what)
