"""Frame transport throughput: ZeroMQ PUSH/PULL (the line's own sockets and codec) against memcpy.

For 256x256 and 2448x2048 Mono8 frames, sends frames through the line's socket factory
(``linecam.runtime.transport``: HWM 4, LINGER 0) with ``encode_frame``/``decode_frame`` and
``copy=False``, over ipc, tcp with CURVE (what a remote worker must use) and plain tcp (reference only;
the line refuses it). Baseline measured in the same run: ``np.copyto`` of the same frame (one memcpy,
what a shared-memory ring would cost at least). Prints frames/s, GB/s and the ratio to memcpy.

    .venv/bin/python bench/transport.py [--seconds 1.5] [--out bench/results/transport.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from linecam.config import CurveConfig, TransportConfig
from linecam.runtime.keys import generate_keys
from linecam.runtime.messages import FrameHeader, decode_frame, encode_frame
from linecam.runtime.transport import frame_pull_bind, frame_push, stop_authenticators

SIZES = {"256x256": (256, 256), "2448x2048": (2048, 2448)}


def memcpy_rate(image: np.ndarray, seconds: float) -> dict[str, float]:
    dst = np.empty_like(image)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(dst, image)
        n += 1
    dt = time.perf_counter() - t0
    return {"frames_per_s": n / dt, "gb_per_s": n * image.nbytes / dt / 1e9}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zmq_rate(image: np.ndarray, endpoint: str, cfg: TransportConfig | None, seconds: float,
             copy: bool = False) -> dict[str, float]:
    """Frames/s from a sender thread to this thread's PULL; ``cfg=None`` builds plain sockets (no CURVE)."""
    ctx: zmq.Context[Any] = zmq.Context()
    if cfg is not None:
        pull = frame_pull_bind(ctx, endpoint, cfg)
        push = frame_push(ctx, endpoint, cfg)
    else:
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        for sock in (pull, push):
            sock.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVHWM, 4)
        push.setsockopt(zmq.SNDHWM, 4)
        pull.bind(endpoint)
        push.connect(endpoint)
    stop = threading.Event()
    sent = [0]
    pixel_format = "Mono8" if image.ndim == 2 else "RGB8"

    def sender() -> None:
        """Owns ``push`` from here on (a socket is used and closed by one thread only)."""
        seq = 0
        while not stop.is_set():
            header = FrameHeader(camera="bench", seq=seq, slot=seq, t_capture_ns=time.time_ns(),
                                 shape=image.shape, dtype="uint8", pixel_format=pixel_format)
            parts = encode_frame(header, image)
            while not stop.is_set():
                if push.poll(100, zmq.POLLOUT):
                    push.send_multipart(parts, copy=copy, flags=zmq.NOBLOCK)
                    break
            seq += 1
        sent[0] = seq
        push.close(0)

    pull.setsockopt(zmq.RCVTIMEO, 10_000)
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    decode_frame(pull.recv_multipart(copy=False))  # connection and CURVE handshake are not measured
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        header, view = decode_frame(pull.recv_multipart(copy=False))
        assert view.shape == image.shape
        n += 1
    dt = time.perf_counter() - t0
    stop.set()
    thread.join(timeout=5)
    pull.close(0)
    stop_authenticators(ctx)
    ctx.term()
    return {"frames_per_s": n / dt, "gb_per_s": n * image.nbytes / dt / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measurement time per case")
    parser.add_argument("--out", default="bench/results/transport.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                               "zmq": zmq.zmq_version(), "pyzmq": zmq.__version__, "cases": []}
    with tempfile.TemporaryDirectory(prefix="linecam-bench-") as tmp:
        keys = generate_keys(Path(tmp) / "keys")
        curve_cfg = TransportConfig.model_validate({"curve": CurveConfig(**keys)})
        print(f"{'frame':>10} {'transport':>18} {'frames/s':>10} {'GB/s':>7} {'vs memcpy':>10}")
        for label, shape in SIZES.items():
            image = np.ascontiguousarray(rng.integers(0, 256, shape, dtype=np.uint8))
            base = memcpy_rate(image, args.seconds)
            print(f"{label:>10} {'memcpy (baseline)':>18} {base['frames_per_s']:10.0f} {base['gb_per_s']:7.2f} "
                  f"{1.0:10.3f}")
            cases = [
                ("ipc", f"ipc://{tmp}/frames.sock", TransportConfig.model_validate({}), False),
                ("ipc copy=True", f"ipc://{tmp}/frames2.sock", TransportConfig.model_validate({}), True),
                ("tcp+CURVE", f"tcp://127.0.0.1:{_free_port()}", curve_cfg, False),
                ("tcp plain (ref)", f"tcp://127.0.0.1:{_free_port()}", None, False),
            ]
            for name, endpoint, cfg, copy in cases:
                rate = zmq_rate(image, endpoint, cfg, args.seconds, copy=copy)
                ratio = rate["gb_per_s"] / base["gb_per_s"]
                print(f"{label:>10} {name:>18} {rate['frames_per_s']:10.0f} {rate['gb_per_s']:7.2f} {ratio:10.3f}")
                results["cases"].append({"frame": label, "bytes": image.nbytes, "transport": name, **rate,
                                         "memcpy_gb_per_s": base["gb_per_s"], "ratio_vs_memcpy": ratio})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
