"""Restarts only where they can help (issue 20): the default fit against one run at low SNR. Run by hand:

    python benchmarks/restarts.py                 # 10,000 frames of 64x64, a 20x16 face, noise 8x the contrast
    python benchmarks/restarts.py --n-images 2000 # a quicker look
    python benchmarks/restarts.py --seed 3        # another draw

At this noise the posteriors are split by the noise itself, so the mean
probability of the chosen position is far below 0.95 at the optimum too. The
default ``n_init="auto"`` compares it with what the fitted model predicts for
images drawn from itself and restarts only when the data are clearly less
decisive. Both fits run in this process, one after the other, so their
ratio holds on a shared machine. Columns: runs, iterations of each run, the
objective per image, the fraction of positions exactly right, the fit's wall
and CPU time, the data's mean posterior probability of the chosen position.
The verdict: ok when the default costs at most 1.5x the CPU time of one run
(CPU time, because other jobs on a shared machine stretch wall time unevenly)
and reaches the same objective (to 1e-3 per image).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from emface import FaceEM
from emface.datasets import make_faces


def fit(X, truth, **kw):
    t, c = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM(truth.face.shape, random_state=0, **kw).fit(X)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    s = est.posterior_summary()
    return dict(runs=len(est.runs_), iters=[r["n_iter"] for r in est.runs_], objective=est.lower_bound_,
                pos=float(np.mean((s.positions == truth.positions).all(axis=1))), time=dt, cpu=dc,
                maxp=float(np.mean(s.probability)))


def main(n_images, seed, noise):
    X, truth = make_faces(n_images, (64, 64), (20, 16), noise=noise, random_state=seed)
    with warnings.catch_warnings():  # warm-up: every compiled kernel a fit uses (escapes too) loads untimed
        warnings.simplefilter("ignore")
        FaceEM((20, 16), random_state=0).fit(X[:400])
    rows = [("default", fit(X, truth)), ("n_init=1", fit(X, truth, n_init=1))]
    print(f"{n_images} frames of 64x64, a 20x16 face, noise {noise}x the contrast (seed {seed}):")
    print(f"{'fit':>9} {'runs':>4} {'iterations':>16} {'objective':>13} {'pos':>7} {'maxp':>6} {'wall':>8} "
          f"{'cpu':>8}")
    for name, r in rows:
        print(f"{name:>9} {r['runs']:>4} {str(r['iters']):>16} {r['objective']:13.4f} {r['pos']:7.2%} "
              f"{r['maxp']:6.3f} {r['time']:7.1f}s {r['cpu']:7.1f}s")
    d, o = rows[0][1], rows[1][1]
    ratio = d["cpu"] / o["cpu"]
    ok = ratio <= 1.5 and d["objective"] >= o["objective"] - 1e-3
    print(f"default / one run: {ratio:.2f}x CPU time ({d['time'] / o['time']:.2f}x wall), objective "
          f"{d['objective'] - o['objective']:+.4f} per image  {'ok' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=10_000)
    ap.add_argument("--noise", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.exit(0 if main(args.n_images, args.seed, args.noise) else 1)
