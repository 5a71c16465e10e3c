"""linecam side by side with the paper's baselines (anomalib GANomaly and DRAEM), one run, one machine, one metric.

    bash bench/peers/setup.sh                                   # once: the peers' own virtualenv
    .venv/bin/python bench/peers/run.py --data data/bfs --model model/demo
    .venv/bin/python bench/peers/run.py --smoke                 # two peers, 64 px, one epoch: checks the wiring

In the same run, on the same CPU, in this order:

1. **Budget.** linecam's demo recipe (the model card's profile, batch and precision) is timed for a few
   training steps; its budget is ``epochs x training images / images per second``: the wall clock of the
   demo recipe's training steps on this machine (the per-epoch validation the recipe also ran is left out, so
   the budget is if anything generous to the peers). Each peer trains for that long (or its authors' epochs,
   whichever ends first) in the peers' venv (``peer.py``), at linecam's training precision rule.
2. **linecam** (the model directory given) is scored by ``backend: auto``, as the line runs it, on ``val``
   (threshold), ``test`` and ``test_unseen``, without a mask and with linecam's calibrated per-camera ROI mask
   (``linecam calibrate roi`` from the majority of the ``train`` ROI masks), and timed at batch 1.
3. **Each peer** is trained, exported to OpenVINO, scored by the same metric code with the same threshold
   rule, without and with the same ROI mask, and timed at batch 1 (``peer.py``).
4. **Authors' epochs.** With ``--long-budget-s`` a peer whose authors' epochs fit in that many seconds (at the
   speed just measured) is trained again to them; otherwise the estimate is reported and it is not run.

Peers that need pretrained backbones (PatchCore, EfficientAD) are listed as not runnable offline.
Results: ``bench/results/peers.json`` (``--out``) and a Markdown table printed at the end (the README's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linecam.backends.evaluation import evaluate_detector
from linecam.commands.model import load_fixed_mask, open_scoring_detector
from linecam.grdnet.evaluate import _jsonable
from linecam.grdnet.modeldir import read_card
from linecam.hardware import cpu_summary, resolve_precision

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench/ and bench/peers/ are folders of scripts, not packages
from latency import batch1_ms, first_test_frame  # noqa: E402
from train_speed import images_per_s, tiny_dataset  # noqa: E402

PEERS = ("ganomaly", "draem")
NOT_RUNNABLE = {
    "patchcore": "needs an ImageNet-pretrained WideResNet-50 backbone; no weights can be downloaded here",
    "efficient_ad": "needs a pretrained teacher (PDN distilled from WideResNet-50); no weights can be downloaded here",
}


# --------------------------------------------------------------------------------------------- linecam side
def recipe_images_per_s(card: dict[str, Any], warmup: int, steps: int) -> tuple[float, str]:
    """Training images/s of the card's recipe (profile, batch, precision rule) on this CPU, median of ``steps``
    steps of the real trainer (``bench/train_speed.py``'s measurement with the card's profile)."""
    profile = dict(card["profile"])
    name = profile.pop("name")
    precision = resolve_precision("auto", "cpu", workload="train")
    size = int(profile["image_size"])
    with tempfile.TemporaryDirectory() as tmp:  # the timed steps use in-memory batches; the folder builds the Trainer
        rate = images_per_s(tiny_dataset(Path(tmp), size), name, size, precision,
                            int(card["training"]["batch_size"]), warmup, steps, overrides=profile)
    return rate, precision


def calibrated_roi(data: Path, out_dir: Path) -> Path:
    """linecam's per-camera ROI for this dataset: the pixels inside the ROI in most ``train`` images, written by
    ``linecam calibrate roi`` as a user would (the vial jitters, so no single image's ROI fits all)."""
    paths = sorted((data / "roi" / "train" / "good").glob("*.png"))
    if not paths:
        raise SystemExit(f"{data}: no roi/train/good masks to calibrate the per-camera ROI from")
    votes = np.mean([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127 for p in paths], axis=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    majority = out_dir / "majority.png"
    cv2.imwrite(str(majority), ((votes >= 0.5) * 255).astype(np.uint8))
    image = sorted((data / "train" / "good").glob("*.png"))[0]
    subprocess.run([sys.executable, "-m", "linecam", "calibrate", "roi", "--image", str(image),
                    "--mask", str(majority), "--out", str(out_dir / "cam")], check=True, stdout=subprocess.DEVNULL)
    return out_dir / "cam" / "roi.png"


def linecam_row(model: Path, data: Path, roi: Path, threads: int | None, latency_s: float) -> dict[str, Any]:
    card = read_card(model)
    size = card.profile.image_size
    detector = open_scoring_detector(model, "auto", "auto", "cpu", threads)
    choice = getattr(detector, "auto_choice", None)
    no_mask, _ = evaluate_detector(detector, data, size)
    with_mask, _ = evaluate_detector(detector, data, size, fixed_mask=load_fixed_mask(roi, size))
    latency = batch1_ms(lambda f: detector.detect(f), first_test_frame(data, size), latency_s)
    row = {"model": f"{card.name}/{card.version}", "image_size": size, "no_mask": no_mask, "roi_mask": with_mask,
           "deployment": {"runtime": detector.backend, "precision": str(getattr(detector, "precision", "")),
                          "auto": choice.line() if choice is not None else None, "batch1": latency},
           "parameters": None}
    detector.close()
    return row


# --------------------------------------------------------------------------------------------- peers
def run_peer(python: Path, peer: str, data: Path, work: Path, roi: Path, *, size: int, batch: int,
             epochs: int | None, budget_s: float, threads: int | None, latency_s: float, tag: str) -> dict[str, Any]:
    out = work / f"{peer}-{tag}.json"
    cmd = [str(python), str(HERE / "peer.py"), "--peer", peer, "--data", str(data),
           "--work", str(work / f"{peer}-{tag}"), "--json", str(out), "--roi-mask", str(roi),
           "--size", str(size), "--batch-size", str(batch),
           "--budget-s", f"{budget_s:.1f}", "--latency-s", str(latency_s)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if threads:
        cmd += ["--threads", str(threads)]
    print(f"== {peer} ({tag}): {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = work / f"{peer}-{tag}.log"
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise SystemExit(f"{peer} ({tag}) failed with exit {proc.returncode}; log {log}:\n{tail}")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(f"{peer}:")), flush=True)
    result = json.loads(out.read_text())
    result["child_wall_s"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------- report
def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def summary(name: str, m: dict[str, Any] | None, masked: dict[str, Any] | None, train_rate: float | None,
            seen: str, deploy: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one model, the table's row."""
    m = m or {}
    ci = m.get("image_auroc_ci95") or [None, None]
    return {"model": name, "image_auroc": m.get("image_auroc"), "image_auroc_ci95": ci,
            "pixel_auroc": m.get("pixel_auroc"),
            "good_frr": m.get("per_kind", {}).get("good", {}).get("reject_rate"),
            "outside_roi_frr": m.get("outside_roi_false_reject_rate"),
            "outside_roi_frr_with_roi_mask": (masked or {}).get("outside_roi_false_reject_rate"),
            "escape_rate": m.get("escape_rate"), "unseen_auroc": m.get("unseen", {}).get("image_auroc"),
            "train_images_per_s": train_rate, "trained": seen,
            "batch1_ms": deploy["batch1"]["median_ms"], "runtime": f"{deploy['runtime']} {deploy['precision']}"}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | image AUROC (95% CI) | pixel AUROC | good FRR | out-of-ROI FRR (with ROI mask) | escapes | "
            "unseen AUROC | train img/s | trained | batch-1 ms (runtime) |\n|" + "---|" * 10)
    lines = [head]
    for r in rows:
        lo, hi = r["image_auroc_ci95"]
        ci = f" ({lo:.3f}-{hi:.3f})" if lo is not None else ""
        masked = _pct(r["outside_roi_frr_with_roi_mask"])
        lines.append(f"| {r['model']} | {_fmt(r['image_auroc'])}{ci} | {_fmt(r['pixel_auroc'])} | "
                     f"{_pct(r['good_frr'])} | {_pct(r['outside_roi_frr'])} ({masked})"
                     f" | {_pct(r['escape_rate'])} | {_fmt(r['unseen_auroc'])} | "
                     f"{_fmt(r['train_images_per_s'], 2)} | {r['trained']} | {r['batch1_ms']:.1f} ({r['runtime']}) |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main
def smoke_data(work: Path) -> Path:
    data = work / "data"
    subprocess.run([sys.executable, "-m", "linecam", "synth", "--out", str(data), "--seed", "5", "--size", "64",
                    "--counts", "train=16,val=8,val/*=3,test=8,test/*=3,test_unseen=3", "--workers", "1",
                    "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "bfs")
    ap.add_argument("--model", type=Path, default=ROOT / "model" / "demo")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--peers-python", type=Path, default=HERE / ".venv" / "bin" / "python")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "peers")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=None, help="override the measured budget (not comparable)")
    ap.add_argument("--long-budget-s", type=float, default=0.0,
                    help="run a peer to its authors' epochs when the estimate fits in this many seconds")
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument("--smoke", action="store_true", help="64 px synthetic data, one epoch, a few seconds each")
    args = ap.parse_args(argv)
    if not args.peers_python.exists():
        raise SystemExit(f"{args.peers_python}: no peers' venv; run bash bench/peers/setup.sh first")
    args.work.mkdir(parents=True, exist_ok=True)
    size, batch, epochs, steps = 256, 8, None, 5
    if args.smoke:
        args.data = smoke_data(args.work)
        size, batch, epochs, steps, args.latency_s = 64, 4, 1, 1, 1.0
    if not (args.data / "train" / "good").is_dir():
        raise SystemExit(f"{args.data}: not a linecam dataset (no train/good); make one with linecam synth")
    cpu = cpu_summary()
    print(f"CPU: {cpu['model']} ({cpu['kind']}), flags {' '.join(cpu['flags'])}", flush=True)
    card = json.loads((args.model / "card.json").read_text())
    rate, train_precision = recipe_images_per_s(card, warmup=1, steps=steps)
    recipe_images = int(card["training"]["epochs"]) * int(card["training"]["train"]["images"])
    budget = args.budget_s if args.budget_s is not None else recipe_images / rate
    print(f"linecam demo recipe: {rate:.2f} img/s ({train_precision}) x {recipe_images} images "
          f"({card['training']['epochs']} epochs) -> training budget {budget:.0f} s per peer", flush=True)
    roi = calibrated_roi(args.data, args.work / "calibration")
    lc = linecam_row(args.model, args.data, roi, args.threads, args.latency_s)
    lc["training"] = {"images_per_s": rate, "precision": train_precision, "recipe_images": recipe_images,
                      "budget_s": recipe_images / rate, "card_images_per_s": card["training"].get("images_per_s")}
    print(f"linecam {lc['model']}: image AUROC {lc['no_mask']['image_auroc']:.4f}, "
          f"batch-1 {lc['deployment']['batch1']['median_ms']:.1f} ms ({lc['deployment']['auto']})", flush=True)
    rows = [summary(f"linecam {lc['model']} (GRD-Net, learned ROI)", lc["no_mask"], lc["roi_mask"], rate,
                    f"{card['training']['epochs']} epochs", lc["deployment"])]
    peers: dict[str, Any] = {}
    for peer in args.peers:
        res = run_peer(args.peers_python, peer, args.data, args.work, roi, size=size, batch=batch, epochs=epochs,
                       budget_s=budget, threads=args.threads, latency_s=args.latency_s, tag="budget")
        t = res["training"]
        peers[peer] = {"equal_budget": res}
        rows.append(summary(f"anomalib {peer} (equal budget)", res["no_mask"], res.get("roi_mask"),
                            t["images_per_s"], f"{t['epochs_seen']:.2f} epochs", res["deployment"]))
        per_epoch_s = t["train_images"] / t["images_per_s"] if t["images_per_s"] else float("inf")
        needed = res["authors_epochs"] * per_epoch_s
        long: dict[str, Any] = {"authors_epochs": res["authors_epochs"], "estimated_s": needed,
                                "run": needed <= args.long_budget_s}
        if long["run"] and not args.smoke:
            res_long = run_peer(args.peers_python, peer, args.data, args.work, roi, size=size, batch=batch,
                                epochs=res["authors_epochs"], budget_s=args.long_budget_s, threads=args.threads,
                                latency_s=args.latency_s, tag="authors")
            long["result"] = res_long
            tl = res_long["training"]
            rows.append(summary(f"anomalib {peer} ({res['authors_epochs']} epochs)", res_long["no_mask"],
                                res_long.get("roi_mask"), tl["images_per_s"], f"{tl['epochs_seen']:.2f} epochs",
                                res_long["deployment"]))
        else:
            long["why_not"] = (f"{res['authors_epochs']} epochs need about {needed / 3600:.1f} h at the "
                               f"{t['images_per_s']:.2f} img/s measured here (allowed: {args.long_budget_s:.0f} s)")
            print(f"{peer}: authors' epochs not run: {long['why_not']}", flush=True)
        peers[peer]["authors_epochs"] = long
    md = table(rows)
    print(md)
    result = {"cpu": cpu, "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "data": str(args.data),
              "image_size": size, "budget_s": budget, "budget_measured": args.budget_s is None,
              "linecam": lc, "peers": peers, "not_runnable_offline": NOT_RUNNABLE, "rows": rows, "table_md": md,
              "command": " ".join(["bench/peers/run.py", *(argv if argv is not None else sys.argv[1:])])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
