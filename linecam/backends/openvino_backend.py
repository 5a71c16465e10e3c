"""OpenVINO backend: runs the exported ``model.onnx`` (or its INT8 variant) with OpenVINO's CPU plugin.

Why OpenVINO: it is what anomalib's users deploy on CPUs, it runs on Intel and AMD alike, and its CPU plugin
picks kernels per instruction set (AVX2, AVX-512, VNNI, AMX) at load time. It reads the project's ONNX export
directly, so the graph (preprocessing + GRD-Net + scoring head) is the one every other backend runs.

Precision. OpenVINO's CPU plugin by default runs bf16 wherever the CPU has bf16 instructions, silently. This
backend never leaves that to the plugin: ``precision`` is resolved by :func:`linecam.hardware.resolve_precision`
(``auto`` = bf16 only with AMX, else fp32; an explicit ``bf16`` on a CPU without bf16 instructions is an error)
and passed as ``INFERENCE_PRECISION_HINT``. ``int8`` loads ``model.int8.onnx`` (quantize-dequantize graph from
``linecam quantize``), which OpenVINO runs with integer kernels; that file is in the card only when it passed
the INT8 quality gate.

Options: ``threads`` (``INFERENCE_NUM_THREADS``), ``precision`` ("auto", "fp32", "bf16", "int8"),
``performance_hint`` ("LATENCY", the line's case: one request at a time; or "THROUGHPUT").
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from linecam.backends.base import BackendSpec, Detection
from linecam.backends.inputs import GraphFeeds
from linecam.backends.modelfiles import ONNX_NAME, int8_refusal, onnx_for_precision, read_card
from linecam.backends.onnxrt import INPUT_IMAGES, INPUT_MASK, OUTPUT_MAPS, OUTPUT_PROB, OUTPUT_SCORES, no_prob_output
from linecam.hardware import native_bf16, resolve_precision

PRECISIONS = ("auto", "fp32", "bf16", "int8")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
#: OpenVINO's names of the compute precisions this backend asks for.
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the quantized ops run int8, the rest f32


def resolve_openvino_precision(precision: str) -> str:
    """``precision`` for this CPU: auto -> fp32 or bf16 (never emulated), int8 kept, bf16 checked."""
    if precision not in PRECISIONS:
        raise ValueError(f"openvino option precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8":
        return "int8"
    return resolve_precision(precision, "cpu")


class OpenVinoDetector:
    """Detector over an OpenVINO compiled model of the exported graph (one infer request, used under a lock)."""

    backend = "openvino"

    def __init__(
        self,
        onnx_path: str | Path,
        input_size: tuple[int, int],
        model_version: str = "unversioned",
        precision: str = "fp32",
        threads: int | None = None,
        performance_hint: str = "LATENCY",
    ) -> None:
        import openvino as ov

        if performance_hint not in PERFORMANCE_HINTS:
            raise ValueError(f"openvino option performance_hint must be one of {PERFORMANCE_HINTS}, "
                             f"got {performance_hint!r}")
        self.model_version = model_version
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.precision = resolve_openvino_precision(precision)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[self.precision],
                                  "PERFORMANCE_HINT": performance_hint}
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"openvino option threads must be >= 1, got {threads}")
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        names = {name for port in self.compiled.inputs for name in port.get_names()}
        if not {INPUT_IMAGES, INPUT_MASK} <= names:
            raise ValueError(f"{onnx_path}: expected inputs {{images, mask}}, found {sorted(names)}")
        self._request = self.compiled.create_infer_request()
        self.has_prob = OUTPUT_PROB in {name for port in self.compiled.outputs for name in port.get_names()}
        self._onnx_path = Path(onnx_path)
        self._feeds = GraphFeeds(self.input_size)
        self._lock = threading.Lock()
        self._closed = False

    def compiled_precision(self) -> str:
        """The precision OpenVINO compiled the model for, read back from the plugin ("f32", "bf16", ...)."""
        return str(self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string())

    def detect(
        self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False,
        return_prob: bool = False,
    ) -> Detection:
        if self._closed:
            raise RuntimeError(f"openvino detector for {self.model_version} is closed")
        if return_prob and not self.has_prob:
            raise ValueError(no_prob_output(self._onnx_path))
        imgs, mask = self._feeds(images, masks)
        with self._lock:
            self._request.infer({INPUT_IMAGES: imgs, INPUT_MASK: mask})
            scores = np.array(self._request.get_tensor(OUTPUT_SCORES).data, dtype=np.float32).reshape(-1)
            maps = (np.array(self._request.get_tensor(OUTPUT_MAPS).data, dtype=np.float32)[:, 0] if return_maps
                    else None)
            prob = (np.array(self._request.get_tensor(OUTPUT_PROB).data, dtype=np.float32)[:, 0] if return_prob
                    else None)
        return Detection(scores=scores, maps=maps, prob=prob)

    def close(self) -> None:
        self._closed = True
        self._feeds.clear()
        self._request = None
        self.compiled = None


def open_openvino(model_dir: Path, precision: str = "auto", **options: Any) -> OpenVinoDetector:
    """Registry factory: the ONNX file for ``precision`` (sha256-checked against the card), compiled for the CPU."""
    card, version = read_card(model_dir)
    resolved = resolve_openvino_precision(precision)
    onnx_path = onnx_for_precision(model_dir, card, resolved, "openvino")
    h, w = card.input_size
    return OpenVinoDetector(onnx_path, (int(h), int(w)), model_version=version, precision=resolved, **options)


def _probe(model_dir: Path | None) -> str | None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed (pip install 'linecam[openvino]')"
    if model_dir is not None and not (model_dir / ONNX_NAME).is_file():
        return f"{model_dir / ONNX_NAME} does not exist (run `linecam export --model {model_dir}`)"
    return None


def _precisions(model_dir: Path) -> list[str]:
    """fp32; bf16 where native; int8 where the card's INT8 graph passed its quality gate on OpenVINO."""
    card, _ = read_card(model_dir)
    out = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    return out + (["int8"] if int8_refusal(card, "openvino") is None else [])


SPEC = BackendSpec(
    name="openvino",
    factory=open_openvino,
    probe=_probe,
    speed_rank=15,
    description="OpenVINO CPU plugin on the exported model.onnx (fp32, bf16 with AMX, int8 after `linecam quantize`)",
    precisions=_precisions,
)
