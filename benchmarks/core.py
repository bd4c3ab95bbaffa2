"""Issue 2's figures: course-API step times and the peak memory of a large fit.

Run by hand (not by CI):

    python benchmarks/core.py            # both parts
    python benchmarks/core.py steps      # run_e_step / run_m_step at H, W, K = 50, 100, 50
    python benchmarks/core.py memory     # peak RSS fitting K = 20,000 images of 100x80

The memory part runs in a child process so that its peak RSS is its own.
"""

import resource
import subprocess
import sys
import time

import numpy as np


def steps():
    from emface import classic

    rng = np.random.default_rng(0)
    H, W, K, h, w = 50, 100, 50, 40, 50
    F = rng.uniform(0, 255, (h, w))
    B = rng.uniform(0, 255, (H, W))
    A = np.full((H - h + 1, W - w + 1), 1.0 / ((H - h + 1) * (W - w + 1)))
    X = rng.normal(0, 30, (H, W, K)) + B[..., None]
    for use_map in (False, True):
        classic.run_e_step(X, F, B, 30.0, A, use_MAP=use_map)  # warm-up (compilation)
        t = time.perf_counter()
        q = classic.run_e_step(X, F, B, 30.0, A, use_MAP=use_map)
        te = time.perf_counter() - t
        classic.run_m_step(X, q, h, w, use_MAP=use_map)
        t = time.perf_counter()
        classic.run_m_step(X, q, h, w, use_MAP=use_map)
        tm = time.perf_counter() - t
        print(f"H, W, K = {H}, {W}, {K}; h, w = {h}, {w}; use_MAP={use_map}: "
              f"run_e_step {te:.3f} s, run_m_step {tm:.3f} s")


def memory_child(K=20000, H=100, W=80, h=40, w=30, iters=5):
    from emface import FaceEM

    rng = np.random.default_rng(0)
    X = np.empty((K, H, W))
    face = rng.uniform(0, 255, (h, w))
    bg = rng.uniform(0, 255, (H, W))
    for a in range(0, K, 1000):
        X[a:a + 1000] = bg + rng.normal(0, 40, (min(1000, K - a), H, W))
    for k in range(K):
        i, j = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
        X[k, i:i + h, j:j + w] += face - bg[i:i + h, j:j + w]
    data_gb = X.nbytes / 1e9
    t = time.perf_counter()
    est = FaceEM((h, w), max_iter=iters, tol=0.0, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    dt = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(f"K={K} images of {H}x{W} float64 ({data_gb:.2f} GB), face {h}x{w}: "
          f"{iters} iterations in {dt:.1f} s; peak RSS {peak_gb:.2f} GB = {peak_gb / data_gb:.2f}x the data")


def memory():
    subprocess.run([sys.executable, __file__, "memory-child"], check=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("all", "steps"):
        steps()
    if what in ("all", "memory"):
        memory()
    if what == "memory-child":
        memory_child()
