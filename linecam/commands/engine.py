"""``linecam export | build-engine``: turn a model directory into what the inference backends load.

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
    """Add the export and build-engine subcommands."""
    p = subparsers.add_parser(
        "export", help="export MODEL_DIR/model.onnx (preprocessing + GRD-Net + scoring), check parity, hash it"
    )
    p.add_argument("--model", required=True, type=Path, help="model directory (model/<name>/<version>)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch the dynamic batch axis allows")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 variant model.fp16.onnx (TensorRT)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |score| difference vs PyTorch fp32")
    p.set_defaults(func=cmd_export)

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
