"""ONNX export of the whole inference graph (preprocessing + generator + U-Net + scoring head).

``linecam export --model DIR`` writes ``DIR/model.onnx`` (fp32; what onnxruntime runs and what TensorRT
builds from on TensorRT 10) and by default ``DIR/model.fp16.onnx`` (the same graph with the network cast to
fp16 inside the graph: what a *strongly typed* TensorRT network needs, since TensorRT 11 removed the FP16
builder flag). Both have a dynamic batch (1..max_batch) and dynamic frame height/width (a fixed-size Resize
to the model size sits in the graph). Before the card records their sha256 the export is checked:

* ``onnx.checker`` (full check, with shape inference),
* onnxruntime vs PyTorch fp32 eager on random, structured and (when ``DIR/golden/`` exists) real images:
  the largest absolute score difference is printed and must stay below ``tolerance`` (1e-3).

The fp16 variant cannot be run by onnxruntime on CPU; it is checked structurally here and numerically by
``bench/gpu.sh`` on a GPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from linecam.backends.graph import InferenceGraph
from linecam.backends.inputs import to_rgb
from linecam.backends.modelfiles import ONNX_FP16_NAME, ONNX_NAME, read_golden_images
from linecam.backends.onnxrt import (
    INPUT_IMAGES,
    INPUT_MASK,
    OUTPUT_MAPS,
    OUTPUT_PROB,
    OUTPUT_SCORES,
    OnnxRuntimeDetector,
)
from linecam.progress import phase

DEFAULT_OPSET = 18
DEFAULT_MAX_BATCH = 64
PARITY_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how close it is to PyTorch fp32."""

    onnx_path: Path
    sha256: str
    max_abs_diff: float
    golden_images: int
    golden_max_abs_diff: float | None
    fp16_path: Path | None


def export_graph(
    grdnet: nn.Module,
    image_size: tuple[int, int],
    path: Path,
    opset: int = DEFAULT_OPSET,
    max_batch: int = DEFAULT_MAX_BATCH,
    dtype: torch.dtype = torch.float32,
    with_prob: bool = True,
) -> Path:
    """Export ``InferenceGraph(grdnet)`` running in ``dtype`` to ``path`` (single file, no external data).

    ``with_prob`` adds the third output ``prob`` (the raw probability map evaluation reads); the fp16 variant for
    TensorRT is exported without it, since the line only reads scores and smoothed maps."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    if max_batch < 2:
        raise ValueError(f"max_batch must be >= 2 for a dynamic batch, got {max_batch}")
    net = grdnet.eval().to(device="cpu", dtype=dtype)
    graph = InferenceGraph(net, image_size, compute_dtype=dtype, always_resize=True, with_prob=with_prob).eval()
    h, w = image_size
    # Example sizes differ from the model size so the exporter keeps height/width symbolic.
    images = torch.zeros((2, h + 8, w + 4, 3), dtype=torch.uint8)
    mask = torch.ones((2, 1, h // 2 + 2, w // 2 + 6), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    height = torch.export.Dim("height", min=2, max=16384)
    width = torch.export.Dim("width", min=2, max=16384)
    mask_h = torch.export.Dim("mask_height", min=2, max=16384)
    mask_w = torch.export.Dim("mask_width", min=2, max=16384)
    dynamic_shapes = {
        "images": {0: batch, 1: height, 2: width},
        "mask": {0: batch, 2: mask_h, 3: mask_w},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (images, mask),
            input_names=[INPUT_IMAGES, INPUT_MASK],
            output_names=[OUTPUT_SCORES, OUTPUT_MAPS, *([OUTPUT_PROB] if with_prob else [])],
            opset_version=opset,
            dynamo=True,
            verbose=False,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
        )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(path), external_data=False)
    return path


def check_onnx(path: Path) -> None:
    """Full onnx.checker pass (with shape inference) and the I/O contract the backends rely on."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker failed: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_IMAGES, INPUT_MASK] or outputs not in ([OUTPUT_SCORES, OUTPUT_MAPS],
                                                             [OUTPUT_SCORES, OUTPUT_MAPS, OUTPUT_PROB]):
        raise ExportError(f"{path}: unexpected inputs {inputs} / outputs {outputs}")
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):
        raise ExportError(f"{path}: batch dimension is fixed to {batch_dim.dim_value}, expected dynamic")


def structured_images(
    count: int, size: tuple[int, int], blobs: bool = True, seed: int = 0
) -> np.ndarray:
    """(count, H, W, 3) uint8 smooth sinusoidal products, each with one random-colour disc when ``blobs``.

    A stand-in for real frames in parity and ranking checks: smooth areas plus a sharp local anomaly.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    out = np.empty((count, h, w, 3), dtype=np.uint8)
    for k in range(count):
        phase = rng.uniform(0, 1)
        base = 0.5 + 0.3 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 2.0) + yy + phase))
        img = np.stack([base, base * 0.8, 1.0 - base], axis=-1)
        if blobs:
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.06, 0.15)
            img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = rng.uniform(0, 1, size=3)
        out[k] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def parity_images(image_size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Batches to compare on: uniform noise, smooth structure with blobs, and a non-model-size frame."""
    rng = np.random.default_rng(seed)
    h, w = image_size
    noise = rng.integers(0, 256, size=(3, h, w, 3), dtype=np.uint8)
    other_size = rng.integers(0, 256, size=(1, h + h // 2, w - w // 4, 3), dtype=np.uint8)
    return [noise, structured_images(3, image_size, seed=seed), other_size]


def max_score_difference(
    onnx_path: Path, grdnet: nn.Module, image_size: tuple[int, int], batches: list[np.ndarray]
) -> float:
    """Largest |score_onnxruntime - score_torch_fp32_eager| over ``batches`` (run with and without a mask)."""
    reference = InferenceGraph(grdnet.eval().float(), image_size).eval()
    session = OnnxRuntimeDetector(onnx_path, image_size, providers=["CPUExecutionProvider"])
    worst = 0.0
    try:
        for batch in batches:
            rgb = to_rgb(batch)
            mask = np.zeros((1, batch.shape[1], batch.shape[2]), dtype=np.uint8)
            mask[:, : batch.shape[1] * 3 // 4] = 1
            with torch.inference_mode():
                ref_plain = reference(torch.from_numpy(rgb))[0].numpy()
                ref_mask = reference(torch.from_numpy(rgb), torch.from_numpy(mask[:, None].astype(np.float32)))
            got_plain = session.detect(batch).scores
            got_mask = session.detect(batch, mask).scores
            worst = max(
                worst,
                float(np.abs(got_plain - ref_plain).max()),
                float(np.abs(got_mask - ref_mask[0].numpy()).max()),
            )
    finally:
        session.close()
    return worst


def export_model_dir(
    model_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    max_batch: int = DEFAULT_MAX_BATCH,
    fp16: bool = True,
    tolerance: float = PARITY_TOLERANCE,
    progress: bool = False,
) -> ExportReport:
    """Export, verify and register ``model.onnx`` (and ``model.fp16.onnx``) in ``model_dir``'s card.

    Each file is written under a temporary name and only renamed into place once it passed its checks, so
    a failed export never leaves a half-checked ``model.onnx`` behind. ``progress`` prints each phase as it
    starts and ends (the CLI's output; an export takes tens of seconds).
    """
    import os

    from linecam.grdnet.modeldir import file_sha256, load_model_dir, published_record, register_file

    model_dir = Path(model_dir)
    if published_record(model_dir) is not None:
        raise ExportError(f"{model_dir} is a published model version and is never rewritten (publishing exported "
                          "its model.onnx already); export a working copy and publish that as a new version")
    grdnet, card = load_model_dir(model_dir, verify=True)
    size = (int(card.input_size[0]), int(card.input_size[1]))
    onnx_path = model_dir / ONNX_NAME
    with phase(f"export: tracing {model_dir} to ONNX (torch.export)", enabled=progress):
        tmp = export_graph(grdnet, size, model_dir / f".{ONNX_NAME}.tmp", opset=opset, max_batch=max_batch)
    try:
        with phase("export: checking the graph and its scores against torch fp32", enabled=progress):
            check_onnx(tmp)
            diff = max_score_difference(tmp, grdnet, size, parity_images(size))
            try:
                golden = [image[None] for image in read_golden_images(model_dir)]
            except ValueError as exc:
                raise ExportError(str(exc)) from None
            golden_diff = max_score_difference(tmp, grdnet, size, golden) if golden else None
        worst = max(diff, golden_diff or 0.0)
        if not worst <= tolerance:
            raise ExportError(
                f"{onnx_path}: onnxruntime scores differ from PyTorch fp32 by {worst:.3g} (> {tolerance:g}); "
                "nothing was written"
            )
        fp16_tmp: Path | None = None
        if fp16:
            with phase("export: the fp16 variant for TensorRT", enabled=progress):
                grdnet16, _ = load_model_dir(model_dir, verify=True)
                fp16_tmp = export_graph(
                    grdnet16, size, model_dir / f".{ONNX_FP16_NAME}.tmp", opset, max_batch, dtype=torch.float16,
                    with_prob=False,
                )
                check_onnx(fp16_tmp)
    except BaseException:
        for leftover in model_dir.glob(".model*.onnx.tmp"):
            leftover.unlink(missing_ok=True)
        raise
    os.replace(tmp, onnx_path)
    register_file(model_dir, ONNX_NAME)
    fp16_path: Path | None = None
    if fp16_tmp is not None:
        fp16_path = model_dir / ONNX_FP16_NAME
        os.replace(fp16_tmp, fp16_path)
        register_file(model_dir, ONNX_FP16_NAME)
    return ExportReport(
        onnx_path=onnx_path,
        sha256=file_sha256(onnx_path),
        max_abs_diff=diff,
        golden_images=len(golden),
        golden_max_abs_diff=golden_diff,
        fp16_path=fp16_path,
    )
