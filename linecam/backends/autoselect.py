"""``backend="auto"``: the fastest correct backend and precision on this machine, found by a short timed trial.

Why a trial and not a fixed order: which variant wins depends on the CPU and the model. bf16 is about 5x faster
than fp32 where the CPU has AMX, slower where it has AVX512-BF16 without AMX, and emulated (about 10x slower)
on AVX2-only CPUs. OpenVINO's INT8 kernels pay off with VNNI. onnxruntime and torch trade places with the model
size. No ranking written in advance holds on every x86 CPU, so ``auto`` measures.

How:
1. Candidates. With a GPU backend available, the highest-ranked GPU backend is taken without a trial. On the CPU,
   every installed backend lists the precisions worth trying here (:attr:`BackendSpec.precisions`): native ones
   only (bf16 only with bf16 instructions) and int8 only where the model's INT8 graph passed its quality gate
   on that backend. An explicit ``precision`` option keeps only that precision.
2. Parity. Each fp32 or bf16 variant scores a few structured images, and its scores are compared with PyTorch
   fp32 eager (the reference): 1e-3 for fp32, 6e-2 for bf16, the bars of ``bench/backend_parity.py``. A variant
   that misses its bar is never picked. INT8 variants were judged on the test split by their quality gate.
3. Timing. The median of batch-1 calls over about ``TRIAL_S`` seconds, after warm-up calls.
4. Cache. The result goes to ``<model>/../.engines/<model>/auto-<key>.json``, beside the TensorRT plans. The
   key covers the CPU (model, flags, ``$LINECAM_CPU_ISA``), the thread count, the model's file hashes and the
   candidates, so another machine, model or package set runs its own trial. ``LINECAM_AUTO_TRIAL=refresh``
   redoes a cached trial. ``linecam backends --model DIR`` shows the trial and the choice.

The choice and its reason are logged at start and kept on the detector as ``auto_choice``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linecam.backends.base import BackendSpec, BackendUnavailableError, Detector, backend_specs
from linecam.backends.modelfiles import model_cache_dir, read_card
from linecam.hardware import cpu_summary, resolve_precision, why_fp32_is_faster

log = logging.getLogger(__name__)

TRIAL_S = 0.6
WARMUP_CALLS = 3
MIN_CALLS = 5
#: largest |score - PyTorch fp32 eager| a variant may show to be a candidate (int8: its quality gate instead).
PARITY_TOLERANCE = {"fp32": 1e-3, "bf16": 6e-2}
REFRESH_ENV = "LINECAM_AUTO_TRIAL"
CACHE_VERSION = 1

__all__ = ["AutoChoice", "REFRESH_ENV", "TrialRow", "Variant", "candidates", "choose_detector", "trial_cache_file"]


@dataclass(frozen=True)
class Variant:
    """One backend at one precision."""

    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


@dataclass
class TrialRow:
    """What the trial found for one variant: its batch-1 time, or why it is not a candidate."""

    backend: str
    precision: str
    ms_per_image: float | None = None
    max_abs_diff: float | None = None
    excluded: str | None = None


@dataclass
class AutoChoice:
    """The variant ``auto`` picked, the figures it picked it on, and whether they came from the cache."""

    backend: str
    precision: str
    ms_per_image: float | None
    reason: str
    trial: list[TrialRow] = field(default_factory=list)
    cached_in: str | None = None

    def line(self) -> str:
        """One start-up line, e.g. ``auto: torch-cpu fp32, 41 ms/img at batch 1 (...)``."""
        speed = f", {self.ms_per_image:.0f} ms/img at batch 1" if self.ms_per_image is not None else ""
        source = f"; trial cached in {self.cached_in}" if self.cached_in else ""
        return f"auto: {self.backend} {self.precision}{speed} ({self.reason}{source})"


def _available(model_dir: Path, cpu: bool) -> list[BackendSpec]:
    """The backends that can run ``model_dir`` here, on the CPU or on a GPU, highest rank first."""
    specs = sorted(backend_specs().values(), key=lambda s: -s.speed_rank)
    return [s for s in specs if (s.device == "cpu") == cpu and s.probe(model_dir) is None]


def candidates(model_dir: Path, precision: str | None = None) -> list[Variant]:
    """The CPU variants worth a trial here for ``model_dir`` (``precision``: only that one), fastest rank first."""
    out = []
    for spec in _available(model_dir, cpu=True):
        listed = spec.precisions(model_dir) if spec.precisions is not None else ["auto"]
        out += [Variant(spec.name, p) for p in listed if precision in (None, "auto", p)]
    return out


def trial_cache_file(model_dir: Path, variants: list[Variant], threads: int | None) -> Path:
    """Where the trial for this machine, model, thread count and candidate set is cached."""
    card, _ = read_card(model_dir)
    cpu = cpu_summary()
    key = json.dumps({"v": CACHE_VERSION, "cpu": [cpu["model"], cpu["flags"], cpu.get("LINECAM_CPU_ISA")],
                      "cores": os.cpu_count(), "threads": threads, "files": sorted(dict(card.files).items()),
                      "variants": [v.label for v in variants]}, sort_keys=True)
    return model_cache_dir(model_dir) / f"auto-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _read_cache(path: Path, variants: list[Variant]) -> AutoChoice | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        choice = AutoChoice(**{**data, "trial": [TrialRow(**row) for row in data.get("trial", [])]})
    except (OSError, ValueError, TypeError):
        return None
    if Variant(choice.backend, choice.precision) not in variants:
        return None
    choice.cached_in = str(path)
    return choice


def _write_cache(path: Path, choice: AutoChoice) -> None:
    from linecam.files import atomic_write

    record = {k: v for k, v in asdict(choice).items() if k != "cached_in"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(record, indent=1) + "\n").encode())
    except OSError as exc:  # a read-only model store still runs; the trial is repeated at the next start
        log.warning("auto: cannot cache the trial in %s (%s); it runs again at the next start", path, exc)


def _open(model_dir: Path, variant: Variant, options: dict[str, Any]) -> Detector:
    spec = backend_specs()[variant.backend]
    extra = {} if variant.precision == "auto" else {"precision": variant.precision}
    return spec.factory(model_dir, **extra, **options)


def _reference(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """PyTorch fp32 eager scores: what every variant's parity is measured against."""
    import torch

    from linecam.backends.graph import InferenceGraph
    from linecam.backends.torch_common import load_grdnet

    grdnet, size, _ = load_grdnet(model_dir)
    graph = InferenceGraph(grdnet.float(), size).eval()
    with torch.inference_mode():
        scores, _ = graph(torch.from_numpy(images))
    return scores.numpy().astype(np.float64)


def _time_batch1(detector: Detector, image: np.ndarray) -> float:
    for _ in range(WARMUP_CALLS):
        detector.detect(image)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_CALLS or time.perf_counter() - start < TRIAL_S:
        t0 = time.perf_counter()
        detector.detect(image)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _reason(best: TrialRow, rows: list[TrialRow]) -> str:
    others = ", ".join(f"{r.backend} {r.precision} {r.ms_per_image:.0f} ms" for r in rows
                       if r is not best and r.ms_per_image is not None)
    excluded = "; ".join(f"{r.backend} {r.precision} excluded: {r.excluded}" for r in rows if r.excluded)
    parts = [f"fastest in a timed trial{': ' + others if others else ''}"]
    if best.precision == "fp32":
        why = why_fp32_is_faster()
        if why is not None:
            parts.append(why)
    if excluded:
        parts.append(excluded)
    return "; ".join(parts)


def _run_trial(model_dir: Path, variants: list[Variant], options: dict[str, Any]) -> tuple[AutoChoice, Detector]:
    """Open, check and time every variant; keep the winner open -> (choice, its detector)."""
    from linecam.backends.export import structured_images

    card, _ = read_card(model_dir)
    size = (int(card.input_size[0]), int(card.input_size[1]))
    images = structured_images(3, size, seed=11)
    reference = _reference(model_dir, images) if any(v.precision != "int8" for v in variants) else None
    rows: list[TrialRow] = []
    best: tuple[float, TrialRow, Detector] | None = None
    for variant in variants:
        row = TrialRow(variant.backend, variant.precision)
        rows.append(row)
        try:
            detector = _open(model_dir, variant, options)
        except TypeError as exc:  # an option this backend does not take (e.g. torch's ``mode``)
            row.excluded = f"does not take these options ({exc})"
            continue
        except Exception as exc:
            row.excluded = f"cannot open: {exc}"
            continue
        keep = False
        try:
            resolved = getattr(detector, "precision", variant.precision)
            tolerance = PARITY_TOLERANCE.get(str(resolved))
            if reference is not None and tolerance is not None:
                row.max_abs_diff = float(np.abs(detector.detect(images).scores - reference).max())
                if not row.max_abs_diff <= tolerance:
                    row.excluded = f"scores differ from fp32 by {row.max_abs_diff:.3g} (> {tolerance:g})"
                    continue
            row.ms_per_image = _time_batch1(detector, images[:1])
            if best is None or row.ms_per_image < best[0]:
                if best is not None:
                    best[2].close()
                best = (row.ms_per_image, row, detector)
                keep = True
        except Exception as exc:
            row.excluded = f"failed in the trial: {exc}"
        finally:
            if not keep:
                detector.close()
    if best is None:
        raise BackendUnavailableError(f"auto: no backend passed its trial for {model_dir}: "
                                      + "; ".join(f"{r.backend} {r.precision}: {r.excluded}" for r in rows))
    _, winner, detector = best
    choice = AutoChoice(winner.backend, winner.precision, round(winner.ms_per_image or 0.0, 2),
                        _reason(winner, rows), rows)
    return choice, detector


def choose_detector(model_dir: Path, **options: Any) -> Detector:
    """Open ``model_dir`` with the variant ``auto`` picks here (see the module docstring)."""
    model_dir = Path(model_dir)
    requested = options.pop("precision", None)
    gpu = _available(model_dir, cpu=False)
    if gpu:
        detector = gpu[0].factory(model_dir, **({"precision": requested} if requested else {}), **options)
        choice = AutoChoice(gpu[0].name, str(getattr(detector, "precision", requested or "default")), None,
                            "a GPU backend is available: highest ranked, no CPU trial")
    else:
        if requested == "bf16":
            resolve_precision(requested, "cpu")  # ValueError naming why, on a CPU without bf16 instructions
        variants = candidates(model_dir, requested)
        if not variants:
            reasons = "; ".join(f"{n}: {s.probe(model_dir) or 'no precision ' + str(requested)}"
                                for n, s in backend_specs().items())
            raise BackendUnavailableError(f"no inference backend can run {model_dir} here ({reasons})")
        if len(variants) == 1:
            detector = _open(model_dir, variants[0], options)
            choice = AutoChoice(variants[0].backend, str(getattr(detector, "precision", variants[0].precision)),
                                None, "the only candidate here" + (f"; {why_fp32_is_faster()}"
                                                                   if why_fp32_is_faster() else ""))
        else:
            cache = trial_cache_file(model_dir, variants, options.get("threads"))
            cached = None if os.environ.get(REFRESH_ENV) == "refresh" else _read_cache(cache, variants)
            if cached is not None:
                choice = cached
                detector = _open(model_dir, Variant(choice.backend, choice.precision), options)
            else:
                choice, detector = _run_trial(model_dir, variants, options)
                _write_cache(cache, choice)
    log.info("%s: %s", model_dir, choice.line())
    detector.auto_choice = choice  # type: ignore[attr-defined]
    return detector
