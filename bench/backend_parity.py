"""Every backend against PyTorch fp32 eager on a real test split: score differences and AUROC differences.

The reference is the fp32 eager ``InferenceGraph`` path on the CPU (``torch-cpu`` with ``precision=fp32,
mode=eager``); each backend scores the same uint8 frames of the dataset's ``test`` split through
``Detector.detect``. Prints max/mean absolute score difference and the image AUROC of each backend, and the
AUROC difference to the reference.

``--gpu`` adds the GPU backends (torch-cuda in fp32/fp16/bf16, onnxruntime's CUDA provider, TensorRT fp16);
``bench/gpu.sh`` runs it that way on a lent GPU. ``--check`` turns the figures into a verdict: the exit status
is 1 when a backend's AUROC is more than 0.005 from the reference's (the issue's bar), when its largest score
difference is above the tolerance stated for its precision in ``VARIANTS``, or when a backend that must be
there is not (torch-cuda under ``--gpu``; onnxruntime's CUDA provider and TensorRT are optional extras).
A variant this CPU cannot run natively (bf16 on a CPU without bf16 instructions, e.g. an AVX2-only EPYC) is
reported as "not available here" with the reason, listed under ``skipped`` in the JSON, and never counted as a
failure: the CPU decides which variants apply (``linecam.hardware``).

    .venv/bin/python bench/backend_parity.py --model model/demo --data data/bfs
    .venv/bin/python bench/backend_parity.py --model model/demo --data data/bfs --gpu --check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from linecam.backends import create_detector
from linecam.dataset import load_index
from linecam.hardware import cpu_summary, why_no_bf16

AUROC_BAR = 0.005
#: Largest score difference to the fp32 reference accepted per precision. fp32 backends differ only by
#: summation order (the export check's bar); bf16 keeps 8 mantissa bits and fp16 11, so a score near 0.2
#: moves by a few 1e-2 in bf16 (0.038 measured for the demo model) and by a few 1e-3 in fp16.
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 6e-2, "int8": 0.2}
#: int8 is judged by its quality gate (``linecam quantize``: AUROC, false-reject and escape rates on the test
#: split); single scores move by up to about a tenth, so its score bar here only catches a broken graph.


@dataclass(frozen=True)
class Variant:
    """One backend configuration to compare with the reference."""

    title: str
    backend: str
    precision: str
    options: dict[str, object] = field(default_factory=dict)
    required: bool = True  # under --check, a required variant that cannot be created is a failure

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.precision]

    def unavailable_here(self, model_dir: Path | None = None) -> str | None:
        """Why the variant does not apply here (None when it does): bf16 on the CPU needs bf16 instructions
        (elsewhere it is emulated, and ``auto`` never runs it); int8 needs the model's INT8 graph to have passed
        its quality gate on that backend (``linecam quantize``)."""
        if self.precision == "bf16" and self.backend in ("torch-cpu", "openvino"):
            return why_no_bf16()
        if self.precision == "int8" and model_dir is not None:
            from linecam.backends.modelfiles import int8_refusal, read_card

            return int8_refusal(read_card(model_dir)[0], self.backend)
        return None


CPU_VARIANTS: tuple[Variant, ...] = (
    Variant("fp32 eager (reference)", "torch-cpu", "fp32", {"precision": "fp32", "mode": "eager"}),
    Variant("torch-cpu fp32 jit", "torch-cpu", "fp32", {"precision": "fp32", "mode": "jit"}),
    Variant("torch-cpu bf16 eager", "torch-cpu", "bf16", {"precision": "bf16", "mode": "eager"}),
    Variant("torch-cpu bf16 jit", "torch-cpu", "bf16", {"precision": "bf16", "mode": "jit"}),
    Variant("torch-cpu bf16 jit, BN unfolded", "torch-cpu", "bf16",
            {"precision": "bf16", "mode": "jit", "fold_bf16": False}),
    Variant("onnxruntime fp32 (CPU)", "onnxruntime", "fp32", {"providers": ["CPUExecutionProvider"]}),
    Variant("openvino fp32", "openvino", "fp32", {"precision": "fp32"}),
    Variant("openvino bf16", "openvino", "bf16", {"precision": "bf16"}),
    Variant("onnxruntime int8", "onnxruntime", "int8", {"precision": "int8", "providers": ["CPUExecutionProvider"]},
            required=False),
    Variant("openvino int8", "openvino", "int8", {"precision": "int8"}, required=False),
)
GPU_VARIANTS: tuple[Variant, ...] = (
    Variant("torch-cuda fp32", "torch-cuda", "fp32", {"precision": "fp32"}),
    Variant("torch-cuda fp16 (default)", "torch-cuda", "fp16", {"precision": "fp16"}),
    Variant("torch-cuda bf16", "torch-cuda", "bf16", {"precision": "bf16"}),
    Variant("onnxruntime fp32 (CUDA)", "onnxruntime", "fp32", {"providers": ["CUDAExecutionProvider"]},
            required=False),
    Variant("tensorrt fp16", "tensorrt", "fp16", {"precision": "fp16"}, required=False),
)


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB frames (N,H,W,3) and line labels (1 = defect) of one split."""
    records = [r for r in load_index(root) if r.split == split]
    if not records:
        raise SystemExit(f"{root}: no images in split {split!r}")
    images = []
    for r in records:
        bgr = cv2.imread(str(root / r.path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{root / r.path}: unreadable image")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    labels = np.array([1 if r.line_label == "defect" else 0 for r in records])
    return np.stack(images), labels


def score_all(detector: object, images: np.ndarray, batch: int) -> np.ndarray:
    out = [detector.detect(images[i:i + batch]).scores for i in range(0, len(images), batch)]  # type: ignore[attr-defined]
    return np.concatenate(out)


def verdict(variant: Variant, auroc: float, max_abs_diff: float, ref_auroc: float) -> list[str]:
    """Why a variant's figures miss a bar (empty when they meet them)."""
    why = []
    if abs(auroc - ref_auroc) > AUROC_BAR:
        why.append(f"AUROC {auroc - ref_auroc:+.4f} from the reference (bar {AUROC_BAR})")
    if max_abs_diff > variant.tolerance:
        why.append(f"max score diff {max_abs_diff:.2e} above {variant.tolerance:g} ({variant.precision})")
    return why


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu", action="store_true", help="also the GPU backends (torch-cuda, ORT CUDA, TensorRT)")
    ap.add_argument("--cpu-variants", choices=("all", "reference"), default="all",
                    help="'reference': only the fp32 reference on the CPU (what a GPU run needs)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a backend misses a bar (see above)")
    ap.add_argument("--out", default="bench/results/backend_parity.json")
    args = ap.parse_args(argv)
    images, labels = load_split(Path(args.data), args.split)
    variants = CPU_VARIANTS if args.cpu_variants == "all" else CPU_VARIANTS[:1]
    if args.gpu:
        variants += GPU_VARIANTS
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    skipped: list[dict[str, str]] = []
    reference: np.ndarray | None = None
    ref_auroc = 0.0
    for variant in variants:
        reason = variant.unavailable_here(Path(args.model))
        if reason is not None:
            print(f"{variant.title:38s} not available here: {reason}")
            skipped.append({"variant": variant.title, "reason": reason})
            continue
        try:
            det = create_detector(args.model, variant.backend, threads=args.threads, **variant.options)
        except Exception as exc:  # a backend missing here (no GPU, no model.onnx...) is reported
            print(f"{variant.title:38s} unavailable: {exc}")
            if variant is CPU_VARIANTS[0]:
                raise SystemExit(f"the fp32 reference cannot run: {exc}") from exc
            if variant.required:
                failures.append(f"{variant.title}: unavailable ({exc})")
            continue
        t0 = time.perf_counter()
        scores = score_all(det, images, args.batch)
        elapsed = time.perf_counter() - t0
        det.close()
        auroc = float(roc_auc_score(labels, scores))
        if reference is None:  # the first variant is the fp32 reference
            reference, ref_auroc = scores, auroc
        diff = np.abs(scores - reference)
        rows.append({"variant": variant.title, "backend": variant.backend, "precision": variant.precision,
                     "auroc": auroc, "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                     "tolerance": variant.tolerance, "images_per_s": len(images) / elapsed})
        failures += [f"{variant.title}: {w}" for w in verdict(variant, auroc, float(diff.max()), ref_auroc)]
    print(f"\n{len(images)} images of {args.split}, batch {args.batch}, {args.threads} thread(s)")
    print(f"{'variant':38s} {'AUROC':>7s} {'dAUROC':>8s} {'max|ds|':>9s} {'tol':>6s} {'mean|ds|':>9s} {'img/s':>7s}")
    for r in rows:
        print(f"{r['variant']:38s} {r['auroc']:7.4f} {r['auroc'] - ref_auroc:+8.4f} "  # type: ignore[operator]
              f"{r['max_abs_diff']:9.2e} {r['tolerance']:6g} {r['mean_abs_diff']:9.2e} {r['images_per_s']:7.1f}")
    for skip in skipped:
        print(f"SKIP {skip['variant']}: not available here ({skip['reason']})")
    for f in failures:
        print(f"FAIL {f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "split": args.split, "cpu": cpu_summary(),
                                          "rows": rows, "skipped": skipped, "failures": failures}, indent=1) + "\n")
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
