"""Seconds per EM iteration: emface against the course-style baseline (issue 3).

Run by hand (not by CI), on an otherwise idle machine:

    python benchmarks/speed.py                 # all three shapes, soft and hard, float64 and float32
    python benchmarks/speed.py --quick         # fewer repetitions
    python benchmarks/speed.py --no-baseline   # emface only

For each shape it prints, for emface and for the baseline (`benchmarks/baseline.py`,
vectorised with fftconvolve over the whole stack, all of q in memory, the
log-probabilities recomputed for the bound): seconds per iteration, the
ratio, and emface's share of time in FFTs. The baseline's time does not depend
on the data or on float32, so it runs once per shape and mode in float64.

Then, per shape, the wall time of a default fit (``FaceEM(face_shape).fit(X)``:
data-driven start, restarts when needed, shift escape) in units of the soft
float64 iteration measured above, in the same run.

Timing protocol: the data follow the model with the noise equal to the face's
contrast (its standard deviation); EM starts from the note's random start; an
iteration is one E-step pass plus one M-step, timed over the first iterations
after the first (which fills the spectrum cache) and reported as the median.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _common import time_iterations  # noqa: E402

SHAPES = [
    # H, W, h, w, K
    (100, 200, 100, 73, 1000),
    (100, 80, 40, 30, 500),
    (128, 128, 48, 48, 2000),
]


def make_data(H, W, h, w, K, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    face = 128 + 90 * np.sin(yy / 4.0) * np.cos(xx / 5.0)
    bg = rng.uniform(40, 220, (H, W))
    s = float(face.std())
    pos = np.stack([rng.integers(0, H - h + 1, K), rng.integers(0, W - w + 1, K)], axis=1)
    X = np.repeat(bg[None], K, axis=0)
    for k, (i, j) in enumerate(pos):
        X[k, i:i + h, j:j + w] = face
    X += rng.normal(0, s, X.shape)
    return X, face, bg, s


class _FFTTimer:
    """Accumulates time spent inside scipy.fft calls made by emface's kernels."""

    def __init__(self):
        self.t = 0.0

    def __enter__(self):
        import scipy.fft as sfft

        from emface.engine import kernels, mstep

        self._mods = [(kernels, "sfft"), (mstep, "sfft")]
        self._orig = {m: getattr(m, a) for m, a in self._mods}
        timer = self

        class Wrapped:
            def __getattr__(self, name):
                fn = getattr(sfft, name)

                def call(*a, **k):
                    t = time.perf_counter()
                    try:
                        return fn(*a, **k)
                    finally:
                        timer.t += time.perf_counter() - t

                return call

        for m, a in self._mods:
            setattr(m, a, Wrapped())
        return self

    def __exit__(self, *exc):
        for m, a in self._mods:
            setattr(m, a, self._orig[m])


def time_emface(X, face_shape, hard, dtype, n_iter, workers):
    from emface.engine import costs

    times, timers, ex = time_iterations(X, face_shape, hard=hard, dtype=dtype, n_iter=n_iter, workers=workers,
                                        probe=_FFTTimer)
    fft_share = [ft.t / dt for ft, dt in zip(timers, times, strict=True)]
    route = costs.choose_correlation_route(X.shape[1:3], face_shape, cached=ex.source.cache_budget > 0)
    return statistics.median(times), statistics.median(fft_share), route


def time_default_fit(X, face_shape, repeats=1):
    """Wall seconds of a default soft fit (the median of `repeats`), and its runs and moves."""
    import warnings

    from emface import FaceEM

    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FaceEM(face_shape, random_state=99).fit(X)  # every kernel it uses loaded: a warm session
        for r in range(repeats):
            t = time.perf_counter()
            est = FaceEM(face_shape, random_state=r).fit(X)
            times.append(time.perf_counter() - t)
    return statistics.median(times), est


def time_baseline(X, face, bg, s, hard, n_iter):
    import baseline

    Xh = np.ascontiguousarray(np.moveaxis(X, 0, -1))
    H, W, K = Xh.shape
    h, w = face.shape
    rng = np.random.default_rng(1)
    lo, hi = X.min(), X.max()
    F, B = rng.uniform(lo, hi, (h, w)), rng.uniform(lo, hi, (H, W))
    A = np.full((H - h + 1, W - w + 1), 1.0 / ((H - h + 1) * (W - w + 1)))
    sd = float(X.std())
    times = []
    for _ in range(n_iter):
        t = time.perf_counter()
        F, B, sd, A, L = baseline.iteration(Xh, F, B, sd, A, h, w, use_MAP=hard)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="threads for emface (default: all cores)")
    args = ap.parse_args(argv)
    from emface.engine.costs import default_workers

    workers = default_workers(args.workers)
    n_em = 3 if args.quick else 7
    n_base = 1 if args.quick else 2
    print(f"emface speed benchmark: {workers} thread(s), numpy {np.__version__}")
    print(f"{'shape H,W,h,w,K':<24} {'mode':<5} {'dtype':<8} {'route':<7} {'emface s/it':>11} "
          f"{'FFT share':>9} {'baseline s/it':>13} {'ratio':>7}")
    rows = []
    fits = []
    for shape in SHAPES:
        H, W, h, w, K = shape
        X, face, bg, s = make_data(H, W, h, w, K)
        one = None
        for hard in (False, True):
            base = None if args.no_baseline else time_baseline(X, face, bg, s, hard, n_base)
            for dtype in (np.float64, np.float32):
                t, share, route = time_emface(X, (h, w), hard, dtype, n_em, workers)
                ratio = "" if base is None else f"{base / t:6.1f}x"
                bs = "" if base is None else f"{base:13.3f}"
                name = ",".join(map(str, shape))
                mode = "hard" if hard else "soft"
                print(f"{name:<24} {mode:<5} {np.dtype(dtype).name:<8} {route:<7} {t:11.4f} "
                      f"{share:9.0%} {bs:>13} {ratio:>7}", flush=True)
                rows.append((shape, mode, np.dtype(dtype).name, t, share, base))
                if not hard and dtype == np.float64:
                    one = t
        fit_t, est = time_default_fit(X, (h, w), repeats=1 if args.quick else 3)
        fits.append((shape, fit_t, fit_t / one, len(est.runs_), sum(len(r["moves"]) for r in est.runs_)))
    print()
    print(f"{'shape H,W,h,w,K':<24} {'default fit':>11} {'in iterations':>13} {'runs':>5} {'moves':>6}")
    for shape, fit_t, iters, runs, moves in fits:
        print(f"{','.join(map(str, shape)):<24} {fit_t:10.2f}s {iters:13.1f} {runs:>5} {moves:>6}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")
    return rows


if __name__ == "__main__":
    main()
