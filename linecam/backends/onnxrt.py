"""onnxruntime backend: runs the exported ``model.onnx`` (preprocessing + GRD-Net + scoring head in one graph).

The ONNX graph takes uint8 RGB (N, H, W, 3) of any size and a float mask (N, 1, h, w) and returns
``scores`` (N,) and ``maps`` (N, 1, S, S). Gray and RGBa frames are mapped to 3 channels with one vectorised
numpy view/copy before the call (the exported graph has a fixed channel count). Without a caller mask the
backend feeds a cached all-ones mask, so one graph serves both cases.

Options: ``threads`` (intra-op threads), ``providers`` (default: CUDA when onnxruntime-gpu sees a GPU, then CPU;
a provider named explicitly that this onnxruntime lacks is an error, because onnxruntime itself would only warn
and quietly run on the CPU), ``spin`` (default True, onnxruntime's own default: the intra-op threads busy-wait
after each run for the next one). ``spin=False`` lets them sleep: on a 2-core machine the spinning threads took
CPU from the next thing that ran, so a fp32 eager torch call timed right after an onnxruntime call took 55-62 ms
instead of 31 ms (``bench/infer.py`` times its variants round-robin and turns spinning off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from linecam.backends.base import BackendSpec, BackendUnavailableError, Detection
from linecam.backends.inputs import GraphFeeds
from linecam.backends.modelfiles import ONNX_NAME, int8_refusal, onnx_for_precision, read_card

INPUT_IMAGES = "images"
INPUT_MASK = "mask"
OUTPUT_SCORES = "scores"
OUTPUT_MAPS = "maps"
#: the raw probability map (N, 1, S, S): exported since evaluation scores through the backends; older exports
#: lack it, and asking them for it is an error that says to re-export.
OUTPUT_PROB = "prob"


def no_prob_output(onnx_path: Path) -> str:
    """The error for an export made before the raw probability output existed."""
    return (f"{onnx_path} has no '{OUTPUT_PROB}' output (exported by an older linecam): re-export it with "
            "`linecam export` on a working copy to evaluate on this backend")


def default_providers() -> list[str]:
    """CUDA first when onnxruntime-gpu is installed and sees a device, CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeDetector:
    """Detector over an onnxruntime InferenceSession of the exported graph."""

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        input_size: tuple[int, int],
        model_version: str = "unversioned",
        threads: int | None = None,
        providers: list[str] | None = None,
        spin: bool = True,
        precision: str = "fp32",
    ) -> None:
        import onnxruntime as ort

        self.model_version = model_version
        self.input_size = (int(input_size[0]), int(input_size[1]))
        #: "fp32" or "int8": which graph the session runs (a label: the graph file decides).
        self.precision = precision
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"onnxruntime option threads must be >= 1, got {threads}")
            opts.intra_op_num_threads = int(threads)
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is not None:
            available = ort.get_available_providers()
            missing = [p for p in providers if p not in available]
            if missing:
                raise BackendUnavailableError(
                    f"onnxruntime option providers: {', '.join(missing)} not available in this onnxruntime "
                    f"(available: {', '.join(available)})")
        self.providers = list(providers) if providers is not None else default_providers()
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=self.providers)
        names = {i.name for i in self.session.get_inputs()}
        if names != {INPUT_IMAGES, INPUT_MASK}:
            raise ValueError(f"{onnx_path}: expected inputs {{images, mask}}, found {sorted(names)}")
        self.has_prob = OUTPUT_PROB in {o.name for o in self.session.get_outputs()}
        self._onnx_path = Path(onnx_path)
        self._feeds = GraphFeeds(self.input_size)
        self._closed = False

    def detect(
        self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False,
        return_prob: bool = False,
    ) -> Detection:
        if self._closed:
            raise RuntimeError(f"onnxruntime detector for {self.model_version} is closed")
        if return_prob and not self.has_prob:
            raise ValueError(no_prob_output(self._onnx_path))
        imgs, mask = self._feeds(images, masks)
        outputs = [OUTPUT_SCORES, *([OUTPUT_MAPS] if return_maps else []), *([OUTPUT_PROB] if return_prob else [])]
        result = iter(self.session.run(outputs, {INPUT_IMAGES: imgs, INPUT_MASK: mask}))
        scores = np.asarray(next(result), dtype=np.float32).reshape(-1)
        maps = np.asarray(next(result), dtype=np.float32)[:, 0] if return_maps else None
        prob = np.asarray(next(result), dtype=np.float32)[:, 0] if return_prob else None
        return Detection(scores=scores, maps=maps, prob=prob)

    def close(self) -> None:
        self._closed = True
        self._feeds.clear()
        del self.session


PRECISIONS = ("auto", "fp32", "int8")


def open_onnxruntime(model_dir: Path, precision: str = "auto", **options: Any) -> OnnxRuntimeDetector:
    """Registry factory: the ONNX file for ``precision`` ("auto" and "fp32": model.onnx; "int8": model.int8.onnx
    where its quality gate passed on onnxruntime), checked against the card's sha256, then a session on it."""
    if precision not in PRECISIONS:
        raise ValueError(f"onnxruntime option precision must be one of {PRECISIONS}, got {precision!r}")
    card, version = read_card(model_dir)
    resolved = "int8" if precision == "int8" else "fp32"
    onnx_path = onnx_for_precision(model_dir, card, resolved, "onnxruntime")
    h, w = card.input_size
    return OnnxRuntimeDetector(onnx_path, (int(h), int(w)), model_version=version, precision=resolved, **options)


def _probe(model_dir: Path | None) -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    if model_dir is not None and not (model_dir / ONNX_NAME).is_file():
        return f"{model_dir / ONNX_NAME} does not exist (run `linecam export --model {model_dir}`)"
    return None


def _precisions(model_dir: Path) -> list[str]:
    """fp32; int8 where the card's INT8 graph passed its quality gate on onnxruntime."""
    card, _ = read_card(model_dir)
    return ["fp32", "int8"] if int8_refusal(card, "onnxruntime") is None else ["fp32"]


SPEC = BackendSpec(
    name="onnxruntime",
    factory=open_onnxruntime,
    probe=_probe,
    speed_rank=10,
    description="onnxruntime (CPU, or CUDA with onnxruntime-gpu) on the exported model.onnx",
    precisions=_precisions,
)
