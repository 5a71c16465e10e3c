"""``linecam publish | models | calibrate | archive | dataset``: the model lifecycle commands.

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
    """Add publish, models (list/show/promote/rollback/verify), calibrate (threshold/roi), archive
    (prune/status) and dataset (from-archive)."""
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
    p.add_argument("--sign-key", type=Path, default=None,
                   help="Ed25519 private key (linecam keygen --signing): sign the new version before it can be "
                        "promoted")
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
    sg = msub.add_parser("sign", help="sign a version (default CURRENT) with an Ed25519 private key")
    sg.add_argument("name")
    sg.add_argument("version", nargs="?")
    sg.add_argument("--key", type=Path, required=True, help="private key file from `linecam keygen --signing`")
    sg.add_argument("--force", action="store_true", help="replace an existing signature")
    sg.set_defaults(func=cmd_sign)
    ve = msub.add_parser("verify", help="check a version's files and its signature against public keys")
    ve.add_argument("name")
    ve.add_argument("version", nargs="?")
    ve.add_argument("--trusted-key", type=Path, action="append", default=[],
                    help="public key file (repeatable), as in infer.trusted_keys")
    ve.set_defaults(func=cmd_verify)

    c = subparsers.add_parser("calibrate", help="calibrate a camera: ROI mask or threshold")
    csub = c.add_subparsers(dest="calibrate_command", metavar="WHAT", required=True)
    t = csub.add_parser("threshold", help="choose the threshold on the val split for a target FRR or escape")
    t.add_argument("--model", required=True, type=Path, help="model directory (e.g. model/demo/3)")
    t.add_argument("--data", required=True, type=Path, help="linecam dataset with a val split")
    t.add_argument("--backend", default="auto", help="backend that scores (default auto: what the line runs here)")
    t.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-frr", type=float, help="false-reject rate on good images, e.g. 0.01")
    g.add_argument("--target-escape", type=float, help="escape rate on defective images, e.g. 0.0")
    t.add_argument("--out", type=Path, default=None,
                   help="calibration/<station>/<camera>: threshold.json, scores.png and the version's threshold in "
                        "regions.yaml")
    t.add_argument("--card", action="store_true",
                   help="also write the threshold into the model's card.json (never into a published version); "
                        "the line uses it where regions.yaml names none")
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

    a = subparsers.add_parser("archive", help="the inspection archive: apply size cap and retention, show usage")
    asub = a.add_subparsers(dest="archive_command", metavar="ACTION", required=True)
    ap = asub.add_parser("prune", help="delete days older than the retention, then the oldest items over the cap "
                                       "(the worker also does this by itself)")
    ap.add_argument("archive", nargs="?", type=Path, help="archive folder (default: archive.path of --config)")
    ap.add_argument("--config", type=Path, default=None, help="line config whose archive: section gives the limits")
    ap.add_argument("--max-bytes", default=None, help="size cap of the day folders, e.g. 20GB, 500MiB")
    ap.add_argument("--max-age-days", type=int, default=None)
    ap.add_argument("--prune-to", type=float, default=None, help="fraction of the cap to prune down to (0.9)")
    ap.set_defaults(func=cmd_archive_prune)
    st = asub.add_parser("status", help="bytes, days, items per decision, reviewed and unreviewed frames")
    st.add_argument("archive", type=Path)
    st.set_defaults(func=cmd_archive_status)

    d = subparsers.add_parser("dataset", help="build a training dataset from line data")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    fa = dsub.add_parser("from-archive", help="reviewed archive frames -> linecam dataset (train/good, val/...)")
    fa.add_argument("archive", type=Path, help="archive folder holding reviewed/good and reviewed/<kind>")
    fa.add_argument("--out", required=True, type=Path, help="new (or empty) dataset folder")
    fa.add_argument("--val-share", type=float, default=0.2, help="share of good images put in val (default 0.2)")
    fa.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    fa.add_argument("--roi", type=Path, default=None,
                    help="calibration roi.png (frame size); default: full-frame ROI")
    fa.add_argument("--calibration", type=Path, default=None,
                    help="camera calibration folder (regions.yaml) for --region")
    fa.add_argument("--region", default=None,
                    help="build the dataset of this inspection region only: frames cropped to its box")
    fa.add_argument("--require-masks", action="store_true",
                    help="refuse defects without a drawn <name>_mask.png (default: ROI stands in)")
    fa.set_defaults(func=cmd_from_archive)


def _err(msg: object) -> int:
    print(f"linecam: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _errors() -> tuple[type[BaseException], ...]:
    from linecam.backends.base import BackendUnavailableError
    from linecam.grdnet.modeldir import ModelDirError
    from linecam.lifecycle.calibrate import CalibrationError
    from linecam.lifecycle.registry import RegistryError
    from linecam.modelstore.signing import SignatureError

    return (RegistryError, ModelDirError, CalibrationError, SignatureError, BackendUnavailableError, ValueError,
            OSError)


def cmd_publish(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import publish

    command = " ".join(shlex.quote(a) for a in ["linecam", *sys.argv[1:]])
    try:
        if args.sign_key is not None:  # a key that cannot sign is found before anything is published
            from linecam.lifecycle.signing import load_private_key

            load_private_key(args.sign_key)
        path = publish(args.model_dir, args.registry, args.name, version=args.version, golden=args.golden,
                       golden_count=args.golden_count, tolerance=args.tolerance, fp16=not args.no_fp16,
                       command=command, promote=args.promote, sign_key=args.sign_key)
    except _errors() as exc:
        return _err(exc)
    print(f"published {path}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import resolve_version
    from linecam.lifecycle.signing import sign_version

    try:
        path = resolve_version(args.registry / args.name, args.version)
        signer = sign_version(path, args.key, force=args.force)
    except _errors() as exc:
        return _err(exc)
    print(f"{path}: signed by key {signer}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from linecam.lifecycle.registry import resolve_version, verify_version
    from linecam.modelstore.signing import load_trusted_keys, read_signature, verify_signature

    try:
        path = resolve_version(args.registry / args.name, args.version)
        verify_version(path)
        if args.trusted_key:
            signer = verify_signature(path, load_trusted_keys(args.trusted_key))
            print(f"{path}: files match the card; signed by trusted key {signer}")
        else:
            record = read_signature(path)
            signed = f"signed by key {record['key_id']} (not checked: no --trusted-key)" if record else "unsigned"
            print(f"{path}: files match the card; {signed}")
    except _errors() as exc:
        return _err(exc)
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
                                  batch_size=args.batch_size, card=args.card, backend=args.backend,
                                  precision=args.precision)
    except _errors() as exc:
        return _err(exc)
    c = rec["confusion"]
    version = f"{rec['model']['name']}/{rec['model']['version']}"
    print(f"threshold {rec['threshold']:.6g} for {version} on {rec['data']['n']} val images: false-reject rate "
          f"{c['false_reject_rate']}, escape rate {c['escape_rate']}")
    for region, old in rec.get("previous", {}).items():
        print(f"{args.out / 'regions.yaml'}: region {region}, version {rec['model']['version']}: threshold "
              f"{_threshold_text(old)} -> {rec['threshold']:.6g}")
    if "card_previous" in rec:
        print(f"{args.model / 'card.json'}: threshold {_threshold_text(rec['card_previous'])} -> "
              f"{rec['threshold']:.6g}")
    return 0


def _threshold_text(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def cmd_roi(args: argparse.Namespace) -> int:
    from linecam.lifecycle.calibrate import make_roi

    try:
        path = make_roi(args.image, args.out, polygon=args.polygon, mask_path=args.mask)
    except _errors() as exc:
        return _err(exc)
    print(f"wrote {path} and {path.with_name('roi_preview.png')}")
    return 0


def cmd_archive_prune(args: argparse.Namespace) -> int:
    from linecam.config import load_config, parse_size
    from linecam.runtime.archive import prune_archive

    try:
        cfg = None
        if args.config is not None:
            cfg = load_config(args.config).archive
            if cfg is None:
                return _err(f"{args.config}: no archive: section")
        root = args.archive or (cfg.path if cfg is not None else None)
        max_bytes = parse_size(args.max_bytes) if args.max_bytes is not None else (cfg.max_bytes if cfg else None)
        max_age = args.max_age_days if args.max_age_days is not None else (cfg.max_age_days if cfg else None)
        prune_to = args.prune_to if args.prune_to is not None else (cfg.prune_to_fraction if cfg else 0.9)
        missing = [n for n, v in (("ARCHIVE", root), ("--max-bytes", max_bytes), ("--max-age-days", max_age))
                   if v is None]
        if missing:
            return _err(f"archive prune: give {', '.join(missing)} (or --config with an archive: section)")
        assert root is not None and max_bytes is not None and max_age is not None
        if not Path(root).is_dir():
            return _err(f"{root}: archive folder does not exist")
        result = prune_archive(Path(root), int(max_bytes), int(max_age), prune_to)
    except _errors() as exc:  # ConfigError is a ValueError
        return _err(exc)
    print(f"{root}: removed {result.files['age']} file(s) older than {max_age} days "
          f"({len(result.removed_days)} day folder(s) gone) and {result.files['cap']} file(s) over the cap; "
          f"{result.remaining_bytes} bytes remain (cap {max_bytes})")
    return 0


def cmd_archive_status(args: argparse.Namespace) -> int:
    from linecam.lifecycle.from_archive import collect_reviewed, count_unreviewed
    from linecam.runtime.archive import archive_bytes, day_folders

    root: Path = args.archive
    try:
        if not root.is_dir():
            return _err(f"{root}: archive folder does not exist")
        days = day_folders(root)
        per_decision = {d: sum(1 for _, day in days for _ in day.glob(f"*/{d}/*_verdict.json"))
                        for d in ("reject", "accept")}
        print(f"{root}: {archive_bytes(root)} bytes in {len(days)} day folder(s)"
              + (f" ({days[0][1].name} .. {days[-1][1].name})" if days else ""))
        print(f"  archived items: {per_decision['reject']} reject, {per_decision['accept']} accept; "
              f"{count_unreviewed(root)} frame(s) not reviewed yet")
        if (root / "reviewed").is_dir():
            images, ignored = collect_reviewed(root)
            kinds: dict[str, int] = {}
            for img in images:
                kinds[img.kind] = kinds.get(img.kind, 0) + 1
            print("  reviewed: " + (", ".join(f"{k}={n}" for k, n in sorted(kinds.items())) or "none")
                  + (f"; {len(ignored)} non-image file(s) ignored" if ignored else ""))
    except _errors() as exc:
        return _err(exc)
    return 0


def cmd_from_archive(args: argparse.Namespace) -> int:
    from linecam.lifecycle.from_archive import build_dataset, region_crop

    if (args.region is None) != (args.calibration is None):
        return _err("--region and --calibration go together (the region's box is read from "
                    "<calibration>/regions.yaml)")
    try:
        region = region_crop(args.calibration, args.region) if args.region is not None else None
        result = build_dataset(args.archive, args.out, val_share=args.val_share, seed=args.seed, roi=args.roi,
                               require_masks=args.require_masks, region=region)
    except _errors() as exc:
        return _err(exc)
    print(result.summary())
    print(f"checked: {result.check.images if result.check else 0} images pass `linecam data check`")
    return 0
