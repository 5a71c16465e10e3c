"""linecam.backends: one Detector interface over torch (CPU/CUDA), onnxruntime and TensorRT.

Importing this package is cheap; backends register themselves when first listed or created.
"""

from linecam.backends.base import (
    BackendSpec,
    BackendUnavailableError,
    Detection,
    Detector,
    available_backends,
    backend_specs,
    create_detector,
    register_backend,
)

__all__ = [
    "BackendSpec",
    "BackendUnavailableError",
    "Detection",
    "Detector",
    "available_backends",
    "backend_specs",
    "create_detector",
    "register_backend",
]
