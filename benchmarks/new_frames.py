"""Predicting on new frames (issue 20): fit once, then place the faces of frames the fit never saw.

Run by hand (not by CI):

    python benchmarks/new_frames.py            # every configuration
    python benchmarks/new_frames.py --seed 7   # other draws of the same configurations

Each row fits the default ``FaceEM`` on K training frames made from photographs, then calls
``predict`` on K fresh frames drawn from the same model (same face, background, noise and prior,
other positions and noise). It prints the fraction of positions exactly right on the training
frames (the fit's own ``positions_``) and on the fresh frames (``predict``), and the mean
probability that ``posterior_summary`` gives the fresh frames' chosen positions.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from emface import FaceEM
from emface.datasets import make_faces

# (H, W), (h, w), K, noise / contrast, prior, face photo, background photo, colour
CONFIGS = [
    ((128, 128), (48, 48), 1000, 1.0, "uniform", "astronaut", "camera", False),
    ((128, 128), (48, 48), 1000, 1.0, "uniform", "chelsea", "coffee", False),
    ((128, 128), (48, 48), 1000, 0.5, "blob", "rocket", "brick", False),
    ((100, 120), (40, 32), 500, 1.0, "uniform", "cup", "hubble", True),
    ((96, 96), (32, 32), 300, 1.0, "band", "helmet", "coins", False),
]


def main(seed):
    print(f"{'H,W':>8} {'h,w':>6} {'K':>5} {'s/c':>4} {'prior':>8} {'photos':>16} | "
          f"{'train pos':>9} {'new pos':>8} {'new p':>6} {'time':>6}  verdict")
    for (H, W), (h, w), K, noise, prior, face, bg, colour in CONFIGS:
        common = dict(image_shape=(H, W), face_shape=(h, w), noise=noise, prior=prior, face=face, background=bg,
                      colour=colour)
        X, truth = make_faces(K, random_state=seed, **common)
        Xn, truth_n = make_faces(K, random_state=seed + 1000, **common)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = FaceEM((h, w), random_state=seed).fit(X)
        elapsed = time.perf_counter() - t0
        train = float(np.mean((est.positions_ == truth.positions).all(axis=1)))
        summary = est.posterior_summary(Xn)
        new = float(np.mean((summary.positions == truth_n.positions).all(axis=1)))
        ok = "ok" if train >= 0.99 and new >= 0.99 else "FAIL"
        print(f"{H:>3},{W:<4} {h:>2},{w:<3} {K:>5} {noise:>4.1f} {prior:>8} {face + '/' + bg:>16} | "
              f"{train:>9.2%} {new:>8.2%} {summary.probability.mean():>6.3f} {elapsed:>5.1f}s  {ok}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    main(ap.parse_args().seed)
