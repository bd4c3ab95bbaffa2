"""Brightness that changes from frame to frame: what "auto" buys, and what it costs where nothing changes.

Photo-based stacks (the bundled face on the bundled background), noise equal to the face's contrast:

- frames whose gain is drawn from [1 - g, 1 + g] and offset from [-o, o]·noise: positions exact and
  the face's correlation with the truth, for ``brightness="fixed"`` (the note's model) and the default
  ``"auto"``;
- the same frames with no change (g = o = 0): the default against ``"fixed"``: the same positions?
  F's RMS error against the truth, and the time ratio of the whole default fit.

Usage: python benchmarks/brightness.py [--quick] [--K 1000] [--size 128] [--face 48] [--seed 0]
"""

import argparse
import os
import time
import warnings

import numpy as np

from emface import FaceEM
from emface.datasets import make_faces


def stack(K, size, face, gain, offset, seed):
    X, truth = make_faces(K, (size, size), (face, face), noise=0.0, random_state=seed)
    s = float(np.mean(truth.faces.std()))
    rng = np.random.default_rng(seed + 1)
    a = rng.uniform(1 - gain, 1 + gain, K)
    b = rng.uniform(-offset, offset, K) * s
    return a[:, None, None] * X + b[:, None, None] + rng.normal(0.0, s, X.shape), truth


def fit(X, face, mode, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est = FaceEM((face, face), brightness=mode, random_state=seed).fit(X)
        return est, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="300 frames of 64x64, a 24x24 face")
    ap.add_argument("--K", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--face", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="timings: the best of this many fits")
    args = ap.parse_args()
    K, size, face = (300, 64, 24) if args.quick else (args.K, args.size, args.face)
    print(f"{K} frames of {size}x{size}, a {face}x{face} face, noise = contrast; load {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    X, truth = stack(K, size, face, 0.3, 1.0, args.seed)
    print("\n| gain 0.7-1.3, offset ±1 noise | positions exact | corr(F, truth) | fitted | time (s) |")
    print("|---|---|---|---|---|")
    for mode in ("fixed", "auto"):
        est, t = fit(X, face, mode, args.seed)
        exact = np.mean(np.all(est.positions_ == truth.positions, axis=1))
        corr = np.corrcoef(est.face_.ravel(), truth.faces[0].ravel())[0, 1]
        print(f"| {mode} | {100 * exact:.1f}% | {corr:.4f} | {est.brightness_} | {t:.1f} |", flush=True)
    X, truth = stack(K, size, face, 0.0, 0.0, args.seed)
    runs = {}
    for mode in ("fixed", "auto") * args.repeats:
        est, t = fit(X, face, mode, args.seed)
        best = runs.get(mode)
        runs[mode] = (est, min(t, best[1]) if best else t)
    (ef, tf), (ea, ta) = runs["fixed"], runs["auto"]
    same = np.array_equal(ef.positions_, ea.positions_)
    print("\n| conforming frames | positions exact | same positions as fixed | F RMS error | time (s) |")
    print("|---|---|---|---|---|")
    for mode, est, t in (("fixed", ef, tf), ("auto", ea, ta)):
        exact = np.mean(np.all(est.positions_ == truth.positions, axis=1))
        err = np.sqrt(np.mean((est.face_ - truth.faces[0]) ** 2))
        print(f"| {mode} | {100 * exact:.1f}% | {same} | {err:.5g} | {t:.2f} |")
    print(f"\nauto/fixed time: {ta / tf:.3f}x (best of {args.repeats}); auto's test: p = "
          f"{ea.brightness_test_['p_value']:.3g} (statistic {ea.brightness_test_['statistic']:.1f}, "
          f"{ea.brightness_test_['dof']} dof)")


if __name__ == "__main__":
    main()
