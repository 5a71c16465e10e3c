"""``linecam publish | models | calibrate``: the model lifecycle commands.

Registration imports nothing heavy. Handlers return 0 on success and 2 on bad input, with a message on
stderr naming the folder, file or version.
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
    """Add publish, models (list/show/promote/rollback/verify) and calibrate (threshold/roi)."""
    p = subparsers.add_parser("publish", help="publish MODEL_DIR as an immutable version model/<name>/<version>")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--name", required=True, help="model name (folder under the registry)")
    p.add_argument("--registry", type=Path, default=Path("model"), help="registry root (default: model/)")
    p.add_argument("--version", default=None, help="version name (default: next number)")
    p.add_argument("--golden", type=Path, default=None,
                   help="golden images: a folder of images or a linecam dataset (val split); default: "
                        "deterministic synthetic stand-ins")
    p.add_argument("--golden-count", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.02, help="golden score tolerance recorded in the card")
    p.add_argument("--no-fp16", action="store_true", help="do not export model.fp16.onnx (TensorRT 11 input)")
    p.add_argument("--promote", action="store_true", help="point CURRENT at the new version")
    p.set_defaults(func=cmd_publish)

    m = subparsers.add_parser("models", help="list, show, promote or roll back published model versions")
    m.add_argument("--registry", type=Path, default=Path("model"), help="registry root (default: model/)")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="versions of one model (or every model), * = CURRENT")
    ls.add_argument("name", nargs="?")
    ls.set_defaults(func=cmd_list)
    sh = msub.add_parser("show", help="card of a version (default CURRENT) and whether it verifies")
    sh.add_argument("name")
    sh.add_argument("version", nargs="?")
    sh.set_defaults(func=cmd_show)
    pr = msub.add_parser("promote", help="point CURRENT at a version (verified first)")
    pr.add_argument("name")
    pr.add_argument("version")
    pr.set_defaults(func=cmd_promote)
    rb = msub.add_parser("rollback", help="point CURRENT back at the version before the last move")
    rb.add_argument("name")
    rb.set_defaults(func=cmd_rollback)

    c = subparsers.add_parser("calibrate", help="calibrate a camera: ROI mask or threshold")
    csub = c.add_subparsers(dest="calibrate_command", metavar="WHAT", required=True)
    t = csub.add_parser("threshold", help="choose the threshold on the val split for a target FRR or escape")
    t.add_argument("--model", required=True, type=Path, help="model directory (e.g. model/demo/3)")
    t.add_argument("--data", required=True, type=Path, help="linecam dataset with a val split")
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-frr", type=float, help="false-reject rate on good images, e.g. 0.01")
    g.add_argument("--target-escape", type=float, help="escape rate on defective images, e.g. 0.0")
    t.add_argument("--out", required=True, type=Path, help="calibration/<station>/<camera>")
    t.add_argument("--model-name", default=None, help="model name regions.yaml refers to (default: card name)")
    t.add_argument("--region", default=None, help="only this region of regions.yaml")
    t.add_argument("--batch-size", type=int, default=8)
    t.set_defaults(func=cmd_threshold)
    r = csub.add_parser("roi", help="write roi.png and a preview from a reference image")
    r.add_argument("--image", required=True, type=Path)
    rg = r.add_mutually_exclusive_group(required=True)
    rg.add_argument("--polygon", help='"x,y x,y x,y ..." in image pixels')
    rg.add_argument("--mask", type=Path, help="a mask PNG of the image's size (white = inspect)")
    r.add_argument("--out", required=True, type=Path, help="calibration/<station>/<camera>")
    r.set_defaults(func=cmd_roi)


def _err(msg: object) -> int:
    print(f"linecam: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _errors() -> tuple[type[BaseException], ...]:
    from linecam.grdnet.modeldir import ModelDirError
    from linecam.lifecycle.calibrate import CalibrationError
    from linecam.lifecycle.registry import RegistryError

    return (RegistryError, ModelDirError, CalibrationError, ValueError, OSError)


def cmd_publish(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import publish

    command = " ".join(shlex.quote(a) for a in ["linecam", *sys.argv[1:]])
    try:
        path = publish(args.model_dir, args.registry, args.name, version=args.version, golden=args.golden,
                       golden_count=args.golden_count, tolerance=args.tolerance, fp16=not args.no_fp16,
                       command=command, promote=args.promote)
    except _errors() as exc:
        return _err(exc)
    print(f"published {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import list_versions

    root: Path = args.registry
    try:
        names = [args.name] if args.name else sorted(p.name for p in root.iterdir()
                                                     if p.is_dir() and not p.name.startswith("."))
        for name in names:
            for v in list_versions(root / name):
                mark = "*" if v.current else " "
                thr = f"{v.threshold:.5g}" if v.threshold is not None else "-"
                print(f"{mark} {name}/{v.version}  created {v.created}  threshold {thr}")
    except _errors() as exc:
        return _err(exc)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import resolve_version, show

    try:
        data = show(resolve_version(args.registry / args.name, args.version))
    except _errors() as exc:
        return _err(exc)
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0 if data["verified"] else EXIT_BAD_INPUT


def cmd_promote(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import set_current

    try:
        previous = set_current(args.registry / args.name, args.version)
    except _errors() as exc:
        return _err(exc)
    print(f"{args.name}: CURRENT {previous or '(none)'} -> {args.version}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import rollback

    try:
        old, new = rollback(args.registry / args.name)
    except _errors() as exc:
        return _err(exc)
    print(f"{args.name}: CURRENT {old} -> {new} (rollback)")
    return 0


def cmd_threshold(args: argparse.Namespace) -> int:
    from linecam.lifecycle.calibrate import calibrate_threshold

    try:
        rec = calibrate_threshold(args.model, args.data, args.out, target_frr=args.target_frr,
                                  target_escape=args.target_escape, model_name=args.model_name, region=args.region,
                                  batch_size=args.batch_size)
    except _errors() as exc:
        return _err(exc)
    c = rec["confusion"]
    print(f"threshold {rec['threshold']:.6g} for {rec['model']['name']}/{rec['model']['version']} on "
          f"{rec['data']['n']} val images: false-reject rate {c['false_reject_rate']}, escape rate "
          f"{c['escape_rate']}; wrote {args.out}")
    return 0


def cmd_roi(args: argparse.Namespace) -> int:
    from linecam.lifecycle.calibrate import make_roi

    try:
        path = make_roi(args.image, args.out, polygon=args.polygon, mask_path=args.mask)
    except _errors() as exc:
        return _err(exc)
    print(f"wrote {path} and {path.with_name('roi_preview.png')}")
    return 0
