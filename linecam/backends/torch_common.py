"""What the torch backends (CPU and CUDA) share: loading a model directory and the detect() skeleton.

A torch backend only decides *how* to run an :class:`~linecam.backends.graph.InferenceGraph` (device, dtype,
tracing, CUDA graphs); validation, tensor conversion and the :class:`Detection` packaging live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from linecam.backends.base import Detection
from linecam.backends.inputs import check_images, check_masks


def model_version_of(card: object) -> str:
    """A printable "name/version" identifier for a model card (what verdicts carry as ``model_version``)."""
    name = getattr(card, "name", None) or "model"
    version = getattr(card, "version", None) or "unversioned"
    return f"{name}/{version}"


def load_grdnet(model_dir: Path) -> tuple[nn.Module, tuple[int, int], str]:
    """Load and hash-check a model directory -> (GRDNet in eval mode, (S, S) input size, model version)."""
    from linecam.grdnet.modeldir import load_model_dir

    model, card = load_model_dir(model_dir, verify=True)
    model.eval()
    h, w = card.input_size
    return model, (int(h), int(w)), model_version_of(card)


class TorchGraphDetector(ABC):
    """Detector skeleton: validate -> tensors -> :meth:`_run` (backend specific) -> numpy Detection."""

    backend: str = "torch"

    def __init__(self, model_version: str, input_size: tuple[int, int]) -> None:
        self.model_version = model_version
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._closed = False

    @abstractmethod
    def _run(self, images: np.ndarray, masks: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the graph on validated uint8 NHWC images and float (M,1,h,w) masks -> (scores, maps)."""

    def _run_prob(self, images: np.ndarray, masks: np.ndarray | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`_run`, plus the raw probability maps (evaluation); backends override it."""
        raise ValueError(f"the {self.backend} backend does not return raw probability maps")

    def detect(
        self, images: np.ndarray, masks: np.ndarray | None = None, return_maps: bool = False,
        return_prob: bool = False,
    ) -> Detection:
        if self._closed:
            raise RuntimeError(f"{self.backend} detector for {self.model_version} is closed")
        imgs = check_images(images)
        mask = check_masks(masks, imgs.shape[0])
        prob = None
        if return_prob:
            scores, maps, prob = self._run_prob(imgs, mask)
        else:
            scores, maps = self._run(imgs, mask)
        score_np = scores.detach().to("cpu", torch.float32).numpy().reshape(-1)
        maps_np = maps.detach().to("cpu", torch.float32).numpy()[:, 0] if return_maps else None
        prob_np = prob.detach().to("cpu", torch.float32).numpy()[:, 0] if prob is not None else None
        return Detection(scores=score_np, maps=maps_np, prob=prob_np)

    def close(self) -> None:
        self._closed = True
