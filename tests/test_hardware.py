"""The precision `auto` picks is decided from the CPU's flags: bf16 with AMX, fp32 elsewhere, never emulated bf16.

The three CPU kinds these machines come in are rehearsed by substituting the flags linecam reads, so the rule is
checked on whatever CPU runs the suite.
"""

from __future__ import annotations

import pytest

from linecam import hardware

AMX_XEON = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile"})
BF16_XEON_NO_AMX = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"})
SKYLAKE_XEON = frozenset({"avx2", "fma", "avx512f", "avx512bw"})  # torch says bf16; oneDNN emulates it
AVX2_EPYC = frozenset({"avx2", "fma"})


def _cpu(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], onednn: bool = True) -> None:
    monkeypatch.setattr(hardware, "_proc_cpuinfo", lambda: (flags, "test CPU"))
    monkeypatch.setattr(hardware, "_onednn_bf16", lambda: onednn)
    monkeypatch.delenv(hardware.ISA_ENV, raising=False)


@pytest.mark.parametrize(("flags", "onednn", "native", "auto", "train"), [
    (AMX_XEON, True, True, "bf16", "bf16"),
    (BF16_XEON_NO_AMX, True, True, "fp32", "bf16"),  # batch-1 inference slower in bf16, training faster
    (SKYLAKE_XEON, True, False, "fp32", "fp32"),
    (AVX2_EPYC, False, False, "fp32", "fp32"),
])
def test_auto_precision_per_cpu_kind(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], onednn: bool,
                                     native: bool, auto: str, train: str) -> None:
    _cpu(monkeypatch, flags, onednn)
    assert hardware.native_bf16() is native
    assert hardware.resolve_precision("auto", "cpu") == auto
    assert hardware.resolve_precision("auto", "cpu", workload="train") == train
    assert hardware.resolve_precision("auto", "cuda") == "fp16"
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"
    if native:
        assert hardware.resolve_precision("bf16", "cpu") == "bf16"  # asked for and native: allowed
    else:
        with pytest.raises(ValueError, match="bf16 would be emulated"):
            hardware.resolve_precision("bf16", "cpu")


def test_the_isa_cap_rehearses_an_avx2_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, AMX_XEON)
    monkeypatch.setenv(hardware.ISA_ENV, "avx2")
    assert hardware.cpu_flags() == AVX2_EPYC
    assert hardware.resolve_precision("auto", "cpu") == "fp32"
    assert "LINECAM_CPU_ISA=avx2" in (hardware.why_no_bf16() or "")
    summary = hardware.cpu_summary()
    assert summary["flags"] == ["avx2", "fma"] and summary["native_bf16"] is False
    assert summary[hardware.ISA_ENV] == "avx2" and summary["auto_precision"] == "fp32"


def test_this_machine_is_described() -> None:
    summary = hardware.cpu_summary()
    assert summary["model"] and summary["cores"]
    assert summary["auto_precision"] in ("bf16", "fp32")
