"""``linecam train | eval | predict``: the offline GRD-Net commands.

Registration imports nothing heavy: torch and the model code load only when a handler runs, so the other
subcommands of ``linecam`` start fast. Handlers return an exit code: 0 ok, 2 bad input (dataset, model
directory, config), which is reported on stderr naming the file or field.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def register(subparsers: Any) -> None:
    """Add the train, eval and predict subcommands."""
    p = subparsers.add_parser("train", help="train a GRD-Net model on a dataset folder")
    p.add_argument("--data", required=True, type=Path, help="dataset root (linecam layout or MVTec AD category)")
    p.add_argument("--out", required=True, type=Path, help="model directory to write (model/<name>/<version>)")
    p.add_argument("--profile", default="fast", help="model profile: fast | paper")
    p.add_argument("--image-size", type=int, default=None, help="override the profile's input size")
    p.add_argument("--profile-set", action="append", default=[], metavar="FIELD=JSON",
                   help="override one profile field, e.g. --profile-set latent_channels=64 "
                        "--profile-set 'gen_widths=[16,32,64]' (stored in the model card)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--roi-variant", default="learned_silence",
                   choices=["overlap", "intersection", "intersection_overlap", "negated_overlap", "learned_silence"])
    p.add_argument("--focal-gamma", type=float, default=None, help="focal loss gamma of the U-Net (0 = BCE)")
    p.add_argument("--perlin-scales", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                   help="Perlin lattice exponents [LO, HI): 2**k cells per axis (default 0 6); raise LO for "
                        "smaller simulated defects")
    p.add_argument("--target-dilate", type=int, default=None, metavar="PX",
                   help="grow the U-Net's target by PX pixels around each simulated defect, inside the ROI "
                        "(default 0: the exact mask; the demo recipe uses 3)")
    p.add_argument("--fill-modes", type=lambda v: tuple(v.split(",")), default=None,
                   help="simulated-defect fills, comma separated from pixels,solid,smooth,gray "
                        "(default pixels,solid,smooth)")
    p.add_argument("--shape-families", type=lambda v: tuple(v.split(",")), default=None,
                   help="simulated-defect shapes, comma separated from perlin,soft,thin,cluster (default perlin: "
                        "the paper's blobs; soft = low-contrast faded regions, thin = curvilinear lines, "
                        "cluster = groups of small specks)")
    p.add_argument("--no-refresh-bn", action="store_true",
                   help="skip the per-epoch BatchNorm re-estimation before validation (for comparisons)")
    p.add_argument("--unet-lr", type=float, default=None, help="U-Net learning rate (default: --lr)")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="fine-tune: start from this model directory's weights (same profile) instead of a fresh "
                        "init; optimisers and schedule start anew")
    p.add_argument("--resume", action="store_true", help="continue from <out>/training/checkpoint_last.pt")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 autocast on CPU, fp16 AMP on CUDA")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rotation", type=float, default=None, help="max random rotation in radians (default pi/2)")
    p.add_argument("--clean-share", type=float, default=None, help="share of samples without simulated anomaly")
    p.add_argument("--val-fraction", type=float, default=None, help="share of train/good held out for the val loss")
    p.add_argument("--select-by", default=None, choices=["val_loss", "val_auroc"],
                   help="which epoch ships: lowest held-out loss, or best image AUROC on the labelled --select-split")
    p.add_argument("--select-split", default=None, help="labelled split for --select-by val_auroc (default: val)")
    p.add_argument("--unet-prior", type=float, default=None,
                   help="initial anomaly probability of the U-Net head (default 0.01; 0 = PyTorch's default init)")
    p.add_argument("--lr-schedule", default=None, choices=["plateau", "cosine"],
                   help="plateau: the paper's reduce-on-plateau on the val loss (default); cosine: down to 1%% by the "
                        "last epoch")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="keep an EMA of the weights with this decay (e.g. 0.99) and ship it")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--require-roi", action="store_true", help="fail if any training image has no ROI mask")
    p.add_argument("--name", default="grdnet")
    p.add_argument("--version", default="1")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="evaluate a model directory (read-only unless --store)")
    e.add_argument("--model", required=True, type=Path)
    e.add_argument("--data", required=True, type=Path)
    e.add_argument("--json", required=True, type=Path, help="metrics JSON to write")
    e.add_argument("--report", type=Path, default=None, help="folder for ROC curves, worst cases and index.html")
    e.add_argument("--batch-size", type=int, default=8)
    _add_scoring_options(e)
    e.add_argument("--fixed-mask", type=Path, default=None,
                   help="optional per-camera scoring mask (default: none, the ROI attention is learned)")
    e.add_argument("--store", action="store_true",
                   help="also write the val-calibrated threshold and the metrics into the model's card.json (never "
                        "into a published version; the line reads that threshold); default: the card is untouched")
    e.add_argument("--no-store", action="store_true", help=argparse.SUPPRESS)  # the default since 0.1: kept for scripts
    e.set_defaults(func=cmd_eval)

    r = subparsers.add_parser("predict", help="score images with a model directory")
    r.add_argument("--model", required=True, type=Path)
    r.add_argument("--json", required=True, type=Path, help="results JSON to write")
    r.add_argument("images", nargs="+", type=Path)
    r.add_argument("--heatmaps", type=Path, default=None, help="folder for jet heatmap overlays")
    r.add_argument("--roi", type=Path, default=None, help="optional fixed scoring mask (PNG, 0/255)")
    r.add_argument("--threshold", type=float, default=None, help="override the card's calibrated threshold")
    _add_scoring_options(r)
    r.set_defaults(func=cmd_predict)


def _add_scoring_options(p: argparse.ArgumentParser) -> None:
    """The options that choose what scores (eval and predict): the same backends and ``auto`` as the line."""
    p.add_argument("--backend", default="auto",
                   help="inference backend (default auto: the fastest correct one here, as the line picks it)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32", "int8"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: with --backend auto, a GPU backend")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the backend")


def _err(msg: str) -> int:
    print(f"linecam: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _precision(value: str, device: str) -> str:
    """``--precision`` resolved for this machine (see :func:`linecam.hardware.resolve_precision`)."""
    from linecam.hardware import resolve_precision

    return resolve_precision(value, device)


def cmd_train(args: argparse.Namespace) -> int:
    import pydantic

    from linecam.grdnet.datasets import DatasetError
    from linecam.grdnet.train import TrainConfig, TrainError, run_training

    fields: dict[str, Any] = {
        "data": args.data, "out": args.out, "profile": args.profile, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "roi_variant": args.roi_variant, "seed": args.seed,
        "device": args.device, "precision": args.precision, "workers": args.workers,
        "max_steps_per_epoch": args.max_steps_per_epoch, "require_roi": args.require_roi, "name": args.name,
        "version": args.version, "progress": not args.no_progress, "refresh_bn": not args.no_refresh_bn,
        "command": " ".join(shlex.quote(a) for a in ["linecam", *sys.argv[1:]]),
    }
    for key in ("rotation", "clean_share", "val_fraction", "focal_gamma", "perlin_scales", "unet_lr", "fill_modes",
                "shape_families", "target_dilate", "init_from", "select_by", "select_split", "ema_decay", "lr_schedule",
                "unet_prior"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    overrides: dict[str, Any] = {}
    for item in args.profile_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _err(f"--profile-set {item!r}: expected FIELD=JSON, e.g. latent_channels=64")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            return _err(f"--profile-set {item!r}: the value is not JSON (lists are written [16,32,64])")
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if overrides:
        fields["profile_overrides"] = overrides
    try:
        cfg = TrainConfig(**fields)
        out = run_training(cfg, resume=args.resume)
    except pydantic.ValidationError as exc:
        return _err(f"invalid training option: {exc}")
    except (DatasetError, TrainError, ValueError) as exc:
        return _err(str(exc))
    if out is not None:
        print(f"model written to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from linecam.backends.evaluation import evaluate_detector
    from linecam.grdnet.datasets import DatasetError
    from linecam.grdnet.evaluate import summary_line, write_metrics_json
    from linecam.grdnet.modeldir import ModelDirError, load_model_dir, published_record, read_card, write_card

    if args.store and args.no_store:
        return _err("--store and --no-store contradict each other")
    if args.store and published_record(args.model) is not None:
        return _err(f"{args.model} is a published model version: its card is never rewritten (the line reads its "
                    "threshold); evaluate a working copy with --store and publish it as a new version")
    try:
        card = read_card(args.model)
        size = card.profile.image_size
        fixed = load_fixed_mask(args.fixed_mask, size)
        detector = open_scoring_detector(args.model, args.backend, args.precision, args.device, args.threads)
        try:
            metrics, preds = evaluate_detector(detector, args.data, size, batch_size=args.batch_size,
                                               fixed_mask=fixed)
        finally:
            detector.close()
    except (ModelDirError, DatasetError, ValueError) as exc:
        return _err(str(exc))
    metrics["model"] = {"name": card.name, "version": card.version, "path": str(args.model)}
    write_metrics_json(args.json, metrics)
    if args.report is not None:
        from linecam.grdnet.report import write_report
        from linecam.progress import phase

        model_cpu, _ = load_model_dir(args.model)
        with phase(f"eval report into {args.report}"):
            write_report(args.report, model_cpu, preds, metrics, size,
                         training_plot=args.model / "training" / "loss_curves.png")
    print(f"{summary_line(metrics)}  threshold={metrics['threshold']:.5f}")
    if args.store:
        keep = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        keep["data"] = str(args.data)
        try:
            write_card(args.model, card.model_copy(update={"threshold": metrics["threshold"], "metrics": keep}))
        except ModelDirError as exc:
            return _err(str(exc))
        print(f"{args.model / 'card.json'}: threshold {_fmt_threshold(card.threshold)} -> "
              f"{metrics['threshold']:.5f} (best F1 on {metrics['calibration_split']}), metrics replaced")
    else:
        print(f"{args.model / 'card.json'} unchanged (threshold {_fmt_threshold(card.threshold)}); --store writes "
              f"the threshold above into it")
    return 0


def _fmt_threshold(value: float | None) -> str:
    return "none" if value is None else f"{value:.5f}"


def open_scoring_detector(model_dir: Path, backend: str, precision: str, device: str,
                          threads: int | None) -> Any:
    """The Detector eval and predict score with: the line's backends, ``auto`` decided as the worker decides it.

    Why not a torch loop of their own: a threshold, an AUROC or a speed measured on another graph or precision
    than the line runs is a figure about another system. The choice is printed, with auto's reason."""
    from linecam.backends import create_detector
    from linecam.backends.base import BackendUnavailableError

    if backend == "auto" and device == "cuda":
        backend = "torch-cuda"
    options: dict[str, Any] = {} if precision == "auto" else {"precision": precision}
    if threads is not None:
        options["threads"] = threads
    try:
        detector = create_detector(model_dir, backend, **options)
    except BackendUnavailableError as exc:
        raise ValueError(str(exc)) from None
    choice = getattr(detector, "auto_choice", None)
    print(f"scoring with {choice.line() if choice is not None else _precision_name(detector)}", file=sys.stderr)
    return detector


def load_fixed_mask(path: Path | None, size: int) -> Any:
    """A per-camera scoring mask (0/255 PNG) as float (size, size) in [0, 1], or None."""
    if path is None:
        return None
    import numpy as np

    from linecam.grdnet.datasets import read_binary_mask, resize_mask

    return resize_mask(read_binary_mask(path), size).astype(np.float32)


def _precision_name(detector: Any) -> str:
    return f"{detector.backend} {getattr(detector, 'precision', '')}".strip()


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from linecam.decision import decide
    from linecam.grdnet.datasets import DatasetError, read_rgb, resize_rgb
    from linecam.grdnet.modeldir import ModelDirError, read_card
    from linecam.progress import Progress

    try:
        card = read_card(args.model)
        size = card.profile.image_size
        fixed = load_fixed_mask(args.roi, size)
        threshold = args.threshold if args.threshold is not None else card.threshold
        results = []
        detector = open_scoring_detector(args.model, args.backend, args.precision, args.device, args.threads)
        try:
            bar = Progress(len(args.images), "predict")
            for path in args.images:
                rgb = resize_rgb(read_rgb(path), size)
                out = detector.detect(rgb[None], masks=fixed, return_maps=args.heatmaps is not None)
                s = float(out.scores[0])
                decision = None if threshold is None else decide(s, threshold)
                results.append({"path": str(path), "score": s, "threshold": threshold, "decision": decision})
                if args.heatmaps is not None:
                    _write_heatmap(args.heatmaps / f"{path.stem}_heatmap.png", rgb, out.maps[0], np)
                bar.update()
            bar.close()
        finally:
            detector.close()
    except (ModelDirError, DatasetError, ValueError) as exc:
        return _err(str(exc))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": {"name": card.name, "version": card.version}, "backend": _precision_name(detector),
               "results": results}
    args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    for r in results:
        print(f"{r['path']}: score {r['score']:.5f} {r['decision'] or '(no threshold in card)'}")
    return 0


def _write_heatmap(path: Path, rgb: Any, smooth: Any, np: Any) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    norm = np.clip(smooth / max(float(smooth.max()), 1e-6), 0, 1)
    jet = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    overlay = (0.55 * rgb[:, :, ::-1] + 0.45 * jet).astype(np.uint8)
    if not cv2.imwrite(str(path), overlay):
        raise ValueError(f"{path}: cannot write heatmap")
