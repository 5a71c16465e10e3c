"""FLOPs, parameters and CPU latency of the GRD-Net inference path per profile.

For each profile: FLOPs per image (torch.utils.flop_counter, 1 multiply-add = 2 FLOPs) of the inference path
(generator.reconstruct + U-Net + scoring head) and of the second encoder / discriminator used only in
training; latency at batch 1 in fp32 eager (the baseline) and bf16 channels_last (torch.autocast cpu), with the
ratio measured in the same run; the top layers by time (torch.profiler) of the bf16 run. Optional: training
step throughput (``--train``) and Perlin simulator throughput (``--perlin``).

    .venv/bin/python bench/model_flops.py                       # fast + paper, 256x256
    .venv/bin/python bench/model_flops.py --profiles fast --train --perlin
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from linecam.grdnet.blocks import count_parameters
from linecam.grdnet.losses import LossWeights, discriminative_loss, discriminator_loss, generator_loss
from linecam.grdnet.model import GRDNet, build_discriminator, build_grdnet
from linecam.grdnet.perlin import AnomalySimulator
from linecam.grdnet.profiles import get_profile
from linecam.grdnet.scoring import score_maps


def count_flops(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def time_ms(fn: Callable[[], Any], iters: int, warmup: int) -> float:
    """Median wall time of ``fn`` in ms (median: the machine is shared, means are skewed by other jobs)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def inference(model: GRDNet, x: torch.Tensor) -> torch.Tensor:
    scores, _ = score_maps(model(x))
    return scores


def bench_profile(name: str, size: int, iters: int, warmup: int, top: int) -> dict[str, Any]:
    profile_ = get_profile(name, image_size=size)
    model = build_grdnet(profile_).eval()
    disc = build_discriminator(profile_).eval()
    x = torch.rand(1, 3, size, size)
    res: dict[str, Any] = {"profile": name, "size": size}
    res["params_generator_M"] = count_parameters(model.generator) / 1e6
    res["params_unet_M"] = count_parameters(model.unet) / 1e6
    res["params_discriminator_M"] = count_parameters(disc) / 1e6
    res["gflop_inference"] = count_flops(lambda: inference(model, x)) / 1e9
    res["gflop_reconstruct"] = count_flops(lambda: model.generator.reconstruct(x)) / 1e9
    res["gflop_unet"] = res["gflop_inference"] - res["gflop_reconstruct"]
    res["gflop_encoder2"] = count_flops(lambda: model.generator.encoder2(x)) / 1e9
    res["gflop_discriminator"] = count_flops(lambda: disc(x)) / 1e9

    with torch.no_grad():
        res["fp32_ms"] = time_ms(lambda: inference(model, x), iters, warmup)
        model_cl = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def bf16() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return inference(model_cl, x_cl)

        res["bf16_cl_ms"] = time_ms(bf16, iters, warmup)
        res["speedup_bf16_vs_fp32"] = res["fp32_ms"] / res["bf16_cl_ms"]
        # Variant for the backends: bf16 weights instead of autocast (no per-call weight/BatchNorm casts).
        model_bf16 = build_grdnet(profile_).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        model_bf16.load_state_dict(model.state_dict())
        model_bf16 = model_bf16.to(torch.bfloat16)
        x_bf16 = x_cl.to(torch.bfloat16)
        res["bf16_weights_cl_ms"] = time_ms(lambda: inference(model_bf16, x_bf16), iters, warmup)
        res["speedup_bf16_weights_vs_fp32"] = res["fp32_ms"] / res["bf16_weights_cl_ms"]
        res["bf16_gflops_per_s"] = res["gflop_inference"] / (res["bf16_cl_ms"] / 1e3)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(max(3, iters // 3)):
                bf16()
    print(f"\n== profile {name} @ {size}x{size} ==")
    for key, value in res.items():
        if isinstance(value, float):
            print(f"  {key:26s} {value:10.3f}")
    print(f"  ratio fp32/bf16_channels_last = {res['speedup_bf16_vs_fp32']:.2f}x (autocast)")
    print(f"  ratio fp32/bf16 weights + channels_last = {res['speedup_bf16_weights_vs_fp32']:.2f}x")
    print(f"  top {top} ops by self CPU time (bf16 channels_last):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return res


def bench_train(size: int, batch: int, iters: int) -> dict[str, Any]:
    """Images/s of one full GRD-Net training step of the fast profile (G, D, U-Net fwd+bwd, bf16 autocast)."""
    profile_ = get_profile("fast", image_size=size)
    net = build_grdnet(profile_).train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    disc = build_discriminator(profile_).train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt_g = torch.optim.Adam(list(net.generator.parameters()) + list(net.unet.parameters()), lr=1e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4)
    sim = AnomalySimulator()
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    roi = torch.ones(batch, 1, size, size)
    w = LossWeights()

    def step() -> None:
        aug, mask = sim(clean, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net.generator(aug)
            _, feat_real = disc(clean)
            logits_fake, feat_fake = disc(out.x_hat)
            g_loss, _ = generator_loss(clean, out, feat_real.detach(), feat_fake, w)
            prob = torch.sigmoid(net.unet(aug, out.x_hat.detach()))
            d_map = discriminative_loss(prob, mask, roi, "learned_silence")
        opt_g.zero_grad(set_to_none=True)
        (g_loss + d_map).backward()
        opt_g.step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits_real, _ = disc(clean)
            logits_fake, _ = disc(out.x_hat.detach())
            d_loss = discriminator_loss(logits_real, logits_fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

    ms = time_ms(step, iters, 1)
    res = {"train_batch": batch, "train_step_ms": ms, "train_images_per_s": batch / (ms / 1e3)}
    print(f"\n== training step, fast @ {size}, batch {batch} (bf16 autocast) ==")
    print(f"  {ms:.1f} ms/step  {res['train_images_per_s']:.2f} images/s")
    return res


def bench_perlin(size: int, batch: int, iters: int) -> dict[str, Any]:
    sim = AnomalySimulator()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size)
    ms = time_ms(lambda: sim(x, gen), iters, 1)
    res = {"perlin_batch": batch, "perlin_ms": ms, "perlin_images_per_s": batch / (ms / 1e3)}
    print(f"\n== Perlin simulator @ {size}, batch {batch} ==")
    print(f"  {ms:.1f} ms/batch  {res['perlin_images_per_s']:.1f} images/s")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["fast", "paper"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="also time a training step of the fast profile")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--perlin", action="store_true", help="also time the Perlin anomaly simulator")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    for name in args.profiles:
        iters = args.iters if name != "paper" else max(3, args.iters // 5)
        results.append(bench_profile(name, args.size, iters, min(args.warmup, iters), args.top))
    if args.train:
        results.append(bench_train(args.size, args.train_batch, max(3, args.iters // 4)))
    if args.perlin:
        results.append(bench_perlin(args.size, 16, max(3, args.iters // 2)))
    print("\nsummary:")
    for r in results:
        if "profile" in r:
            print(
                f"  {r['profile']:6s} {r['gflop_inference']:7.2f} GFLOP/img  fp32 {r['fp32_ms']:8.1f} ms  "
                f"bf16+cl {r['bf16_cl_ms']:7.1f} ms  ratio {r['speedup_bf16_vs_fp32']:.2f}x"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
