"""What this CPU can do, decided from the hardware: the one place that says whether bf16 is native here.

Why: linecam runs on Xeons with AMX (bf16 convolutions about 5x faster than fp32), on Xeons with AVX512-BF16 but
no AMX (bf16 native but slower than fp32 there), and on AVX2-only CPUs (AMD EPYC/Ryzen, most line PCs), where bf16
is emulated and about 10x slower than fp32. Every ``auto`` precision and
every test that depends on bf16 asks here instead of assuming the machine it was written on.

bf16 counts as native when the CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``)
and oneDNN agrees. torch's own check alone is not enough: it only asks for AVX-512 BW/VL/DQ, so on a Skylake or
Cascade Lake Xeon it says yes while oneDNN emulates bf16 there.

``LINECAM_CPU_ISA=avx2`` makes linecam decide as on an AVX2-only CPU (no AVX-512, no AMX flags). With
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's own cap) the kernels are capped too: together they rehearse an AVX2 line
PC on a bigger CPU, which is how the suite is checked for AVX2 machines.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

ISA_ENV = "LINECAM_CPU_ISA"
#: flags that make bf16 native (oneDNN then uses the bf16 dot-product or tile instructions).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: the flags this module reports on, in benchmark results and start-up lines.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")

__all__ = ["BF16_FLAGS", "ISA_ENV", "cpu_flags", "cpu_kind", "cpu_model", "cpu_summary", "native_bf16",
           "resolve_precision", "why_fp32_is_faster", "why_no_bf16"]


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> tuple[frozenset[str], str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset(), platform.processor() or platform.machine()
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "model name" and not model:
            model = value.strip()
        if flags and model:
            break
    return flags, model or platform.machine()


def _cap(flags: frozenset[str]) -> frozenset[str]:
    isa = os.environ.get(ISA_ENV, "").strip().lower()
    if isa in ("avx2", "avx2_vnni"):
        return frozenset(f for f in flags if not f.startswith(("avx512", "amx")))
    if isa == "avx512":
        return frozenset(f for f in flags if not f.startswith("amx") and f != "avx512_bf16")
    return flags


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), capped by ``$LINECAM_CPU_ISA``; empty when unknown."""
    return _cap(_proc_cpuinfo()[0])


def cpu_model() -> str:
    """The CPU's model name, e.g. ``AMD EPYC 9R14`` or ``Intel(R) Xeon(R) Processor``."""
    return _proc_cpuinfo()[1]


def _onednn_bf16() -> bool:
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (ImportError, AttributeError, RuntimeError):
        return False


def why_no_bf16() -> str | None:
    """None when bf16 is native on this CPU, else why not (for error messages and start-up lines)."""
    flags = cpu_flags()
    if flags and not flags & BF16_FLAGS:
        capped = f", as capped by {ISA_ENV}={os.environ[ISA_ENV]}" if os.environ.get(ISA_ENV) else ""
        return f"this CPU has no bf16 instructions (no avx512_bf16 or amx_bf16{capped}): bf16 would be emulated"
    if not _onednn_bf16():
        return "oneDNN has no bf16 kernels for this CPU: bf16 would be emulated"
    return None


def native_bf16() -> bool:
    """True when bf16 convolutions run on native instructions here (see the module docstring)."""
    return why_no_bf16() is None


def why_fp32_is_faster() -> str | None:
    """None when ``auto`` should run bf16 here (AMX tiles), else why fp32 is the faster choice.

    bf16 pays off with AMX (about 5x fp32 on the convolutions). With AVX512-BF16 alone (dot-product instructions,
    no tiles; also what a VM that hides AMX shows) it did not: the demo model at batch 1 on two cores of such a
    Xeon took 60 ms in bf16 jit against 34 ms in fp32 jit (2026-12-02).
    """
    reason = why_no_bf16()
    if reason is not None:
        return reason
    flags = cpu_flags()
    if flags and "amx_bf16" not in flags:
        return "this CPU has bf16 instructions but no AMX tiles, where fp32 runs faster"
    return None


def cpu_kind() -> str:
    """A short name of what decides speed here, for result file names: amx, avx512-bf16, avx512, avx2 or x86."""
    flags = cpu_flags()
    for kind, flag in (("amx", "amx_bf16"), ("avx512-bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "x86"


def cpu_summary() -> dict[str, object]:
    """The CPU as benchmark results record it: model, cores, the flags that decide precision, bf16 or not."""
    flags = cpu_flags()
    return {"model": cpu_model(), "kind": cpu_kind(), "cores": os.cpu_count(),
            "flags": [f for f in REPORTED_FLAGS if f in flags], "native_bf16": native_bf16(),
            "auto_precision": resolve_precision("auto", "cpu"),
            "auto_train_precision": resolve_precision("auto", "cpu", "train"),
            **({ISA_ENV: os.environ[ISA_ENV]} if os.environ.get(ISA_ENV) else {})}


def resolve_precision(requested: str, device: str, workload: str = "infer") -> str:
    """The compute precision a command runs: ``auto`` is fp16 on CUDA; on a CPU never an emulated precision.

    Inference (``workload="infer"``): bf16 only with AMX, else fp32, since at batch 1 bf16 without AMX tiles was
    slower (see :func:`why_fp32_is_faster`); the line's ``backend: auto`` times the variants instead
    (:mod:`linecam.backends.autoselect`). Training (``workload="train"``, batches of 8 and a backward pass):
    bf16 wherever it is native. On two cores of a Xeon with AVX512-BF16 and no AMX, the fast profile trained at
    3.75 img/s in bf16 against 2.18 in fp32, and 4.41 against 3.16 in a second run (``bench/train_speed.py``,
    2026-12-02); on AMX 10.3 against 3.7. An explicit bf16 on a CPU without bf16 instructions raises ValueError
    naming why, rather than running several times slower."""
    if device == "cpu" and requested == "bf16" and not native_bf16():
        raise ValueError(f"precision bf16: {why_no_bf16()}; use fp32 or auto")
    if requested != "auto":
        return requested
    if device == "cuda":
        return "fp16"
    if workload == "train":
        return "bf16" if native_bf16() else "fp32"
    return "bf16" if why_fp32_is_faster() is None else "fp32"
