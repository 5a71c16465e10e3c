"""``linecam export | quantize | build-engine``: turn a model directory into what the inference backends load.

Registration imports nothing heavy (torch, onnx, tensorrt load only when a handler runs). Handlers return
an exit code: 0 ok, 2 bad input (model directory, hash mismatch, failed parity), 3 backend unavailable;
the message on stderr names the file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


def register(subparsers: Any) -> None:
    """Add the export, quantize, backends and build-engine subcommands."""
    p = subparsers.add_parser(
        "export", help="export MODEL_DIR/model.onnx (preprocessing + GRD-Net + scoring), check parity, hash it"
    )
    p.add_argument("--model", required=True, type=Path, help="model directory (model/<name>/<version>)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the dynamic batch axis allows")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 variant model.fp16.onnx (TensorRT)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |score| difference vs PyTorch fp32")
    p.set_defaults(func=cmd_export)

    q = subparsers.add_parser(
        "quantize", help="INT8 graph MODEL_DIR/model.int8.onnx, kept only where it passes the quality gate on test"
    )
    q.add_argument("--model", required=True, type=Path, help="exported model directory with a calibrated threshold")
    q.add_argument("--data", required=True, type=Path, help="linecam dataset: val good images calibrate, test gates")
    q.add_argument("--calibration-images", type=int, default=64, help="val good images for the activation ranges")
    q.add_argument("--backends", nargs="+", default=None, help="backends the gate judges (default: onnxruntime "
                                                                "openvino, where installed)")
    q.add_argument("--threads", type=int, default=None)
    q.set_defaults(func=cmd_quantize)

    a = subparsers.add_parser("backends", help="this CPU, the backends that can run MODEL_DIR, and what auto picks")
    a.add_argument("--model", type=Path, default=None, help="model directory (without: only the backends)")
    a.add_argument("--threads", type=int, default=None, help="threads the trial uses (as infer.threads)")
    a.add_argument("--refresh", action="store_true", help="run the timed trial again instead of reading its cache")
    a.set_defaults(func=cmd_backends)

    b = subparsers.add_parser("build-engine", help="build the TensorRT engine for MODEL_DIR on this GPU")
    b.add_argument("--model", required=True, type=Path, help="model directory with model(.fp16).onnx")
    b.add_argument("--cache", type=Path, default=None, help="engine cache dir (default MODEL_DIR/../.engines/VER)")
    b.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    b.add_argument("--max-batch", type=int, default=64)
    b.add_argument("--max-side", type=int, default=None, help="largest frame side (default 2x model size)")
    b.add_argument("--force", action="store_true", help="rebuild even when a cached plan exists")
    b.set_defaults(func=cmd_build_engine)


def cmd_export(args: Any) -> int:
    """Handler of ``linecam export``."""
    from linecam.backends.export import ExportError, export_model_dir
    from linecam.grdnet.modeldir import ModelDirError

    try:
        report = export_model_dir(
            args.model,
            opset=args.opset,
            max_batch=args.max_batch,
            fp16=not args.no_fp16,
            tolerance=args.tolerance,
            progress=True,
        )
    except (ExportError, ModelDirError, ValueError) as exc:
        print(f"linecam export: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {report.onnx_path} sha256 {report.sha256}")
    print(f"max |score onnxruntime - torch fp32| on random/structured images: {report.max_abs_diff:.3g}")
    if report.golden_max_abs_diff is not None:
        print(f"max |score difference| on {report.golden_images} golden images: {report.golden_max_abs_diff:.3g}")
    if report.fp16_path is not None:
        print(f"wrote {report.fp16_path} (fp16 variant for strongly typed TensorRT; checked on GPU only)")
    return 0


def cmd_quantize(args: Any) -> int:
    """Handler of ``linecam quantize``: exit 0 when the INT8 graph passed on at least one backend, 1 when it
    passed on none (the card records why), 2 on bad input."""
    from linecam.backends.quantize import QuantizeError, quantize_model_dir
    from linecam.grdnet.modeldir import ModelDirError

    try:
        report = quantize_model_dir(args.model, args.data, calibration_images=args.calibration_images,
                                    backends=args.backends, threads=args.threads,
                                    log=lambda line: print(line, file=sys.stderr, flush=True))
    except (QuantizeError, ModelDirError, ValueError) as exc:
        print(f"linecam quantize: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"INT8 gate on the test split at threshold {report.threshold:.6g} (AUROC within 0.005, each rate within "
          "0.5 points of fp32 on the same backend):")
    for backend, gate in report.gates.items():
        fp32, int8 = gate["fp32"], gate["int8"]
        print(f"  {backend:12s} {'PASSED' if gate['passed'] else 'FAILED'}  AUROC {fp32['image_auroc']:.4f} -> "
              f"{int8['image_auroc']:.4f}  FRR {fp32['false_reject_rate']:.4f} -> {int8['false_reject_rate']:.4f}  "
              f"escape {fp32['escape_rate']:.4f} -> {int8['escape_rate']:.4f}  "
              f"{fp32['ms_per_image']:.1f} -> {int8['ms_per_image']:.1f} ms/img  "
              f"max |score diff| {gate['max_abs_score_diff']:.3g}")
        for why in gate["why"]:
            print(f"    {why}")
    if report.int8_path is None:
        print("model.int8.onnx not kept: it failed the gate on every backend (recorded in card.json int8)")
        return 1
    print(f"wrote {report.int8_path}; INT8 serves on: {', '.join(report.passed)}")
    return 0


def cmd_backends(args: Any) -> int:
    """Handler of ``linecam backends``: what ``backend: auto`` would run here, and why."""
    import os

    from linecam.backends import backend_specs
    from linecam.backends.base import BackendUnavailableError
    from linecam.grdnet.modeldir import ModelDirError
    from linecam.hardware import cpu_summary

    cpu = cpu_summary()
    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}")  # type: ignore[arg-type]
    for name, spec in backend_specs().items():
        why = spec.probe(args.model)
        print(f"  {name:12s} {spec.device:4s} {'available' if why is None else 'unavailable: ' + why}")
    if args.model is None:
        return 0
    from linecam.backends import create_detector
    from linecam.backends.autoselect import REFRESH_ENV

    if args.refresh:
        os.environ[REFRESH_ENV] = "refresh"
    try:
        detector = create_detector(args.model, "auto", **({"threads": args.threads} if args.threads else {}))
    except (BackendUnavailableError, ModelDirError, ValueError) as exc:
        print(f"linecam backends: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    choice = detector.auto_choice  # type: ignore[attr-defined]
    detector.close()
    for row in choice.trial:
        figure = f"{row.ms_per_image:7.1f} ms/img" if row.ms_per_image is not None else "      -       "
        diff = f"  max |score - fp32 eager| {row.max_abs_diff:.2g}" if row.max_abs_diff is not None else ""
        print(f"  trial {row.backend:12s} {row.precision:5s} {figure}{diff}"
              + (f"  excluded: {row.excluded}" if row.excluded else ""))
    print(choice.line())
    return 0


def cmd_build_engine(args: Any) -> int:
    """Handler of ``linecam build-engine``."""
    from linecam.backends.base import BackendUnavailableError
    from linecam.backends.tensorrt_backend import build_engine
    from linecam.grdnet.modeldir import ModelDirError

    try:
        plan = build_engine(
            args.model,
            cache_dir=args.cache,
            precision=args.precision,
            max_batch=args.max_batch,
            max_side=args.max_side,
            force=args.force,
        )
    except BackendUnavailableError as exc:
        print(f"linecam build-engine: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ModelDirError, ValueError, FileNotFoundError) as exc:
        print(f"linecam build-engine: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"engine {plan}")
    return 0
