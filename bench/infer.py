"""Inference throughput of every CPU backend x precision against an in-run baseline and the physical floor.

For each variant (torch fp32 eager = baseline; torch-cpu fp32/bf16 eager/jit; optional torch.compile;
onnxruntime fp32 and int8; OpenVINO fp32, bf16 and int8) and batch sizes 1, 4, 16: median latency per batch
(full ``detect`` call: uint8 frames in, scores out, preprocessing and scoring head included), ms per image,
images/s, speed-up over the baseline, and the ratio to the physical floor of this machine measured in the same
run:

    floor = max(FLOPs per image / matmul rate (int8, bf16 or fp32),  bytes moved per image / copy bandwidth)

bf16 variants run only where bf16 is native (``linecam.hardware``); int8 variants only with ``--model`` whose
INT8 graph passed its quality gate on that backend (``linecam quantize``). The result records the CPU (model,
flags, kind) and goes to ``bench/results/infer_<kind>.json`` (amx, avx512-bf16, avx512, avx2), so results of
different CPU kinds sit side by side.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``; bytes moved are the activations each
leaf module writes and the next reads (2x their size) plus the weights once per batch and the input frame.
Also prints where the time goes: per-stage timings (generator / U-Net / scoring) and the top aten ops.

    .venv/bin/python bench/infer.py --profile fast            # random weights, no model dir needed
    .venv/bin/python bench/infer.py --model model/demo        # a real model directory (its model(.int8).onnx)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from linecam.backends.export import export_graph, structured_images
from linecam.backends.graph import InferenceGraph
from linecam.backends.onnxrt import OnnxRuntimeDetector
from linecam.backends.torch_cpu import TorchCpuDetector, cpu_autocast, cpu_supports_bf16
from linecam.grdnet.scoring import score_maps
from linecam.hardware import cpu_kind, cpu_summary

RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------------------------- machine


def best_time(fn: Callable[[], Any], seconds: float) -> float:
    """Fastest single call of ``fn`` within ``seconds``: on a shared machine the best run is the machine's
    capability, the median is the neighbours' load."""
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` followed by a wait for the device (GPU kernels run asynchronously to the host clock)."""
    if device.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def matmul_rate(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0, device: str = "cpu") -> float:
    """Peak FLOP/s of an n x n matmul in ``dtype`` on ``device`` (the best a conv can hope for)."""
    dev = torch.device(device)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    return 2 * n**3 / best_time(_synced(lambda: a @ b, dev), seconds)


def int8_matmul_rate(n: int = 1024, seconds: float = 1.0) -> float | None:
    """Peak int8 OP/s of an n x n integer matmul on the CPU (VNNI where present), None where torch has none."""
    a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    try:
        return 2 * n**3 / best_time(lambda: torch._int_mm(a, b), seconds)
    except (RuntimeError, AttributeError):
        return None


def copy_bandwidth(mib: int = 128, seconds: float = 1.0, device: str = "cpu") -> float:
    """Peak bytes/s moved by a large tensor copy on ``device`` (read + write counted)."""
    dev = torch.device(device)
    src = torch.ones(mib << 18, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_time(_synced(lambda: dst.copy_(src), dev), seconds)


# ----------------------------------------------------------------------------------------------- model cost


def count_flops(grdnet: nn.Module, size: int) -> int:
    """FLOPs of one image through the inference path (GRDNet forward + scoring head)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        score_maps(grdnet(x))
    return int(counter.get_total_flops())


def activation_bytes(grdnet: nn.Module, size: int, element_size: int) -> int:
    """Bytes of leaf-module outputs for one image, x2 (written once, read once by the next layer)."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * element_size

    handles = [m.register_forward_hook(hook) for m in grdnet.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            grdnet(torch.rand(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return 2 * total


# ----------------------------------------------------------------------------------------------- variants


class CompiledDetector:
    """torch.compile (inductor, CPU) of the InferenceGraph, bf16 as torch-cpu runs it (autocast over fp32
    weights): measured, not shipped unless it wins."""

    backend = "torch-compile"

    def __init__(self, grdnet: nn.Module, size: int, dtype: torch.dtype) -> None:
        net = grdnet.eval().float().to(memory_format=torch.channels_last)
        self.dtype = dtype
        self.graph = torch.compile(InferenceGraph(net, (size, size)).eval(), dynamic=False)

    def detect(self, images: np.ndarray) -> Any:
        with torch.inference_mode(), cpu_autocast(self.dtype):
            return self.graph(torch.from_numpy(images))

    def close(self) -> None:
        pass


def make_variants(
    grdnet: nn.Module, size: int, onnx_path: Path | None, threads: int, with_compile: bool,
    model_dir: Path | None = None,
) -> list[tuple[str, Callable[[], Any]]]:
    """(name, factory) for every variant this machine can run; the first one is the baseline."""

    def torch_cpu(precision: str, mode: str, **extra: Any) -> Callable[[], Any]:
        return lambda: TorchCpuDetector(
            copy.deepcopy(grdnet), (size, size), precision=precision, mode=mode, threads=threads, **extra
        )

    variants: list[tuple[str, Callable[[], Any]]] = [
        ("torch fp32 eager (baseline)", torch_cpu("fp32", "eager")),
        ("torch-cpu fp32 jit", torch_cpu("fp32", "jit")),
    ]
    if cpu_supports_bf16():
        variants += [
            ("torch-cpu bf16 eager", torch_cpu("bf16", "eager")),
            ("torch-cpu bf16 jit", torch_cpu("bf16", "jit")),
            ("torch-cpu bf16 jit, BN unfolded", torch_cpu("bf16", "jit", fold_bf16=False)),
        ]
        if with_compile:
            variants.append(
                ("torch.compile bf16", lambda: CompiledDetector(copy.deepcopy(grdnet), size, torch.bfloat16))
            )
    if onnx_path is not None:
        variants.append(
            # spin=False: onnxruntime's spinning threads would slow the variant timed after it (round-robin)
            ("onnxruntime fp32", lambda: OnnxRuntimeDetector(onnx_path, (size, size), threads=threads, spin=False))
        )
        if importlib.util.find_spec("openvino") is not None:
            from linecam.backends.openvino_backend import OpenVinoDetector

            for precision in ["fp32", *(["bf16"] if cpu_supports_bf16() else [])]:
                variants.append((f"openvino {precision}", lambda p=precision: OpenVinoDetector(
                    onnx_path, (size, size), precision=p, threads=threads)))
    if model_dir is not None:
        from linecam.backends import backend_specs, create_detector
        from linecam.backends.modelfiles import int8_refusal, read_card

        card, _ = read_card(model_dir)
        for backend, extra in (("onnxruntime", {"spin": False}), ("openvino", {})):
            if backend in backend_specs() and backend_specs()[backend].probe(model_dir) is None \
                    and int8_refusal(card, backend) is None:
                variants.append((f"{backend} int8", lambda b=backend, e=extra: create_detector(
                    model_dir, b, precision="int8", threads=threads, **e)))
    return variants


def time_interleaved(
    dets: dict[str, Any], images: np.ndarray, budget_s: float, min_reps: int = 3
) -> dict[str, list[float]]:
    """Seconds per ``detect(images)`` call for every detector, run round-robin after two warm-up calls each.

    Round-robin so that load from other processes on a shared machine hits every variant alike: the
    ratios stay meaningful even when the absolute times are not.
    """
    for det in dets.values():
        for _ in range(2):
            det.detect(images)
    times: dict[str, list[float]] = {name: [] for name in dets}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or (time.perf_counter() - start < budget_s and rounds < 50):
        for name, det in dets.items():
            t = time.perf_counter()
            det.detect(images)
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return times


# ----------------------------------------------------------------------------------------------- breakdown


def stage_breakdown(grdnet: nn.Module, size: int, dtype: torch.dtype, reps: int = 20) -> dict[str, float]:
    """Median ms per stage at batch 1 (eager, channels_last, ``dtype`` as torch-cpu runs it): where the time goes,
    per network."""
    net = copy.deepcopy(grdnet).eval().float().to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), cpu_autocast(dtype):
        x_hat = net.generator.reconstruct(x)
        logits = net.unet(x, x_hat)
        z = net.generator.encoder(x)
        stages: dict[str, Callable[[], Any]] = {
            "generator encoder": lambda: net.generator.encoder(x),
            "generator decoder": lambda: net.generator.decoder(z),
            "u-net": lambda: net.unet(x, x_hat),
            "scoring head": lambda: score_maps(torch.sigmoid(logits.float())),
        }
        out = {}
        for name, fn in stages.items():
            for _ in range(3):
                fn()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            out[name] = 1e3 * statistics.median(ts)
    return out


def top_ops(det: Any, images: np.ndarray, rows: int = 12) -> list[dict[str, Any]]:
    """The aten ops with the most self CPU time over 10 calls of the default detector."""
    from torch.profiler import ProfilerActivity, profile

    det.detect(images)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            det.detect(images)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) or 1
    return [
        {
            "op": e.key,
            "calls_per_image": e.count / 10,
            "self_ms_per_detect": e.self_cpu_time_total / 1e3 / 10,
            "share": e.self_cpu_time_total / total,
        }
        for e in events
    ]


# ----------------------------------------------------------------------------------------------- main


def load_model(args: argparse.Namespace, workdir: Path) -> tuple[nn.Module, int, Path | None, str]:
    """-> (GRDNet, input size, model.onnx or None, description)."""
    if args.model is not None:
        from linecam.grdnet.modeldir import load_model_dir

        grdnet, card = load_model_dir(args.model)
        size = int(card.input_size[0])
        onnx_path = args.model / "model.onnx"
        return grdnet, size, (onnx_path if onnx_path.is_file() else None), f"{args.model}"
    from linecam.grdnet.model import build_grdnet
    from linecam.grdnet.profiles import get_profile

    overrides = {"image_size": args.size} if args.size else {}
    profile = get_profile(args.profile, **overrides)
    torch.manual_seed(0)
    grdnet = build_grdnet(profile).eval()
    onnx_path = None
    if not args.no_onnx:
        onnx_path = export_graph(copy.deepcopy(grdnet), (profile.image_size,) * 2, workdir / "model.onnx")
    return grdnet, profile.image_size, onnx_path, f"profile {profile.name} (random weights)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: random --profile)")
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--size", type=int, default=None, help="override the profile's image size")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per variant and batch")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/infer_<CPU kind>.json")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / f"infer_{cpu_kind()}.json"
    torch.set_num_threads(args.threads)
    cpu = cpu_summary()
    print(f"CPU: {cpu['model']} ({cpu['kind']}), {cpu['cores']} cores, flags {' '.join(cpu['flags'])}")
    batches = [int(b) for b in args.batches.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        grdnet, size, onnx_path, desc = load_model(args, Path(tmp))
        print(f"model: {desc}, {size}x{size}, {sum(p.numel() for p in grdnet.parameters()) / 1e6:.2f} M params")
        flops = count_flops(grdnet, size)
        params = sum(p.numel() for p in grdnet.parameters())
        rates = {"fp32": matmul_rate(torch.float32)}
        if cpu_supports_bf16():
            rates["bf16"] = matmul_rate(torch.bfloat16)
        int8_rate = int8_matmul_rate()
        if int8_rate is not None:
            rates["int8"] = int8_rate
        bandwidth = copy_bandwidth()
        print(f"{flops / 1e9:.3f} GFLOP/image; matmul " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in
              rates.items()) + f"; copy {bandwidth / 1e9:.1f} GB/s; {args.threads} threads")

        rows: list[dict[str, Any]] = []
        dets: dict[str, Any] = {}
        for name, factory in make_variants(grdnet, size, onnx_path, args.threads, args.compile, args.model):
            t0 = time.perf_counter()
            try:
                dets[name] = factory()
                dets[name].detect(structured_images(1, (size, size)))
            except Exception as exc:  # a variant that cannot run here is reported, not fatal
                print(f"{name:38s} unavailable: {exc}")
                rows.append({"variant": name, "error": str(exc)})
            else:
                print(f"{name:38s} ready in {time.perf_counter() - t0:.1f} s")
        header = (f"{'variant':38s} {'batch':>5s} {'median ms':>10s} {'ms/img':>8s} {'best ms':>9s} {'img/s':>8s} "
                  f"{'vs base':>8s} {'x floor':>8s}")
        print(header)
        print("-" * len(header))
        base_name = next(iter(dets))
        for b in batches:
            images = structured_images(b, (size, size), seed=b)
            times = time_interleaved(dets, images, args.budget * len(dets))
            for name, ts in times.items():
                sec, best = statistics.median(ts), min(ts)
                precision = next((p for p in ("int8", "bf16") if p in name), "fp32")
                elt = {"int8": 1, "bf16": 2}.get(precision, 4)
                bytes_moved = b * (activation_bytes(grdnet, size, elt) + size * size * 3) + params * elt
                floor = max(b * flops / rates.get(precision, rates["fp32"]), bytes_moved / bandwidth)
                speedup = statistics.median(times[base_name]) / sec
                rows.append({
                    "variant": name,
                    "precision": precision,
                    "batch": b,
                    "median_ms": 1e3 * sec,
                    "ms_per_image": 1e3 * sec / b,
                    "best_ms": 1e3 * best,
                    "reps": len(ts),
                    "images_per_s": b / sec,
                    "speedup_vs_baseline": speedup,
                    "floor_ms": 1e3 * floor,
                    "ratio_to_floor": sec / floor,
                    "best_ratio_to_floor": best / floor,
                })
                print(f"{name:38s} {b:5d} {1e3 * sec:10.2f} {1e3 * sec / b:8.2f} {1e3 * best:9.2f} {b / sec:8.1f} "
                      f"{speedup:7.2f}x {sec / floor:7.1f}x")
        # the torch-cpu variant the hardware rule runs here: where its time goes
        from linecam.hardware import resolve_precision

        default_det = dets.get(f"torch-cpu {resolve_precision('auto', 'cpu')} jit")

        breakdown = stage_breakdown(grdnet, size, torch.bfloat16 if cpu_supports_bf16() else torch.float32)
        print("\nbatch-1 stage times (eager, channels_last): " +
              ", ".join(f"{k} {v:.2f} ms" for k, v in breakdown.items()))
        ops = top_ops(default_det, structured_images(1, (size, size))) if default_det is not None else []
        if ops:
            print("top ops of the torch-cpu variant auto runs here, at batch 1 (self CPU ms per image, share):")
            for op in ops:
                print(f"  {op['op']:42s} {op['self_ms_per_detect']:7.3f} ms  {100 * op['share']:5.1f}%")
        for det in dets.values():
            det.close()

    result = {
        "cpu": cpu,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            "matmul_flops_per_s": rates,
            "copy_bytes_per_s": bandwidth,
        },
        "model": {"description": desc, "size": size, "params": params, "flops_per_image": flops},
        "results": rows,
        "stage_ms_batch1": breakdown,
        "top_ops_default_batch1": ops,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
