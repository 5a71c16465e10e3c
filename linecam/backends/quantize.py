"""INT8: quantize the exported graph, then let it serve only where it kept the model's quality.

Why a gate and not just a file: INT8 rounds every activation to 256 levels. Where that costs quality it costs it
silently, as scores that rank defects a little worse or sit a little higher on good products, and on a line that
means escapes or false rejects nobody sees. So an INT8 graph is published only with its evidence. On the
dataset's ``test`` split, its image AUROC must stay within 0.005 of the fp32 graph on the same backend. At the
card's calibrated threshold, its false-reject rate and its escape rate must each stay within 0.5 points of
fp32. Each backend is judged on its own, because onnxruntime and OpenVINO run the same INT8 graph with different
kernels. A backend whose gate failed never loads the file (:func:`linecam.backends.modelfiles.onnx_for_precision`),
so ``auto`` never picks it there.

How: onnxruntime's static quantization writes a quantize-dequantize (QDQ) graph. Only the convolutions are
quantized: weights as int8 per output channel, activations as uint8 with min/max ranges calibrated on ``val``
good images (the split the threshold comes from, never ``test``). The convolutions whose output goes through a
sigmoid stay in float: the generator's reconstruction head and the discriminative U-Net's logit head, whose
outputs are the probabilities everything after them reads. Preprocessing and the scoring head stay in float too.
On the demo model (test split, OpenVINO, 2-core Xeon with AVX512-VNNI, 2026-12-02) quantizing every convolution
moved the escape rate from 0.050 to 0.060 and failed the gate; keeping the two heads in float gave 0.055 and
passed at the same speed (20.6 against 20.4 ms per image, fp32 35.2 ms). Percentile calibration was worse on
both rates. Both onnxruntime and OpenVINO read QDQ graphs and run their int8 kernels on them.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linecam.backends.base import Detector, backend_specs
from linecam.backends.modelfiles import ONNX_INT8_NAME, ONNX_NAME, read_card, verified_file
from linecam.backends.onnxrt import INPUT_IMAGES, INPUT_MASK
from linecam.decision import rejects
from linecam.hardware import cpu_summary

#: the quality bars of the gate (the issue's: AUROC within 0.005, each rate within 0.5 points).
AUROC_BAR = 0.005
RATE_BAR = 0.005
#: backends that run ONNX graphs on the CPU and are judged by the gate when installed.
GATE_BACKENDS = ("onnxruntime", "openvino")
DEFAULT_CALIBRATION_IMAGES = 64

__all__ = ["AUROC_BAR", "GATE_BACKENDS", "QuantizeError", "QuantizeReport", "RATE_BAR", "gate_result",
           "quantize_model_dir"]


class QuantizeError(RuntimeError):
    """Quantization cannot run on this model directory or dataset; the message names the file or split."""


@dataclass
class QuantizeReport:
    """What ``linecam quantize`` did: the file (None when every gate failed) and the gate per backend."""

    model_dir: Path
    int8_path: Path | None
    calibration_images: int
    threshold: float
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> list[str]:
        return [b for b, g in self.gates.items() if g.get("passed")]


def _split_images(root: Path, split: str, size: tuple[int, int], good_only: bool = False,
                  limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB frames at the model size and line labels (1 = defect) of one split of a linecam dataset."""
    import cv2

    from linecam.dataset import DatasetError, load_index
    from linecam.grdnet.datasets import read_rgb

    try:
        records = [r for r in load_index(root) if r.split == split and not (good_only and r.is_defect)]
    except DatasetError as exc:
        raise QuantizeError(str(exc)) from None
    if limit is not None:
        records = records[:limit]
    if not records:
        raise QuantizeError(f"{root}: no {'good ' if good_only else ''}images in split {split!r}")
    h, w = size
    images = []
    for r in records:
        rgb = read_rgb(root / r.path)
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        images.append(rgb)
    return np.stack(images), np.array([1 if r.is_defect else 0 for r in records])


def probability_heads(onnx_path: Path) -> list[str]:
    """Names of the convolutions whose output reaches a Sigmoid through element-wise or rearranging ops only
    (the heads; the generator ends in a pixel shuffle, DepthToSpace)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    heads = []
    for node in graph.node:
        if node.op_type != "Sigmoid":
            continue
        current = producer.get(node.input[0])
        while current is not None and current.op_type not in ("Conv", "ConvTranspose"):
            if current.op_type not in ("Add", "Mul", "BatchNormalization", "Relu", "Identity", "Cast", "DepthToSpace",
                                       "Reshape", "Transpose"):
                current = None
                break
            current = producer.get(current.input[0])
        if current is not None:
            heads.append(current.name)
    return heads


def _quantize(fp32_path: Path, out_path: Path, calibration: np.ndarray, size: tuple[int, int],
              exclude: Sequence[str] = (), method: str = "MinMax") -> None:
    """Write the QDQ INT8 graph of ``fp32_path`` to ``out_path``, activation ranges from ``calibration``;
    ``exclude`` names nodes that stay in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calibration[i:i + 8] for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            return {INPUT_IMAGES: batch, INPUT_MASK: np.ones((len(batch), 1, *size), dtype=np.float32)}

    quantize_static(str(fp32_path), str(out_path), Frames(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "ConvTranspose"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=list(exclude))


def _rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    rejected = rejects(scores, threshold)
    good, bad = labels == 0, labels == 1
    return {"image_auroc": float(roc_auc_score(labels, scores)),
            "false_reject_rate": float(rejected[good].mean()), "escape_rate": float((~rejected[bad]).mean())}


def gate_result(fp32: dict[str, float], int8: dict[str, float]) -> tuple[bool, list[str]]:
    """(passed, why not) for one backend's fp32 and INT8 figures on the test split."""
    why = []
    if abs(int8["image_auroc"] - fp32["image_auroc"]) > AUROC_BAR:
        why.append(f"image AUROC {int8['image_auroc']:.4f} vs fp32 {fp32['image_auroc']:.4f} (bar {AUROC_BAR})")
    for rate in ("false_reject_rate", "escape_rate"):
        if abs(int8[rate] - fp32[rate]) > RATE_BAR:
            why.append(f"{rate.replace('_', ' ')} {int8[rate]:.4f} vs fp32 {fp32[rate]:.4f} (bar {RATE_BAR})")
    return not why, why


def _score(detector: Detector, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, float]:
    """Scores of ``images`` and the seconds per image."""
    detector.detect(images[:1])
    t0 = time.perf_counter()
    scores = np.concatenate([detector.detect(images[i:i + batch]).scores for i in range(0, len(images), batch)])
    return scores.astype(np.float64), (time.perf_counter() - t0) / len(images)


def _open_graph(backend: str, onnx_path: Path, size: tuple[int, int], threads: int | None) -> Detector:
    """A detector of ``backend`` over one ONNX file, before that file is in the card (the gate runs first)."""
    if backend == "onnxruntime":
        from linecam.backends.onnxrt import OnnxRuntimeDetector

        return OnnxRuntimeDetector(onnx_path, size, threads=threads, providers=["CPUExecutionProvider"], spin=False)
    from linecam.backends.openvino_backend import OpenVinoDetector

    return OpenVinoDetector(onnx_path, size, precision="fp32", threads=threads)


def quantize_model_dir(
    model_dir: str | Path,
    data_root: str | Path,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    backends: Sequence[str] | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> QuantizeReport:
    """Quantize ``model_dir/model.onnx``, run the quality gate per backend, and record both in the card.

    ``model.int8.onnx`` is kept and listed in the card when at least one backend passed; the card's ``int8``
    entry records every backend's figures either way, so a failed gate is visible in ``linecam models show``.
    """
    from linecam.grdnet.modeldir import published_record, register_file, write_card
    from linecam.grdnet.modeldir import read_card as read_model_card

    d = Path(model_dir)
    if published_record(d) is not None:
        raise QuantizeError(f"{d} is a published model version and is never rewritten; quantize a working copy and "
                            "publish that as a new version")
    card, _ = read_card(d)
    fp32_path = verified_file(d, card, ONNX_NAME, hint=f"run `linecam export --model {d}` first")
    if card.threshold is None:
        raise QuantizeError(f"{d / 'card.json'}: no calibrated threshold; the gate compares rates at it (run "
                            "`linecam calibrate threshold --card` first)")
    threshold = float(card.threshold)
    size = (int(card.input_size[0]), int(card.input_size[1]))
    root = Path(data_root)
    installed = [b for b in (backends or GATE_BACKENDS) if b in backend_specs()
                 and backend_specs()[b].probe(None) is None]
    if not installed:
        raise QuantizeError(f"none of the gate's backends {list(backends or GATE_BACKENDS)} is installed")
    calib, _ = _split_images(root, "val", size, good_only=True, limit=calibration_images)
    log(f"quantize: calibrating activation ranges on {len(calib)} val good images")
    tmp = d / f".{ONNX_INT8_NAME}.tmp"
    try:
        heads = probability_heads(fp32_path)
        _quantize(fp32_path, tmp, calib, size, exclude=heads)
        test, labels = _split_images(root, "test", size)
        if labels.min() == labels.max():
            raise QuantizeError(f"{root}: split 'test' needs good and defective images for the gate")
        report = QuantizeReport(d, None, len(calib), threshold)
        for backend in installed:
            figures: dict[str, Any] = {}
            for precision, path in (("fp32", fp32_path), ("int8", tmp)):
                log(f"quantize: scoring {len(test)} test images with {backend} {precision}")
                det = _open_graph(backend, path, size, threads)
                try:
                    scores, s_per_image = _score(det, test)
                finally:
                    det.close()
                figures[precision] = {**_rates(labels, scores, threshold), "ms_per_image": 1e3 * s_per_image}
                figures[f"{precision}_scores"] = scores
            diff = np.abs(figures.pop("int8_scores") - figures.pop("fp32_scores"))
            passed, why = gate_result(figures["fp32"], figures["int8"])
            report.gates[backend] = {**figures, "max_abs_score_diff": float(diff.max()),
                                     "mean_abs_score_diff": float(diff.mean()), "passed": passed, "why": why}
        record = {"file": ONNX_INT8_NAME, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "calibration": {"split": "val", "good_images": len(calib), "method": "minmax, per-channel weights"},
                  "float_nodes": heads,
                  "test": {"images": int(len(labels)), "defective": int(labels.sum())}, "threshold": threshold,
                  "bars": {"image_auroc": AUROC_BAR, "rates": RATE_BAR}, "gates": report.gates,
                  "cpu": cpu_summary()}  # int8 kernels differ between CPU kinds (VNNI or not): where it was judged
        if report.passed:
            os.replace(tmp, d / ONNX_INT8_NAME)
            register_file(d, ONNX_INT8_NAME)
            report.int8_path = d / ONNX_INT8_NAME
        else:  # a previous INT8 graph that passed must not outlive a gate that now fails
            (d / ONNX_INT8_NAME).unlink(missing_ok=True)
        current = read_model_card(d)
        files = {k: v for k, v in current.files.items() if k != ONNX_INT8_NAME or report.passed}
        write_card(d, current.model_copy(update={"files": files, "int8": record}))
        return report
    finally:
        tmp.unlink(missing_ok=True)
        for leftover in d.glob(f".{ONNX_INT8_NAME}*"):  # the quantizer's own scratch files
            leftover.unlink(missing_ok=True)

