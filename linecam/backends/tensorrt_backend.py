"""tensorrt backend: an engine built from the exported ONNX on the target GPU, run with pycuda buffers.

Build (``linecam build-engine --model DIR [--cache DIR]``): parse ``model.fp16.onnx`` into a *strongly typed*
network (precision comes from the graph's own casts, the only mode TensorRT 11 has; TensorRT 10 supports
it too), add one optimisation profile (batch 1..max_batch, frame sides up to ``max_side``) and serialise
the plan. Without the fp16 variant, TensorRT 10 falls back to a weakly typed network with the FP16 flag.

Plans only run on the GPU architecture and TensorRT version that built them, so they are cached outside
the immutable model version folder, in ``<model_dir>/../.engines/<version>/`` (or ``cache_dir``), under a
name keyed by GPU name, compute capability, TensorRT version, precision and batch limit, next to a JSON
sidecar. Loading re-checks the sidecar against this machine and the ONNX file's sha256 and refuses any
mismatch with a message saying what differs.

Run: pycuda device buffers sized for the profile's maximum, a pycuda stream, pinned host buffers,
``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3``.

``tensorrt`` and ``pycuda`` are optional (``pip install linecam[gpu]``) and imported lazily.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linecam.backends.base import BackendSpec, BackendUnavailableError, Detection
from linecam.backends.inputs import check_images, check_masks, to_rgb
from linecam.backends.modelfiles import CACHE_DIR, ONNX_FP16_NAME, ONNX_NAME, model_cache_dir, read_card, verified_file
from linecam.backends.onnxrt import INPUT_IMAGES, INPUT_MASK, OUTPUT_MAPS, OUTPUT_PROB, OUTPUT_SCORES
from linecam.files import atomic_write

GPU_EXTRA_HINT = "tensorrt backend needs the 'gpu' extra (pip install 'linecam[gpu]': tensorrt, pycuda)"
ENGINES_DIR = CACHE_DIR
DEFAULT_MAX_BATCH = 64


def import_tensorrt() -> Any:
    """``import tensorrt`` or a :class:`BackendUnavailableError` that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"{GPU_EXTRA_HINT}: {exc}") from exc
    return trt


def import_pycuda() -> Any:
    """``pycuda.driver`` (initialised) or a :class:`BackendUnavailableError`."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailableError(f"{GPU_EXTRA_HINT}: {exc}") from exc
    try:
        cuda.init()
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError types
        raise BackendUnavailableError(f"tensorrt backend: CUDA driver initialisation failed: {exc}") from exc
    if cuda.Device.count() == 0:
        raise BackendUnavailableError("tensorrt backend: no CUDA device found")
    return cuda


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on; stored next to the plan and compared before loading it."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    onnx_file: str
    onnx_sha256: str
    precision: str
    max_batch: int
    max_side: int

    @property
    def file_stem(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower()
        return (
            f"{gpu}_sm{self.compute_capability.replace('.', '')}_trt{self.tensorrt_version}"
            f"_{self.precision}_b{self.max_batch}_s{self.max_side}"
        )

    def mismatches(self, other: EngineKey) -> list[str]:
        """Fields that differ from ``other`` as "field: plan X, here Y" strings."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: plan {mine[k]!r}, here {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def engine_cache_dir(model_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """Where plans for ``model_dir`` live: ``cache_dir`` or ``<model_dir>/../.engines/<version>/``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return model_cache_dir(model_dir)


def _device_identity(cuda: Any, device_index: int) -> tuple[str, str]:
    dev = cuda.Device(device_index)
    major, minor = dev.compute_capability()
    return str(dev.name()), f"{major}.{minor}"


def _choose_onnx(model_dir: Path, card: Any, precision: str, trt: Any) -> tuple[Path, bool]:
    """-> (verified ONNX path, strongly typed?) for the requested precision and TensorRT version."""
    major = int(str(trt.__version__).split(".")[0])
    if precision == "fp32":
        return verified_file(model_dir, card, ONNX_NAME, hint="run `linecam export` first"), True
    if (model_dir / ONNX_FP16_NAME).is_file():
        return verified_file(model_dir, card, ONNX_FP16_NAME), True
    if major >= 11:
        raise BackendUnavailableError(
            f"{model_dir / ONNX_FP16_NAME} is missing: TensorRT {trt.__version__} only builds strongly typed "
            "networks; re-export the model with `linecam export` (fp16 variant on by default)"
        )
    return verified_file(model_dir, card, ONNX_NAME, hint="run `linecam export` first"), False


def _engine_key(
    model_dir: Path, precision: str, max_batch: int, max_side: int, device_index: int
) -> tuple[EngineKey, Path, bool, Any]:
    trt = import_tensorrt()
    cuda = import_pycuda()
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"tensorrt option precision must be 'fp16' or 'fp32', got {precision!r}")
    card, _ = read_card(model_dir)
    onnx_path, strongly_typed = _choose_onnx(model_dir, card, precision, trt)
    gpu, cc = _device_identity(cuda, device_index)
    key = EngineKey(
        gpu_name=gpu,
        compute_capability=cc,
        tensorrt_version=str(trt.__version__),
        onnx_file=onnx_path.name,
        onnx_sha256=dict(card.files)[onnx_path.name],
        precision=precision,
        max_batch=int(max_batch),
        max_side=int(max_side),
    )
    return key, onnx_path, strongly_typed, card


def build_engine(
    model_dir: str | Path,
    cache_dir: str | Path | None = None,
    precision: str = "fp16",
    max_batch: int = DEFAULT_MAX_BATCH,
    max_side: int | None = None,
    workspace_gib: float = 4.0,
    device_index: int = 0,
    force: bool = False,
) -> Path:
    """Build (or reuse) the plan for ``model_dir`` on this GPU; return the plan path."""
    trt = import_tensorrt()
    model_dir = Path(model_dir)
    card, _ = read_card(model_dir)
    size_h, size_w = (int(v) for v in card.input_size)
    side = int(max_side) if max_side is not None else 2 * max(size_h, size_w)
    key, onnx_path, strongly_typed, _ = _engine_key(model_dir, precision, max_batch, side, device_index)
    out_dir = engine_cache_dir(model_dir, cache_dir)
    plan_path = out_dir / f"{key.file_stem}.plan"
    if plan_path.is_file() and not force:
        return plan_path
    out_dir.mkdir(parents=True, exist_ok=True)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10 weakly typed fallback only
    timing_path = out_dir / f"{key.file_stem}.timing"
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    opt_batch = max(1, min(8, int(max_batch)))
    profile.set_shape(
        INPUT_IMAGES, (1, 2, 2, 3), (opt_batch, size_h, size_w, 3), (int(max_batch), side, side, 3)
    )
    profile.set_shape(
        INPUT_MASK, (1, 1, 2, 2), (opt_batch, 1, size_h, size_w), (int(max_batch), 1, side, side)
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    atomic_write(plan_path, bytes(serialized), durable=True)
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    plan_path.with_suffix(".json").write_text(json.dumps(asdict(key), indent=2) + "\n")
    return plan_path


def check_plan(plan_path: Path, expected: EngineKey) -> None:
    """Refuse a plan whose sidecar does not match this GPU, TensorRT version and ONNX file."""
    meta_path = plan_path.with_suffix(".json")
    if not meta_path.is_file():
        raise ValueError(f"{plan_path}: no {meta_path.name} sidecar; cannot tell which GPU/TensorRT built it")
    try:
        found = EngineKey(**json.loads(meta_path.read_text()))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path}: unreadable engine sidecar: {exc}") from exc
    diffs = found.mismatches(expected)
    if diffs:
        raise ValueError(f"{plan_path} was built for another GPU/TensorRT/model: {'; '.join(diffs)}; rebuild it")


class TensorRTDetector:
    """Detector over a deserialised TensorRT engine; see the module docstring."""

    backend = "tensorrt"

    def __init__(
        self,
        model_dir: str | Path,
        cache_dir: str | Path | None = None,
        precision: str = "fp16",
        max_batch: int = DEFAULT_MAX_BATCH,
        max_side: int | None = None,
        device_index: int = 0,
        engine: str | Path | None = None,
        build: bool = True,
        threads: int | None = None,
    ) -> None:
        # ``threads`` is accepted because the worker passes it to every backend; TensorRT does all its
        # work on the GPU, so there is nothing to size with it.
        trt = import_tensorrt()
        cuda = import_pycuda()
        self._cuda = cuda
        model_dir = Path(model_dir)
        card, self.model_version = read_card(model_dir)
        self.input_size = (int(card.input_size[0]), int(card.input_size[1]))
        side = int(max_side) if max_side is not None else 2 * max(self.input_size)
        expected, _, _, _ = _engine_key(model_dir, precision, max_batch, side, device_index)
        if engine is not None:
            plan_path = Path(engine)
        elif build:
            plan_path = build_engine(model_dir, cache_dir, precision, max_batch, side, device_index=device_index)
        else:
            plan_path = engine_cache_dir(model_dir, cache_dir) / f"{expected.file_stem}.plan"
        if not plan_path.is_file():
            raise FileNotFoundError(f"{plan_path}: no engine; run `linecam build-engine --model {model_dir}`")
        check_plan(plan_path, expected)
        self.max_batch = int(max_batch)
        self.max_side = side

        self._ctx = cuda.Device(device_index).retain_primary_context()
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"{plan_path}: TensorRT could not deserialise the engine")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise RuntimeError(f"{plan_path}: TensorRT could not create an execution context")
            self.stream = cuda.Stream()
            h, w = self.input_size
            b = self.max_batch
            self._h_images = cuda.pagelocked_empty((b, side, side, 3), np.uint8)
            self._h_mask = cuda.pagelocked_empty((b, 1, side, side), np.float32)
            self._h_scores = cuda.pagelocked_empty((b,), np.float32)
            self._h_maps = cuda.pagelocked_empty((b, 1, h, w), np.float32)
            self._d_images = cuda.mem_alloc(self._h_images.nbytes)
            self._d_mask = cuda.mem_alloc(self._h_mask.nbytes)
            self._d_scores = cuda.mem_alloc(self._h_scores.nbytes)
            self._d_maps = cuda.mem_alloc(self._h_maps.nbytes)
            # An engine built from a model.onnx with the raw-map output has a third output tensor; every output
            # needs an address, so it gets a device buffer it writes into and nobody reads (the line never does).
            names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
            self._d_prob = cuda.mem_alloc(self._h_maps.nbytes) if OUTPUT_PROB in names else None
            # All-ones mask at model size for calls without a mask, uploaded once.
            self._d_ones = cuda.mem_alloc(b * h * w * 4)
            cuda.memcpy_htod(self._d_ones, np.ones((b, 1, h, w), np.float32))
        finally:
            self._ctx.pop()
        self._lock = threading.Lock()
        self._closed = False

    def _run_chunk(self, imgs: np.ndarray, mask: np.ndarray | None, return_maps: bool) -> tuple[Any, Any]:
        cuda = self._cuda
        n, ih, iw, _ = imgs.shape
        h, w = self.input_size
        # Copy only the bytes of this batch: flat views of the pinned buffers stay pinned.
        host_images = self._h_images.reshape(-1)[: imgs.size]
        host_images[:] = imgs.reshape(-1)
        cuda.memcpy_htod_async(self._d_images, host_images, self.stream)
        self.context.set_input_shape(INPUT_IMAGES, (n, ih, iw, 3))
        if mask is None:
            self.context.set_input_shape(INPUT_MASK, (n, 1, h, w))
            mask_addr = int(self._d_ones)
        else:
            full = np.broadcast_to(mask, (n, *mask.shape[1:]))
            host_mask = self._h_mask.reshape(-1)[: full.size]
            host_mask[:] = full.reshape(-1)
            cuda.memcpy_htod_async(self._d_mask, host_mask, self.stream)
            self.context.set_input_shape(INPUT_MASK, full.shape)
            mask_addr = int(self._d_mask)
        self.context.set_tensor_address(INPUT_IMAGES, int(self._d_images))
        self.context.set_tensor_address(INPUT_MASK, mask_addr)
        self.context.set_tensor_address(OUTPUT_SCORES, int(self._d_scores))
        self.context.set_tensor_address(OUTPUT_MAPS, int(self._d_maps))
        if self._d_prob is not None:
            self.context.set_tensor_address(OUTPUT_PROB, int(self._d_prob))
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        cuda.memcpy_dtoh_async(self._h_scores[:n], self._d_scores, self.stream)
        if return_maps:
            cuda.memcpy_dtoh_async(self._h_maps[:n], self._d_maps, self.stream)
        self.stream.synchronize()
        scores = self._h_scores[:n].copy()
        maps = self._h_maps[:n, 0].copy() if return_maps else None
        return scores, maps

    def detect(
        self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False,
        return_prob: bool = False,
    ) -> Detection:
        if self._closed:
            raise RuntimeError(f"tensorrt detector for {self.model_version} is closed")
        if return_prob:
            raise ValueError("the tensorrt backend does not return raw probability maps (the line never reads "
                             "them); evaluate with --backend torch-cuda")
        imgs = to_rgb(check_images(images))
        mask = check_masks(masks, imgs.shape[0])
        sides = (*imgs.shape[1:3], *(mask.shape[2:] if mask is not None else ()))
        if max(sides) > self.max_side:
            raise ValueError(f"tensorrt engine accepts frames/masks up to {self.max_side} px a side, got {sides}")
        scores, maps = [], []
        with self._lock:
            self._ctx.push()
            try:
                for start in range(0, imgs.shape[0], self.max_batch):
                    part = imgs[start : start + self.max_batch]
                    part_mask = mask
                    if mask is not None and mask.shape[0] > 1:
                        part_mask = mask[start : start + self.max_batch]
                    s, m = self._run_chunk(part, part_mask, return_maps)
                    scores.append(s)
                    maps.append(m)
            finally:
                self._ctx.pop()
        return Detection(
            scores=np.concatenate(scores).astype(np.float32),
            maps=np.concatenate(maps) if return_maps else None,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.push()
        try:
            for buf in (self._d_images, self._d_mask, self._d_scores, self._d_maps, self._d_ones, self._d_prob):
                if buf is not None:
                    buf.free()
            del self.context
            del self.engine
        finally:
            self._ctx.pop()
            self._ctx.detach()


def open_tensorrt(model_dir: Path, **options: Any) -> TensorRTDetector:
    """Registry factory: build or load the cached engine for this GPU and wrap it."""
    return TensorRTDetector(model_dir, **options)


def _probe(model_dir: Path | None) -> str | None:
    try:
        import_tensorrt()
        import_pycuda()
    except BackendUnavailableError as exc:
        return str(exc)
    if model_dir is not None and not (model_dir / ONNX_NAME).is_file():
        return f"{model_dir / ONNX_NAME} does not exist (run `linecam export --model {model_dir}`)"
    return None


SPEC = BackendSpec(
    name="tensorrt",
    factory=open_tensorrt,
    probe=_probe,
    speed_rank=40,
    description="TensorRT engine built from model.fp16.onnx on the target GPU",
    device="cuda",
)
