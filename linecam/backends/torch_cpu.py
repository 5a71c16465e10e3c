"""torch-cpu backend: the InferenceGraph on the CPU, bf16 + channels_last where the CPU has it.

Why these defaults (measured with ``bench/infer.py`` on the 2-core AVX-512/AMX build machine; see the
report in that script's JSON): oneDNN runs bf16 channels_last convolutions several times faster than fp32
on AMX, and ``torch.jit.trace`` + ``torch.jit.freeze`` folds conv+BN and removes Python overhead, which
matters for the small ``fast`` profile at batch 1. Traced graphs are cached per input shape (H, W, C,
mask size or no mask); the batch dimension stays dynamic.

With ``fuse`` (default) the traced graph also goes through oneDNN Graph (LLGA) fusion, which merges
conv + BN + ReLU/add chains into single kernels: about 20% less time than the frozen graph alone on the
``fast`` profile at batch 1 (1 thread, 256 px: 24 vs 31 ms, contended machine). It is a process-wide JIT
switch (``torch.jit.enable_onednn_fusion``) and, like the profiling executor, it specialises on every new
batch size: the first two calls at a new size take ~100 ms extra. ``warmup`` lists batch sizes to run at
construction so the line never pays that on a product.

bf16 runs as mixed precision, the way the training-time evaluator runs it: the module keeps fp32 weights and
BatchNorm statistics, and ``torch.autocast`` runs the convolutions in bf16 (activations between layers are bf16;
BatchNorm normalises them with its fp32 statistics). The graph is traced under autocast, so the casts are
recorded in it, and freezing folds the weight casts into bf16 constants: no weight is cast per call. Why not
convert the whole network to bf16, as earlier versions did: that also rounds every BatchNorm's mean, variance
and scale to 8 mantissa bits, and on the 600-image test split demo/5 then drifted +0.0064 image AUROC from
fp32 (bar: 0.005; max score difference 0.046). The autocast graph drifts -0.0004 (max difference 0.022) at the
same or lower batch-1 latency (``bench/backend_parity.py``, ``bench/infer.py``). ``fold_bf16`` (default True)
lets ``torch.jit.freeze`` fold the BatchNorms that follow a convolution (``optimize_numerics``).

Options: ``precision`` ("auto" = bf16 on a CPU with AMX, else fp32, see ``linecam.hardware``; "bf16";
"fp32"), ``mode`` ("jit" or "eager"), ``fuse`` (True), ``threads`` (``torch.set_num_threads``; process-wide),
``warmup`` (batch sizes), ``fold_bf16`` (True).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from linecam.backends.base import BackendSpec
from linecam.backends.graph import InferenceGraph
from linecam.backends.torch_common import TorchGraphDetector, load_grdnet
from linecam.hardware import native_bf16, why_fp32_is_faster, why_no_bf16

PRECISIONS = ("auto", "bf16", "fp32")
MODES = ("jit", "eager")


def cpu_supports_bf16() -> bool:
    """True when bf16 is native here (AVX512-BF16 / AMX, see :mod:`linecam.hardware`); elsewhere it is emulated
    and slower than fp32, so ``auto`` never picks it."""
    return native_bf16()


def resolve_precision(precision: str) -> torch.dtype:
    """Map the ``precision`` option to a dtype; "bf16" on a CPU without bf16 support is an error, not a slowdown."""
    if precision not in PRECISIONS:
        raise ValueError(f"torch-cpu option precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if not cpu_supports_bf16():
            raise ValueError(f"torch-cpu precision='bf16' requested, but {why_no_bf16()}; use precision fp32 "
                             "or auto")
        return torch.bfloat16
    return torch.bfloat16 if why_fp32_is_faster() is None else torch.float32


def cpu_autocast(dtype: torch.dtype) -> torch.autocast:
    """How this backend runs a compute dtype: bf16 = autocast over fp32 weights (convolutions in bf16, BatchNorm
    with fp32 statistics; see the module docstring); fp32 = a no-op context. Benchmarks use it too, so what
    they time is what the line runs."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


class TorchCpuDetector(TorchGraphDetector):
    """Runs the InferenceGraph on the CPU; build with :func:`open_torch_cpu` or directly from a GRDNet.

    The detector takes ownership of ``grdnet``: it is converted in place (fp32, channels_last, frozen).
    """

    backend = "torch-cpu"

    def __init__(
        self,
        grdnet: nn.Module,
        input_size: tuple[int, int],
        model_version: str = "unversioned",
        precision: str = "auto",
        mode: str = "jit",
        threads: int | None = None,
        fuse: bool = True,
        warmup: Sequence[int] = (),
        fold_bf16: bool = True,
    ) -> None:
        super().__init__(model_version, input_size)
        if mode not in MODES:
            raise ValueError(f"torch-cpu option mode must be one of {MODES}, got {mode!r}")
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"torch-cpu option threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.dtype = resolve_precision(precision)
        self.mode = mode
        self.precision = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        self.fold_numerics = self.dtype == torch.float32 or bool(fold_bf16)
        # fp32 weights in both precisions: bf16 is autocast (see the module docstring), not a converted network.
        net = grdnet.eval().to(device="cpu", dtype=torch.float32).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for p in net.parameters():
            p.requires_grad_(False)
        self.graph = InferenceGraph(net, self.input_size, compute_dtype=torch.float32).eval()
        self.graph_prob = InferenceGraph(net, self.input_size, compute_dtype=torch.float32, with_prob=True).eval()
        self._traced: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()
        if mode == "jit" and fuse:
            torch.jit.enable_onednn_fusion(True)
        for batch in warmup:
            frames = np.zeros((int(batch), *self.input_size, 3), dtype=np.uint8)
            for _ in range(2):
                self.detect(frames)

    def _compiled(self, images: torch.Tensor, mask: torch.Tensor | None, with_prob: bool = False) -> Any:
        """The graph traced and frozen for this input shape (batch stays dynamic), built on first use."""
        key = (int(with_prob), *images.shape[1:], *(mask.shape[2:] if mask is not None else ()))
        fn = self._traced.get(key)
        if fn is None:
            with self._lock:
                fn = self._traced.get(key)
                if fn is None:
                    example = (images[:1], mask[:1]) if mask is not None else (images[:1],)
                    with warnings.catch_warnings(), cpu_autocast(self.dtype):
                        warnings.simplefilter("ignore", torch.jit.TracerWarning)
                        graph = self.graph_prob if with_prob else self.graph
                        traced = torch.jit.trace(graph, example, check_trace=False)
                    fn = torch.jit.freeze(traced.eval(), optimize_numerics=self.fold_numerics)
                    # Two warm-up runs: the profiling executor specialises the graph on the second call.
                    for _ in range(2):
                        fn(*example)
                    self._traced[key] = fn
        return fn

    def _call(self, images: np.ndarray, masks: np.ndarray | None, with_prob: bool) -> Any:
        x = torch.from_numpy(images)
        m = torch.from_numpy(masks) if masks is not None else None
        with torch.inference_mode():
            if self.mode == "eager":
                with cpu_autocast(self.dtype):
                    return (self.graph_prob if with_prob else self.graph)(x, m)
            fn = self._compiled(x, m, with_prob)
            return fn(x, m) if m is not None else fn(x)

    def _run(self, images: np.ndarray, masks: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._call(images, masks, with_prob=False)

    def _run_prob(self, images: np.ndarray, masks: np.ndarray | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._call(images, masks, with_prob=True)

    def close(self) -> None:
        self._traced.clear()
        super().close()


def open_torch_cpu(model_dir: Path, **options: Any) -> TorchCpuDetector:
    """Registry factory: load ``model_dir`` (hash-checked) and wrap it in a :class:`TorchCpuDetector`."""
    grdnet, size, version = load_grdnet(model_dir)
    return TorchCpuDetector(grdnet, size, model_version=version, **options)


def _probe(model_dir: Path | None) -> str | None:
    return None  # torch itself is a hard dependency; the CPU is always there


def _precisions(model_dir: Path) -> list[str]:
    """fp32 always; bf16 where it is native (the trial then shows whether it is faster: only with AMX so far)."""
    return ["fp32", "bf16"] if native_bf16() else ["fp32"]


SPEC = BackendSpec(
    name="torch-cpu",
    factory=open_torch_cpu,
    probe=_probe,
    speed_rank=20,
    description="PyTorch on CPU, bf16 channels_last (AMX) with jit trace+freeze",
    precisions=_precisions,
)
