"""The one detector interface every inference backend implements, and the registry that picks one.

The runtime only ever talks to a :class:`Detector`; which engine sits behind it (torch on CPU, onnxruntime,
torch on CUDA, TensorRT) is a configuration choice resolved here, by name, through a registry. Backends
register themselves with :func:`register_backend`; nothing in this package branches on backend names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from linecam.plugins import Registry

__all__ = [
    "BACKENDS",
    "BackendSpec",
    "BackendUnavailableError",
    "Detection",
    "Detector",
    "available_backends",
    "backend_specs",
    "create_detector",
    "register_backend",
]


@dataclass(frozen=True)
class Detection:
    """Result of one :meth:`Detector.detect` call.

    ``scores`` holds one float32 anomaly score per image (the scoring head's maximum of the 21x21-smoothed
    map). ``maps`` holds the smoothed maps at model size (N, H, W) when they were requested, else None:
    copying maps back from the device costs time the hot path does not need. ``prob`` holds the raw probability
    maps (N, H, W) when they were requested (evaluation's pixel metrics), else None.
    """

    scores: np.ndarray
    maps: np.ndarray | None = None
    prob: np.ndarray | None = None


@runtime_checkable
class Detector(Protocol):
    """What the inference worker needs from a backend, and nothing more."""

    backend: str
    model_version: str
    input_size: tuple[int, int]

    def detect(
        self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False
    ) -> Detection:
        """Score a batch of uint8 (N, H, W, C) images; ``masks`` are optional fixed masks (N|1, h, w).

        Backends that serve evaluation also take ``return_prob=True`` (the raw probability maps); a backend that
        cannot return them raises ValueError saying so.
        """
        ...

    def close(self) -> None:
        """Release device memory, sessions and threads; the detector is unusable afterwards."""
        ...


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (missing package, no GPU, no ONNX file...)."""


#: probe(model_dir) -> None when the backend can run here (for that model dir when given), else the reason.
Probe = Callable[[Path | None], str | None]
Factory = Callable[..., Detector]


@dataclass(frozen=True)
class BackendSpec:
    """One registry entry.

    ``device`` is where it computes: with a GPU backend available, ``backend="auto"`` takes the highest
    ``speed_rank`` among those (a GPU beats every CPU variant by far). On the CPU, ``auto`` times the variants
    that ``precisions(model_dir)`` lists on this machine (:mod:`linecam.backends.autoselect`); ``speed_rank``
    then only orders equal times and the listing.
    """

    name: str
    factory: Factory
    probe: Probe
    speed_rank: int
    description: str = ""
    device: str = "cpu"
    #: precisions worth a timed trial here for a model dir: native ones only, int8 only where its gate passed.
    precisions: Callable[[Path], list[str]] | None = None


#: the backends by name. Built-ins are registered by reference and imported on first use (each module must
#: import without the optional GPU packages); third parties call :func:`register_backend`.
BACKENDS: Registry[BackendSpec] = Registry("backend")
for _name, _target in (("torch-cpu", "linecam.backends.torch_cpu:SPEC"),
                       ("onnxruntime", "linecam.backends.onnxrt:SPEC"),
                       ("openvino", "linecam.backends.openvino_backend:SPEC"),
                       ("torch-cuda", "linecam.backends.torch_cuda:SPEC"),
                       ("tensorrt", "linecam.backends.tensorrt_backend:SPEC")):
    BACKENDS.add(_name, _target)


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a backend to the registry (third-party backends call this). Names must be unique."""
    BACKENDS.add(spec.name, spec)
    return spec


def backend_specs() -> dict[str, BackendSpec]:
    """All registered backends, available here or not, by name."""
    return BACKENDS.load_all()


def available_backends(model_dir: str | Path | None = None) -> list[str]:
    """Names of the backends that can run on this machine, fastest first.

    With ``model_dir``, backends that also need something from the model directory (an ``model.onnx``)
    are only listed when it is there.
    """
    path = Path(model_dir) if model_dir is not None else None
    specs = sorted(backend_specs().values(), key=lambda s: -s.speed_rank)
    return [s.name for s in specs if s.probe(path) is None]


def create_detector(model_dir: str | Path, backend: str = "auto", **options: Any) -> Detector:
    """Open the model in ``model_dir`` with the named backend (``"auto"``: the fastest correct one here, decided
    by a timed trial cached per machine and model, see :mod:`linecam.backends.autoselect`).

    ``options`` go to the backend's factory unchanged (e.g. ``threads``, ``precision``, ``max_batch``).
    Raises :class:`BackendUnavailableError` with the reason when the backend cannot run here, and
    ``ValueError`` for an unknown backend name.
    """
    path = Path(model_dir)
    specs = backend_specs()
    if backend == "auto":
        from linecam.backends.autoselect import choose_detector

        return choose_detector(path, **options)
    spec = specs.get(backend)
    if spec is None:
        raise ValueError(f"unknown backend {backend!r}; registered: {', '.join(sorted(specs))}")
    reason = spec.probe(path)
    if reason is not None:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {reason}")
    return spec.factory(path, **options)
