"""The GPU section of the speed benchmark (issue 7). Run by hand on a machine with an NVIDIA GPU:

    python benchmarks/gpu.py                 # all shapes, soft and hard, float32 and float64
    python benchmarks/gpu.py --quick         # fewer repetitions
    python benchmarks/gpu.py --device cpu --small   # a dry run of the script without a GPU

It prints seconds per soft and per hard iteration at K = 20,000 images of
256x256 with a 48x48 face and at the three course shapes of the CPU
benchmark, plus the memory traffic an iteration needs at least (spectra,
images and posteriors read once) over the time, as a share of the card's peak
bandwidth. Write the output to benchmarks/results/gpu-<card>.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _common import time_iterations  # noqa: E402

SHAPES = [
    (256, 256, 48, 48, 20000),
    (100, 200, 100, 73, 1000),
    (100, 80, 40, 30, 500),
    (128, 128, 48, 48, 2000),
]


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_iteration(X, face_shape, hard, dtype, device, n_iter):
    times, _, _ = time_iterations(X, face_shape, hard=hard, dtype=dtype, n_iter=n_iter, backend="torch",
                                  device=device, max_memory="64GB", sync=lambda: _sync(device))
    return statistics.median(times)


def min_bytes(H, W, h, w, K, dtype):
    P, Q = H - h + 1, W - w + 1
    item = np.dtype(dtype).itemsize
    return K * (H * (W // 2 + 1) * 2 * item + H * W * item + 3 * P * Q * 8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--small", action="store_true", help="K / 100 (a dry run)")
    args = ap.parse_args(argv)
    import torch

    from speed import make_data

    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    peak = None
    if args.device.startswith("cuda"):
        from emface.engine.torch_backend import peak_bandwidth_gbs

        peak = peak_bandwidth_gbs(args.device)
    print(f"emface GPU benchmark on {name} (torch {torch.__version__}); peak bandwidth "
          f"{'unknown' if peak is None else f'{peak:.0f} GB/s'}")
    print(f"{'shape H,W,h,w,K':<24} {'mode':<5} {'dtype':<8} {'s/it':>9} {'GB/s':>8} {'of peak':>8}")
    n = 3 if args.quick else 7
    for H, W, h, w, K in SHAPES:
        K = max(50, K // 100) if args.small else K
        X, *_ = make_data(H, W, h, w, K)
        X = X.astype(np.float32)
        for hard in (False, True):
            for dtype in (np.float32, np.float64):
                t = seconds_per_iteration(X, (h, w), hard, dtype, args.device, n)
                gbs = min_bytes(H, W, h, w, K, dtype) / t / 1e9
                share = "" if not peak else f"{gbs / peak:7.1%}"
                print(f"{f'{H},{W},{h},{w},{K}':<24} {'hard' if hard else 'soft':<5} "
                      f"{np.dtype(dtype).name:<8} {t:9.4f} {gbs:8.1f} {share:>8}", flush=True)


if __name__ == "__main__":
    main()
