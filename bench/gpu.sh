#!/usr/bin/env bash
# GPU checks for a lent GPU machine (written for one H200; torch with CUDA, maybe onnxruntime-gpu, maybe TensorRT).
#
#   1. parity: torch-cuda (fp16 and fp32, CUDA graphs, padded buckets, chunking, masks) against the CPU
#      PyTorch fp32 eager reference on random-noise and structured (blob) images;
#   2. timings: torch-cuda fp16 at batch 1..64 (GPU replay) and end to end at batch 1 (host uint8 -> score,
#      i.e. detect() with pinned copies), with/without CUDA graphs; each batch's GPU time as a fraction of the
#      compute floor (FLOPs per image x batch over an fp16 matmul rate measured in the same run);
#   3. onnxruntime CUDA provider and TensorRT (export + engine build + parity + timing) where installed;
#   4. the issue's bar on real data: the shipped demo model on the synthetic test split (600 images,
#      `linecam synth --seed 1`, made here unless DATA=... names one), every GPU backend against the CPU fp32
#      reference: AUROC within 0.005 and scores within the tolerance of their precision
#      (bench/backend_parity.py --gpu --check).
#
# Usage: bash bench/gpu.sh            (PYTHON=... to pick the interpreter; OUT=... for the output folder)
# Runs in well under 8 minutes; each stage has its own time limit and a failure in an optional stage is
# reported in the JSON instead of aborting the run. Writes $OUT/gpu_bench.json and $OUT/gpu_parity.json
# (default bench/results/); the exit status is 1 when a check of stage 1 or 4 failed.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
OUT_DIR="${OUT:-$REPO/bench/results}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export LINECAM_GPU_OUT="$OUT_DIR/gpu_bench.json"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi unavailable"
"$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "numpy", "pydantic", "onnx", "onnxscript", "onnxruntime", "tensorrt", "pycuda"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:12s} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # report, do not fail: optional packages
        print(f"{name:12s} missing ({exc.__class__.__name__})")
import torch
print("cuda available:", torch.cuda.is_available(), torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("torch cannot see a CUDA device: nothing to check")
EOF

echo "== parity and timings"
status=0
timeout 200 "$PY" - <<'EOF' || status=1
import copy, json, os, statistics, sys, tempfile, time, traceback
from pathlib import Path

import numpy as np
import torch

from linecam.backends.export import structured_images
from linecam.backends.torch_cpu import TorchCpuDetector
from linecam.backends.torch_cuda import TorchCudaDetector
from linecam.grdnet.model import build_grdnet
from linecam.grdnet.profiles import get_profile

sys.path.insert(0, "bench")
from infer import activation_bytes, copy_bandwidth, count_flops, matmul_rate  # noqa: E402

out_path = Path(os.environ["LINECAM_GPU_OUT"])
result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "checks": {}, "timings": {}}
failures = []
torch.manual_seed(0)
profile = get_profile("fast")
S = profile.image_size
model = build_grdnet(profile).eval()
with torch.no_grad():  # spread the random head so scores are not all ~0.5
    model.unet.head[0].weight.mul_(25.0)

rng = np.random.default_rng(0)
noise = rng.integers(0, 256, size=(6, S, S, 3), dtype=np.uint8)
blobs = structured_images(6, (S, S), seed=1)
odd = rng.integers(0, 256, size=(3, S + 40, S - 24, 3), dtype=np.uint8)
mask = np.zeros((S, S), np.uint8); mask[: S // 2] = 255
cpu = TorchCpuDetector(copy.deepcopy(model), (S, S), precision="fp32", mode="eager", threads=8)
ref = {k: cpu.detect(v).scores for k, v in {"noise": noise, "blobs": blobs, "odd": odd}.items()}
ref_mask = cpu.detect(blobs, masks=mask).scores


def check(name, got, want, tol):
    diff = float(np.abs(np.asarray(got) - np.asarray(want)).max())
    ok = diff <= tol
    result["checks"][name] = {"max_abs_diff": diff, "tolerance": tol, "ok": ok}
    print(f"{'PASS' if ok else 'FAIL'} {name:44s} max |diff| {diff:.2e} (tol {tol:g})")
    if not ok:
        failures.append(name)


def median_ms(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    times.sort()
    return 1e3 * statistics.median(times), 1e3 * times[int(0.99 * (len(times) - 1))]


for precision, tol in (("fp32", 2e-3), ("fp16", 2e-2), ("bf16", 4e-2)):
    det = TorchCudaDetector(copy.deepcopy(model), (S, S), precision=precision, max_batch=4)
    for key, images in (("noise", noise), ("blobs", blobs), ("odd", odd)):
        check(f"torch-cuda {precision} {key} (chunks of 4, padded)", det.detect(images).scores, ref[key], tol)
    check(f"torch-cuda {precision} blobs + mask", det.detect(blobs, masks=mask).scores, ref_mask, tol)
    zero = det.detect(blobs, masks=np.zeros((8, 8), np.uint8)).scores
    check(f"torch-cuda {precision} zero mask -> 0", zero, np.zeros_like(zero), 0.0)
    maps = det.detect(blobs[:2], return_maps=True)
    check(f"torch-cuda {precision} max(map) == score", maps.maps.reshape(2, -1).max(1), maps.scores, 1e-6)
    det.close()

# timings: fp16 CUDA graphs, GPU replay per batch and end-to-end detect() at batch 1, against the floor
flops = count_flops(model, S)
act_bytes = activation_bytes(model, S, 2)
rate = matmul_rate(torch.float16, n=8192, seconds=2.0, device="cuda")
bandwidth = copy_bandwidth(mib=2048, seconds=2.0, device="cuda")
result["floor"] = {"flops_per_image": flops, "activation_bytes_per_image_fp16": act_bytes,
                   "fp16_matmul_flops_per_s": rate, "copy_bytes_per_s": bandwidth}
print(f"{flops / 1e9:.2f} GFLOP/image; fp16 matmul {rate / 1e12:.0f} TFLOP/s; copy {bandwidth / 1e12:.2f} TB/s")
det = TorchCudaDetector(copy.deepcopy(model), (S, S), precision="fp16", max_batch=64)
for b in (1, 2, 4, 8, 16, 32, 64):
    images = structured_images(b, (S, S), seed=b)
    det.detect(images)
    cap = det._captured[(b, images.shape[1:], None)]
    def replay():
        cap.graph.replay(); torch.cuda.synchronize()
    gpu_ms, _ = median_ms(replay)
    e2e_ms, e2e_p99 = median_ms(lambda: det.detect(images))
    compute_floor_ms = 1e3 * b * flops / rate
    memory_floor_ms = 1e3 * b * act_bytes / bandwidth
    result["timings"][f"torch-cuda fp16 b{b}"] = {
        "gpu_ms": gpu_ms, "e2e_ms": e2e_ms, "e2e_p99_ms": e2e_p99, "images_per_s": b / (e2e_ms / 1e3),
        "compute_floor_ms": compute_floor_ms, "memory_floor_ms": memory_floor_ms,
        "fraction_of_compute_floor": compute_floor_ms / gpu_ms}
    print(f"torch-cuda fp16 batch {b:3d}: GPU {gpu_ms:7.3f} ms  end-to-end {e2e_ms:7.3f} ms (p99 {e2e_p99:.3f})"
          f"  {b / (e2e_ms / 1e3):9.0f} img/s  {100 * compute_floor_ms / gpu_ms:5.1f}% of the compute floor"
          f" (memory floor {memory_floor_ms:.3f} ms)")
det.close()
nog = TorchCudaDetector(copy.deepcopy(model), (S, S), precision="fp16", max_batch=1, cuda_graphs=False)
one = structured_images(1, (S, S))
ms, p99 = median_ms(lambda: nog.detect(one))
result["timings"]["torch-cuda fp16 b1 no cuda graphs"] = {"e2e_ms": ms, "e2e_p99_ms": p99}
print(f"torch-cuda fp16 batch   1 without CUDA graphs: end-to-end {ms:.3f} ms")
nog.close()
cpu_ms, _ = median_ms(lambda: cpu.detect(one), reps=10)
result["timings"]["cpu fp32 eager b1 (8 threads)"] = {"e2e_ms": cpu_ms}

# optional: onnxruntime CUDA and TensorRT through a real model directory
try:
    import onnxruntime as ort
    have_ort = True
except ImportError:
    have_ort = False
try:
    import tensorrt  # noqa: F401
    have_trt = True
except ImportError:
    have_trt = False
result["optional"] = {}
if have_ort or have_trt:
    tmp = Path(tempfile.mkdtemp())
    try:
        from linecam.backends.export import export_model_dir
        from linecam.grdnet.modeldir import ModelCard, save_model_dir
        mdir = tmp / "gpucheck" / "v1"
        save_model_dir(mdir, model, ModelCard(name="gpucheck", version="v1", profile=profile, input_size=(S, S),
                                              roi_variant="n/a"))
        t = time.perf_counter(); rep = export_model_dir(mdir, max_batch=64)
        print(f"export: {time.perf_counter() - t:.1f} s, onnxruntime CPU vs torch max |diff| {rep.max_abs_diff:.2e}")
        from linecam.backends import create_detector
        if have_ort and "CUDAExecutionProvider" in ort.get_available_providers():
            d = create_detector(mdir, "onnxruntime")
            check("onnxruntime CUDA fp32 blobs", d.detect(blobs).scores, ref["blobs"], 2e-3)
            ms, p99 = median_ms(lambda: d.detect(one))
            result["timings"]["onnxruntime cuda b1"] = {"e2e_ms": ms, "e2e_p99_ms": p99}
            print(f"onnxruntime CUDA batch 1: {ms:.3f} ms")
            d.close()
        else:
            result["optional"]["onnxruntime-cuda"] = "CUDAExecutionProvider not available"
        if have_trt:
            t = time.perf_counter()
            d = create_detector(mdir, "tensorrt", max_batch=64)
            print(f"tensorrt engine build+load: {time.perf_counter() - t:.1f} s")
            for key, images in (("noise", noise), ("blobs", blobs), ("odd", odd)):
                check(f"tensorrt fp16 {key}", d.detect(images).scores, ref[key], 2e-2)
            check("tensorrt fp16 blobs + mask", d.detect(blobs, masks=mask).scores, ref_mask, 2e-2)
            for b in (1, 8, 64):
                images = structured_images(b, (S, S), seed=b)
                ms, p99 = median_ms(lambda: d.detect(images))
                result["timings"][f"tensorrt fp16 b{b}"] = {"e2e_ms": ms, "e2e_p99_ms": p99}
                print(f"tensorrt fp16 batch {b:3d}: end-to-end {ms:.3f} ms (p99 {p99:.3f})")
            d.close()
        else:
            result["optional"]["tensorrt"] = "not installed"
    except Exception:
        traceback.print_exc()
        result["optional"]["error"] = traceback.format_exc()
        failures.append("optional stage raised")

result["failures"] = failures
out_path.write_text(json.dumps(result, indent=2) + "\n")
print(f"wrote {out_path}")
sys.exit(1 if failures else 0)
EOF

echo "== the demo model on the synthetic test split: GPU backends against the CPU fp32 reference"
DATA="${DATA:-}"
WORK="$(mktemp -d)"
if [[ -z "$DATA" ]]; then
    DATA="$WORK/bfs"
    timeout 60 "$PY" -m linecam synth --out "$DATA" --seed 1 --workers "$(nproc)" | tail -n 2 \
        || { echo "synth failed: no test split to check the GPU backends on"; exit 1; }
fi
cp -r "$REPO/model/demo" "$WORK/demo"  # exported in a copy: the committed model directory stays as it is
timeout 60 "$PY" -m linecam export --model "$WORK/demo" | tail -n 3 \
    || echo "export failed: onnxruntime CUDA and TensorRT will be reported unavailable"
timeout 150 "$PY" bench/backend_parity.py --model "$WORK/demo" --data "$DATA" --gpu --cpu-variants reference \
    --threads 8 --check --out "$OUT_DIR/gpu_parity.json" || status=1
echo "== done (exit $status)"
exit $status
