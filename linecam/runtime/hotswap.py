"""Hot swap of registry models in the inference worker: watch CURRENT, load and check in the background.

Why this shape: the line never stops for a model update. A :class:`ModelWatcher` per registry model notices a
new CURRENT, and on a background thread verifies the version's hashes (a mismatch is refused) and, when the
line trusts signing keys, its Ed25519 signature (an unsigned or foreign version is refused), opens it
with the worker's backend, runs the golden images and compares them with the scores the card recorded at
publish time, and warms it up. Only a candidate that passed all of that is handed to the worker, which
swaps it in between two batches (:meth:`take`), so no batch ever mixes versions and no frame waits for a
load. The watcher never writes the pointer: refusing or rolling back is the worker's local decision, logged
and counted in ``linecam_model_swaps_total{model, result}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from linecam.modelstore.signing import TrustedKey, verify_signature
from linecam.modelstore.versions import expected_golden, golden_tolerance, read_current, read_golden, verify_version

log = logging.getLogger(__name__)

#: every value the ``result`` label of linecam_model_swaps_total takes.
SWAP_RESULTS = ("swapped", "committed", "rolled_back", "refused_hash", "refused_signature", "refused_golden",
                "load_error")


def swap_counter(registry: CollectorRegistry) -> Counter:
    """``linecam_model_swaps_total{model, result}`` in ``registry``, every label pair pre-set to 0 lazily."""
    return Counter("linecam_model_swaps", "Model hot-swap attempts by outcome", ["model", "result"],
                   registry=registry)


@dataclass
class Candidate:
    """A checked, warmed-up version ready to be swapped in."""

    model: str
    version: str
    path: Path
    detector: Any  # linecam.backends.base.Detector
    threshold: float | None
    golden_max_diff: float


class ModelWatcher:
    """Follows ``<registry>/CURRENT`` for one configured model; prepares candidates off the hot path.

    ``open_detector(path)`` opens a version with the worker's backend; ``warm(detector)`` runs it on the
    worker's crop shapes so the first live batch pays no tracing cost. ``tolerance`` overrides the card's
    golden tolerance when given. With ``trusted`` keys, a version must carry a signature by one of them.
    """

    def __init__(
        self,
        model: str,
        registry: Path,
        active_version: str,
        open_detector: Callable[[Path], Any],
        counter: Counter,
        warm: Callable[[Any], None] | None = None,
        tolerance: float | None = None,
        trusted: Sequence[TrustedKey] = (),
    ) -> None:
        self._trusted = list(trusted)
        self.model = model
        self.registry = Path(registry)
        self.active_version = active_version
        self._open = open_detector
        self._warm = warm
        self._tolerance = tolerance
        self._counter = counter
        self._seen = active_version
        self._ready: Candidate | None = None
        self._lock = threading.Lock()
        self._pointer_error = ""
        for result in SWAP_RESULTS:
            counter.labels(model=model, result=result)

    def count(self, result: str) -> None:
        self._counter.labels(model=self.model, result=result).inc()

    def check(self) -> Candidate | None:
        """Read CURRENT; if it moved to a version not tried yet, load and check it (blocking: call from the
        watcher thread). Returns the new candidate, or None."""
        try:
            version = read_current(self.registry)
        except Exception as exc:
            if str(exc) != self._pointer_error:
                log.error("model %s: cannot read %s/CURRENT: %s", self.model, self.registry, exc)
                self._pointer_error = str(exc)
            return None
        self._pointer_error = ""
        if version is None or version == self._seen:
            return None
        self._seen = version
        if version == self.active_version:
            self._set_ready(None)
            return None
        candidate = self._prepare(version)
        self._set_ready(candidate)
        return candidate

    def _set_ready(self, candidate: Candidate | None) -> None:
        with self._lock:
            old, self._ready = self._ready, candidate
        if old is not None and old is not candidate:
            _close_quietly(old.detector)

    def _prepare(self, version: str) -> Candidate | None:
        path = self.registry / version
        log.info("model %s: CURRENT -> %s; loading %s in the background", self.model, version, path)
        try:
            card = verify_version(path)
        except Exception as exc:
            log.error("model %s: version %s REFUSED: %s", self.model, version, exc)
            self.count("refused_hash")
            return None
        if self._trusted:
            try:
                signer = verify_signature(path, self._trusted)
            except Exception as exc:
                log.error("model %s: version %s REFUSED: %s", self.model, version, exc)
                self.count("refused_signature")
                return None
            log.info("model %s: version %s is signed by trusted key %s", self.model, version, signer)
        try:
            detector = self._open(path)
        except Exception as exc:
            log.error("model %s: version %s could not be opened: %s", self.model, version, exc)
            self.count("load_error")
            return None
        try:
            images, recorded = read_golden(path, card)
            recorded, extra, _ = expected_golden(card, recorded, str(getattr(detector, "backend", "")),
                                                 str(getattr(detector, "precision", "fp32")))
            scores = np.asarray(detector.detect(images).scores, dtype=np.float64).reshape(-1)
            tolerance = (self._tolerance if self._tolerance is not None else golden_tolerance(card)) + extra
            diff = np.abs(scores - recorded)
            if scores.shape != recorded.shape or not np.all(np.isfinite(scores)) or float(diff.max()) > tolerance:
                log.error("model %s: version %s REFUSED: golden scores %s differ from the card's %s "
                          "(max |diff| %.4g > tolerance %.4g)", self.model, version, np.round(scores, 5).tolist(),
                          np.round(recorded, 5).tolist(), float(np.nanmax(diff)) if diff.size else float("nan"),
                          tolerance)
                self.count("refused_golden")
                _close_quietly(detector)
                return None
            if self._warm is not None:
                self._warm(detector)
        except Exception as exc:
            log.error("model %s: version %s failed its golden check: %s", self.model, version, exc)
            self.count("load_error")
            _close_quietly(detector)
            return None
        log.info("model %s: version %s passed hash and golden checks (max |diff| %.2g); ready to swap",
                 self.model, version, float(diff.max()))
        return Candidate(self.model, version, path, detector, card.threshold, float(diff.max()))

    def take(self) -> Candidate | None:
        """The ready candidate, once (called by the worker between batches); None when there is none."""
        with self._lock:
            candidate, self._ready = self._ready, None
        if candidate is not None and candidate.version != self._seen:
            _close_quietly(candidate.detector)  # the pointer moved on meanwhile
            return None
        return candidate


class WatcherThread:
    """Polls every watcher every ``poll_s`` seconds on one daemon thread until :meth:`stop`."""

    def __init__(self, watchers: Sequence[ModelWatcher], poll_s: float) -> None:
        self.watchers = list(watchers)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> None:
        if self.watchers:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            for w in self.watchers:
                try:
                    w.check()
                except Exception:  # the watcher must never die: the line keeps its current model
                    log.exception("model %s: watcher check failed", w.model)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for w in self.watchers:
            w._set_ready(None)


def _close_quietly(detector: Any) -> None:
    try:
        detector.close()
    except Exception:
        log.exception("closing a detector failed")
