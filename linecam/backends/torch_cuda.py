"""torch-cuda backend: the InferenceGraph on a CUDA GPU in fp16 (or bf16), replayed from CUDA graphs.

Why CUDA graphs: the ``fast`` profile is a few hundred small kernels; at batch 1 launching them from Python
costs more than running them. Each (batch bucket, frame shape, mask shape) is captured once into a CUDA
graph with static input/output buffers; a call copies the frames into a pinned host buffer, issues an
async host->device copy into the static input, replays the graph and copies the scores back through a
pinned buffer. Batches are padded up to the next captured bucket size (1, 2, 4, 8, ... max_batch); the
padded rows hold stale data and their results are dropped.

Nothing here touches CUDA at import time, so the module imports (and the registry lists it as unavailable)
on machines without a GPU. Options: ``precision`` ("fp16" default, "bf16", "fp32"), ``device``
("cuda:0"), ``max_batch`` (64), ``cuda_graphs`` (True), ``threads`` (host-side torch threads).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from linecam.backends.base import BackendSpec, BackendUnavailableError
from linecam.backends.graph import InferenceGraph
from linecam.backends.torch_common import TorchGraphDetector, load_grdnet

CUDA_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Captured batch sizes: powers of two below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"torch-cuda option max_batch must be >= 1, got {max_batch}")
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return tuple(sizes)


@dataclass
class _Captured:
    """Static buffers (and the CUDA graph replaying into them) for one input signature."""

    host_images: torch.Tensor  # pinned uint8 (B, H, W, C)
    host_mask: torch.Tensor | None  # pinned float32 (M, 1, h, w)
    host_scores: torch.Tensor  # pinned float32 (B,)
    images: torch.Tensor  # device
    mask: torch.Tensor | None
    scores: torch.Tensor
    maps: torch.Tensor
    graph: Any  # torch.cuda.CUDAGraph | None
    done: Any  # torch.cuda.Event


class TorchCudaDetector(TorchGraphDetector):
    """InferenceGraph on CUDA; see the module docstring. Takes ownership of ``grdnet`` (moved in place)."""

    backend = "torch-cuda"

    def __init__(
        self,
        grdnet: nn.Module,
        input_size: tuple[int, int],
        model_version: str = "unversioned",
        precision: str = "fp16",
        device: str = "cuda:0",
        max_batch: int = 64,
        cuda_graphs: bool = True,
        threads: int | None = None,
    ) -> None:
        super().__init__(model_version, input_size)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))  # host-side work only
        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch-cuda needs a CUDA build of torch and a visible GPU")
        if precision not in CUDA_PRECISIONS:
            raise ValueError(f"torch-cuda option precision must be one of {sorted(CUDA_PRECISIONS)}")
        torch.backends.cudnn.benchmark = True  # static shapes per bucket: autotune once, at capture
        self.device = torch.device(device)
        self.dtype = CUDA_PRECISIONS[precision]
        self.precision = precision
        self.buckets = batch_buckets(int(max_batch))
        self.max_batch = self.buckets[-1]
        self.cuda_graphs = bool(cuda_graphs)
        net = grdnet.eval().to(device=self.device, dtype=self.dtype).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for p in net.parameters():
            p.requires_grad_(False)
        self.graph = InferenceGraph(net, self.input_size, compute_dtype=self.dtype).eval()
        self.graph_prob = InferenceGraph(net, self.input_size, compute_dtype=self.dtype, with_prob=True).eval()
        self.stream = torch.cuda.Stream(device=self.device)
        self._pool = torch.cuda.graph_pool_handle()
        self._captured: dict[tuple[Any, ...], _Captured] = {}
        self._lock = threading.Lock()

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _capture(self, bucket: int, frame: tuple[int, int, int], mask_shape: tuple[int, ...] | None) -> _Captured:
        """Allocate static buffers for this signature, warm up (cuDNN autotune) and capture a CUDA graph."""
        dev = self.device
        h, w, c = frame
        images = torch.zeros((bucket, h, w, c), dtype=torch.uint8, device=dev)
        mask = torch.ones(mask_shape, dtype=torch.float32, device=dev) if mask_shape is not None else None
        host_images = torch.empty((bucket, h, w, c), dtype=torch.uint8, pin_memory=True)
        host_mask = torch.empty(mask_shape, dtype=torch.float32, pin_memory=True) if mask_shape else None
        host_scores = torch.empty((bucket,), dtype=torch.float32, pin_memory=True)
        graph = None
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            for _ in range(3):
                scores, maps = self.graph(images, mask)
            self.stream.synchronize()
            if self.cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=self.stream):
                    scores, maps = self.graph(images, mask)
        return _Captured(
            host_images=host_images,
            host_mask=host_mask,
            host_scores=host_scores,
            images=images,
            mask=mask,
            scores=scores,
            maps=maps,
            graph=graph,
            done=torch.cuda.Event(),
        )

    def _run_chunk(self, images: np.ndarray, masks: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        bucket = self._bucket(n)
        mask_shape: tuple[int, ...] | None = None
        if masks is not None:
            m = masks.shape[0]
            mask_shape = (1 if m == 1 else bucket, *masks.shape[1:])
        key = (bucket, images.shape[1:], mask_shape)
        cap = self._captured.get(key)
        if cap is None:
            cap = self._capture(bucket, images.shape[1:], mask_shape)
            self._captured[key] = cap
        cap.host_images.numpy()[:n] = images
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            cap.images.copy_(cap.host_images, non_blocking=True)
            if masks is not None and cap.mask is not None and cap.host_mask is not None:
                cap.host_mask.numpy()[: masks.shape[0]] = masks
                cap.mask.copy_(cap.host_mask, non_blocking=True)
            if cap.graph is not None:
                cap.graph.replay()
                scores, maps = cap.scores, cap.maps
            else:
                scores, maps = self.graph(cap.images, cap.mask)
            cap.host_scores.copy_(scores, non_blocking=True)
            # Clone on the same stream: the static buffers are overwritten by the next replay.
            maps_out = maps[:n].clone()
            cap.done.record(self.stream)
        cap.done.synchronize()
        return cap.host_scores[:n].clone(), maps_out

    def _run(self, images: np.ndarray, masks: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            outs = []
            for start in range(0, images.shape[0], self.max_batch):
                chunk_masks = masks
                if masks is not None and masks.shape[0] > 1:
                    chunk_masks = masks[start : start + self.max_batch]
                outs.append(self._run_chunk(images[start : start + self.max_batch], chunk_masks))
            if len(outs) == 1:
                return outs[0]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _run_prob(self, images: np.ndarray, masks: np.ndarray | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluation only: the graph with the raw map, run directly (no CUDA graph), chunked by max_batch."""
        outs = []
        with self._lock, torch.inference_mode():
            for start in range(0, images.shape[0], self.max_batch):
                x = torch.from_numpy(images[start : start + self.max_batch]).to(self.device)
                m = None
                if masks is not None:
                    part = masks if masks.shape[0] == 1 else masks[start : start + self.max_batch]
                    m = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)
                outs.append(self.graph_prob(x, m))
        return tuple(torch.cat([o[i] for o in outs]) for i in range(3))  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            self._captured.clear()
        super().close()
        torch.cuda.empty_cache()


def open_torch_cuda(model_dir: Path, **options: Any) -> TorchCudaDetector:
    """Registry factory: load ``model_dir`` (hash-checked) onto the GPU."""
    grdnet, size, version = load_grdnet(model_dir)
    return TorchCudaDetector(grdnet, size, model_version=version, **options)


def _probe(model_dir: Path | None) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch (CPU build or no GPU)"
    return None


SPEC = BackendSpec(
    name="torch-cuda",
    factory=open_torch_cuda,
    probe=_probe,
    speed_rank=30,
    description="PyTorch on CUDA, fp16 channels_last, CUDA graphs per batch bucket",
    device="cuda",
)
