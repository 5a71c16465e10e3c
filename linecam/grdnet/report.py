"""HTML/PNG evaluation report: ROC curves and the paper's Fig. 8 panels for the worst cases.

Why: a quality engineer signs off a model by looking at what it gets wrong, not at one AUROC. The worst cases
are the good images with the highest scores (false rejects, ``outside_roi`` included: the ROI attention
failing) and the defective images with the lowest scores (escapes). Each gets the Fig. 8 row: input,
reconstruction, ground truth (ROI outlined), raw heatmap, 21x21-smoothed heatmap, jet overlay.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from linecam.decision import rejects
from linecam.grdnet.datasets import image_to_tensor, read_rgb, resize_rgb
from linecam.grdnet.evaluate import Predictions
from linecam.grdnet.model import GRDNet
from linecam.grdnet.scoring import smooth_map


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc_curves(preds: dict[str, Predictions], path: Path) -> None:
    """Image-level ROC per split (test, test_unseen vs test good) and in-ROI pixel ROC of the test split."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, (ax_i, ax_p) = plt.subplots(1, 2, figsize=(10, 4.5))
    test = preds["test"]
    curves = {"test": (test.labels, test.scores)}
    if "test_unseen" in preds:
        u = preds["test_unseen"]
        good = test.labels == 0
        curves["unseen vs test good"] = (np.r_[test.labels[good], u.labels], np.r_[test.scores[good], u.scores])
    for name, (y, s) in curves.items():
        if y.min() != y.max():
            fpr, tpr, _ = roc_curve(y, s)
            ax_i.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, s):.3f})")
    ax_i.set(title="image ROC", xlabel="false-reject rate", ylabel="detection rate")
    ax_i.legend(loc="lower right")
    sel = test.rois
    y, s = test.masks[sel], test.maps[sel]
    if y.size and y.min() != y.max():
        fpr, tpr, _ = roc_curve(y, s)
        ax_p.plot(fpr, tpr, label=f"pixels in ROI (AUROC {roc_auc_score(y, s):.3f})")
        ax_p.legend(loc="lower right")
    ax_p.set(title="pixel ROC (inside ROI)", xlabel="FPR", ylabel="TPR")
    for ax in (ax_i, ax_p):
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def worst_cases(preds: Predictions, threshold: float, n: int) -> list[tuple[int, str]]:
    """Indices of the highest-scoring good images and lowest-scoring defective ones, with why they are shown."""
    out: list[tuple[int, str]] = []
    good = np.flatnonzero(preds.labels == 0)
    bad = np.flatnonzero(preds.labels == 1)
    for i in good[np.argsort(-preds.scores[good])][:n]:
        out.append((int(i), "false reject" if rejects(preds.scores[i], threshold) else "highest good"))
    for i in bad[np.argsort(preds.scores[bad])][:n]:
        out.append((int(i), "escape" if preds.scores[i] < threshold else "lowest defect"))
    return out


@torch.no_grad()
def fig8_panel(model: GRDNet, image_path: str, mask: np.ndarray, roi: np.ndarray, size: int,
               title: str, path: Path) -> None:
    """One row of paper Fig. 8 panels for an image, recomputed with the model (prob map + reconstruction)."""
    plt = _plt()
    rgb = resize_rgb(read_rgb(Path(image_path)), size)
    x = image_to_tensor(rgb)[None]
    model.eval()
    x_hat = model.generator.reconstruct(x)
    prob = torch.sigmoid(model.unet(x, x_hat)).float()
    smooth = smooth_map(prob)[0, 0].numpy()
    heat = prob[0, 0].numpy()
    recon = (x_hat[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    m8 = mask.astype(np.uint8)
    gt = np.dstack([m8 * 255, m8 * 140, np.zeros_like(m8)]).astype(np.uint8)
    contours, _ = cv2.findContours(roi.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    gt = np.ascontiguousarray(gt)
    cv2.drawContours(gt, contours, -1, (60, 120, 255), 1)
    norm = smooth / max(float(smooth.max()), 1e-6)
    jet = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    overlay = (0.55 * rgb + 0.45 * jet).astype(np.uint8)
    panels = [("input X", rgb), ("reconstruction", recon), ("ground truth (ROI blue)", gt),
              ("heatmap", heat), ("21x21 smoothed", smooth), ("overlay (jet)", overlay)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
    for ax, (name, img) in zip(axes, panels, strict=True):
        if img.ndim == 2:
            ax.imshow(img, cmap="jet", vmin=0, vmax=1)
        else:
            ax.imshow(img)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(out_dir: str | Path, model: GRDNet, preds: dict[str, Predictions],
                 metrics: dict[str, Any], image_size: int, n_worst: int = 4,
                 training_plot: Path | None = None) -> Path:
    """Write roc.png, cases/*.png and index.html under ``out_dir``; returns the index path.

    ``training_plot`` (the model's ``training/loss_curves.png``, losses and validation AUROC per epoch) is
    copied next to the page and shown with it, so the figures and the run that produced them are read together."""
    out = Path(out_dir)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    # Panels of an earlier report in the same folder would sit next to this one's and could be taken for the
    # current model's worst cases: remove the files this function names (NN_kind_stem.png), nothing else.
    for stale in (out / "cases").glob("[0-9][0-9]_*.png"):
        stale.unlink()
    plot_roc_curves(preds, out / "roc.png")
    thr = float(metrics["threshold"])
    test = preds["test"]
    rows = []
    for k, (i, why) in enumerate(worst_cases(test, thr, n_worst)):
        name = f"{k:02d}_{test.kinds[i]}_{Path(test.paths[i]).stem}.png"
        title = f"{why}: {test.kinds[i]} {Path(test.paths[i]).name} score {test.scores[i]:.4f} (thr {thr:.4f})"
        fig8_panel(model, test.paths[i], test.masks[i], test.rois[i], image_size, title, out / "cases" / name)
        rows.append(f"<h3>{html.escape(title)}</h3><img src='cases/{html.escape(name)}'>")
    training = ""
    if training_plot is not None and Path(training_plot).is_file():
        shutil.copyfile(training_plot, out / "training_curves.png")
        training = ("<h2>Training (per epoch)</h2><p>Losses and validation figures per epoch; the dashed line marks "
                    "the epoch with the best validation AUROC.</p><img src='training_curves.png'>")
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>"
                    for k, v in sorted(scalars.items()))
    nested = html.escape(json.dumps({k: v for k, v in metrics.items() if k not in scalars}, indent=1, default=str))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>linecam GRD-Net evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 10px}img{max-width:100%}</style></head><body>"
        "<h1>GRD-Net evaluation</h1><p>Thresholds were calibrated on the calibration split; the figures below are "
        "on the test split, scored without any mask.</p>"
        f"<table>{table}</table><pre>{nested}</pre><h2>ROC</h2><img src='roc.png'>"
        f"<h2>Worst cases</h2>{''.join(rows)}{training}</body></html>"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
