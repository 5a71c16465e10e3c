"""One anomalib peer (GANomaly or DRAEM) trained, exported and scored the way ``bench/peers/run.py`` asks.

Runs inside the peers' own virtualenv (``bench/peers/setup.sh``): anomalib 2.7 needs a newer torch than the
project pins. It is a child of ``run.py``, never run by hand in the normal flow:

    bench/peers/.venv/bin/python bench/peers/peer.py --peer draem --data data/bfs --budget-s 1800 \
        --work runs/peers/draem --roi-mask runs/peers/roi.png --json runs/peers/draem.json

What it does, in order, and why:

1. Trains on ``train/good`` only (anomalib's ``Folder`` datamodule, no test or val split: the threshold comes
   from linecam's ``val`` below) for at most ``--epochs`` epochs or ``--budget-s`` seconds of wall clock,
   whichever ends first (Lightning's ``max_time`` stops mid-epoch). Precision follows linecam's own rule for
   training on this CPU (bf16 mixed where bf16 is native, else fp32): equal budget means equal hardware use.
   The peers' score normalisation (post-processor) is switched off: a min-max normalisation fitted on test
   data would clip the scores and is not part of the model; linecam's metric code needs raw scores.
2. Exports through anomalib's own ``to_openvino`` (ONNX opset 18 -> OpenVINO IR): the deployment anomalib
   offers for CPUs. OpenVINO picks its default precision (bf16 on AMX, fp32 elsewhere), as linecam's
   OpenVINO backend does; the precision it ran is recorded.
3. Scores ``val``, ``test`` and ``test_unseen`` with that compiled model and hands the scores and anomaly maps
   to :func:`linecam.grdnet.evaluate.compute_metrics`, the code that scores linecam, so no figure differs
   because of the metric. The same predictions are scored again with linecam's calibrated per-camera ROI mask
   multiplied into the map (score = max of the masked map), which shows what an ROI is worth to a model that
   has none. GANomaly has no anomaly map (its score is a latent distance): its pixel AUROC and masked row
   are ``null`` with the reason.
4. Times batch-1 inference: uint8 frame in, score out, the same call the scoring used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from linecam.grdnet.datasets import read_binary_mask, resize_mask
from linecam.grdnet.evaluate import Predictions, _jsonable, compute_metrics, evaluate_model
from linecam.hardware import cpu_summary, resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import batch1_ms, first_test_frame  # noqa: E402  (bench/peers is not a package)

AUTHORS_EPOCHS = {"ganomaly": 15, "draem": 700}
"""Epochs the authors trained with: GANomaly's reference code runs 15 epochs (``niter``); DRAEM's paper
trains 700 epochs (its learning-rate steps at 400 and 600, which anomalib keeps)."""


def make_textures(folder: Path, n: int = 12, size: int = 256, seed: int = 0) -> Path:
    """A folder of procedural texture images for DRAEM's augmenter, standing in for the DTD set.

    DTD cannot be downloaded on these machines; DRAEM blends a texture (or the image itself) into a Perlin-noise
    region, so the stand-in only has to give varied colours and structures: smoothed noise at several scales,
    stripes and checkers, each randomly coloured."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            base = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1 + 6 * rng.random())
        elif kind == 1:
            period = 4 + 28 * rng.random()
            angle = rng.random() * np.pi
            base = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        elif kind == 2:
            cell = int(4 + rng.integers(0, 28))
            base = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
        else:
            base = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 0.7)
        base = (base - base.min()) / max(float(base.max() - base.min()), 1e-6)
        colours = rng.random((2, 3)).astype(np.float32)
        rgb = colours[0] * (1 - base[..., None]) + colours[1] * base[..., None]
        cv2.imwrite(str(folder / f"texture_{i:02d}.png"), (rgb * 255).astype(np.uint8))
    return folder


def build_model(peer: str, size: int, batch_size: int, dtd_dir: Path) -> Any:
    """The anomalib model at its authors' defaults, for ``size`` x ``size`` inputs, without score normalisation."""
    from anomalib.models import Draem, Ganomaly

    quiet = {"post_processor": False, "evaluator": False, "visualizer": False}
    if peer == "ganomaly":
        return Ganomaly(batch_size=batch_size, pre_processor=Ganomaly.configure_pre_processor((size, size)), **quiet)
    if peer == "draem":
        return Draem(dtd_dir=dtd_dir, pre_processor=Draem.configure_pre_processor((size, size)), **quiet)
    raise ValueError(f"unknown peer {peer!r} (ganomaly, draem)")


def throughput_callback() -> Any:
    """A Lightning callback counting the training images seen and timing the training loop itself (lightning is
    imported here: the default test suite imports this file in the project's venv, which has no lightning)."""
    from lightning.pytorch.callbacks import Callback

    class Throughput(Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.t0 = 0.0
            self.images = 0
            self.steps = 0
            self.seconds = 0.0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            self.images += int(batch.image.shape[0])
            self.steps += 1

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.seconds = time.perf_counter() - self.t0

    return Throughput()


def train(peer: str, data: Path, size: int, batch_size: int, epochs: int, budget_s: float, work: Path) -> Any:
    """Train on ``train/good``; returns (model, training record)."""
    from anomalib.data import Folder
    from anomalib.engine import Engine

    precision = resolve_precision("auto", "cpu", workload="train")
    lightning_precision = "bf16-mixed" if precision == "bf16" else "32-true"
    model = build_model(peer, size, batch_size, make_textures(work / "textures"))
    datamodule = Folder(name="linecam", root=data, normal_dir="train/good", train_batch_size=batch_size,
                        eval_batch_size=batch_size, num_workers=0, test_split_mode="none", val_split_mode="none",
                        seed=0)
    meter = throughput_callback()
    engine = Engine(accelerator="cpu", devices=1, max_epochs=epochs, max_time=timedelta(seconds=budget_s),
                    precision=lightning_precision, logger=False,
                    limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                    callbacks=[meter], default_root_dir=work / "lightning")
    t0 = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    wall = time.perf_counter() - t0
    n_train = len(datamodule.train_data)
    record = {"precision": precision, "lightning_precision": lightning_precision, "batch_size": batch_size,
              "max_epochs": epochs, "budget_s": budget_s, "train_images": n_train, "images_seen": meter.images,
              "steps": meter.steps, "epochs_seen": meter.images / max(n_train, 1),
              "train_loop_s": meter.seconds, "fit_wall_s": wall,
              "images_per_s": meter.images / meter.seconds if meter.seconds > 0 else None,
              "stopped_by": "budget" if meter.images < epochs * n_train else "epochs",
              "parameters": int(sum(p.numel() for p in model.model.parameters())),
              "dtd": "no DTD (not downloadable here): a folder of 12 procedural textures made by peer.py"
              if peer == "draem" else None}
    return model, record


class OpenVinoPeer:
    """The exported peer compiled by OpenVINO on the CPU: uint8 RGB frames -> (scores, anomaly maps or None)."""

    def __init__(self, xml: Path, threads: int | None) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(xml), "CPU", config)
        hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(
            hint.split("'")[1] if "'" in hint else hint, hint)
        names = [o.get_any_name() for o in self.compiled.outputs]
        self.score_out = self.compiled.outputs[names.index("pred_score")]
        self.map_out = self.compiled.outputs[names.index("anomaly_map")] if "anomaly_map" in names else None
        self.request = self.compiled.create_infer_request()

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        out = self.request.infer({0: x})
        scores = np.asarray(out[self.score_out], dtype=np.float32).reshape(len(frames))
        maps = None
        if self.map_out is not None:
            maps = np.asarray(out[self.map_out], dtype=np.float32).reshape(len(frames), *frames.shape[1:3])
        return scores, maps


def masked(preds: Predictions, roi: np.ndarray) -> Predictions:
    """The same predictions with the per-camera ROI multiplied into every map (score = max of the masked map)."""
    maps = preds.maps * roi[None]
    return Predictions(maps.reshape(len(maps), -1).max(axis=1), maps, preds.masks, preds.rois, preds.labels,
                       preds.kinds, preds.paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", required=True, choices=sorted(AUTHORS_EPOCHS))
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--json", required=True, type=Path)
    ap.add_argument("--roi-mask", type=Path, default=None, help="linecam's calibrated per-camera ROI (PNG)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=None, help="default: the authors' epochs")
    ap.add_argument("--budget-s", type=float, required=True, help="wall-clock training budget")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--latency-s", type=float, default=10.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TRUST_REMOTE_CODE", "1")
    epochs = args.epochs or AUTHORS_EPOCHS[args.peer]
    args.work.mkdir(parents=True, exist_ok=True)
    model, record = train(args.peer, args.data, args.size, args.batch_size, epochs, args.budget_s, args.work)
    print(f"{args.peer}: trained {record['images_seen']} images ({record['epochs_seen']:.2f} epochs) in "
          f"{record['train_loop_s']:.0f} s, {record['images_per_s']:.2f} img/s, {record['precision']}", flush=True)
    model.eval()
    xml = model.to_openvino(args.work / "export", input_size=(args.size, args.size),
                            onnx_kwargs={"opset_version": 18})
    peer = OpenVinoPeer(Path(xml), args.threads)
    has_map = peer.map_out is not None

    def scorer(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = peer(frames)
        return scores, maps if maps is not None else np.zeros(frames.shape[:3], np.float32)

    t0 = time.perf_counter()
    metrics, preds = evaluate_model(scorer, args.data, args.size, batch_size=8)
    score_s = time.perf_counter() - t0
    if not has_map:
        for key in ("pixel_auroc", "aupro"):
            metrics[key] = None
        metrics.get("unseen", {}).pop("pixel_auroc", None)
        metrics.get("unseen", {}).pop("aupro", None)
    result: dict[str, Any] = {
        "peer": args.peer, "cpu": cpu_summary(), "torch": torch.__version__, "image_size": args.size,
        "authors_epochs": AUTHORS_EPOCHS[args.peer], "training": record,
        "deployment": {"runtime": "openvino", "precision": peer.precision, "export": "anomalib to_openvino, opset 18",
                       "batch1": batch1_ms(peer, first_test_frame(args.data, args.size), args.latency_s)},
        "scoring_s": score_s, "no_mask": metrics, "has_anomaly_map": has_map,
    }
    if args.roi_mask is not None:
        if has_map:
            roi = resize_mask(read_binary_mask(args.roi_mask), args.size).astype(np.float32)
            m = compute_metrics(masked(preds["test"], roi), masked(preds["calibration"], roi),
                                unseen=masked(preds["test_unseen"], roi) if "test_unseen" in preds else None)
            m["fixed_mask"] = True
            result["roi_mask"] = m
        else:
            result["roi_mask"] = None
            result["roi_mask_reason"] = "GANomaly has no anomaly map to mask (its score is a latent distance)"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    print(f"{args.peer}: image AUROC {metrics['image_auroc']:.4f}, FRR {metrics['false_reject_rate']:.3f}, "
          f"batch-1 {result['deployment']['batch1']['median_ms']:.1f} ms ({peer.precision}); wrote {args.json}")


if __name__ == "__main__":
    main()
