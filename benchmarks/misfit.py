"""Frames that do not fit: the misfit z-score and the "no face" class, measured (issue 20's acceptance).

1. Bad frames: 1,000 frames of 128x128 with a 48x48 face, noise = the face's
   contrast, 3% of frames without the face and 2% with another object (a
   face-sized patch of another photo). Wanted: z > 5 on >= 95% of the bad
   frames and on <= 0.5% of the good ones, and a MisfitWarning.
2. Clean stacks (several noise levels and shapes, colour, two faces): no
   MisfitWarning and <= 0.5% of frames above z = 5; the z-scores' mean and
   spread (about 0 and 1).
3. Empty frames: 30% of 1,000 frames without the face, fitted with
   ``empty_frames=True``. Wanted: >= 99% of frames classified right (face or
   no face), >= 99% of positions exact on frames with a face, and F at its
   floor: F's RMS error over that of F estimated from the true positions
   (`_common.floor_params`) <= ~1.05.

Run: ``PYTHONPATH=src python benchmarks/misfit.py`` (about two minutes on 2 cores).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from _common import floor_params, match_faces, rms

from emface import FaceEM
from emface.datasets import GOOD, NO_FACE, make_faces, make_faces_with_outliers
from emface.errors import MisfitWarning


def fit(X, face_shape, **kw):
    """A fit; returns (estimator, number of MisfitWarnings, seconds)."""
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = FaceEM(face_shape, random_state=0, **kw).fit(X)
    n_warn = sum(issubclass(w.category, MisfitWarning) for w in caught)
    return est, n_warn, time.perf_counter() - t


def bad_frames(seed):
    X, truth, kinds = make_faces_with_outliers(1000, (128, 128), (48, 48), no_face=0.03, other_object=0.02,
                                               noise=1.0, random_state=seed)
    est, n_warn, dt = fit(X, (48, 48))
    z = est.misfit_
    bad = kinds != GOOD
    good_pos = np.mean((est.positions_[~bad] == truth.positions[~bad]).all(axis=1))
    ok = np.mean(z[bad] > 5) >= 0.95 and np.mean(z[~bad] > 5) <= 0.005 and n_warn == 1
    print(f"  seed {seed}: z > 5 on {np.mean(z[bad] > 5):.1%} of {bad.sum()} bad frames (lowest z {z[bad].min():.1f}),"
          f" on {np.mean(z[~bad] > 5):.2%} of good ones (highest z {z[~bad].max():.1f}); MisfitWarning: "
          f"{'yes' if n_warn else 'no'}; good positions exact {good_pos:.1%}; {dt:.1f} s  "
          f"{'OK' if ok else 'FAIL'}")
    return ok


CLEAN = [
    # (label, image shape, face shape, noise, extra make_faces kw, fit kw)
    ("128x128, 48x48, noise 1", (128, 128), (48, 48), 1.0, {}, {}),
    ("128x128, 48x48, noise 3", (128, 128), (48, 48), 3.0, {}, {}),
    ("128x128, 48x48, noise 0.3", (128, 128), (48, 48), 0.3, {}, {}),
    ("64x64, 20x16, noise 2", (64, 64), (20, 16), 2.0, {}, {}),
    ("64x64, 20x16, noise 8 (split posteriors; one run)", (64, 64), (20, 16), 8.0, {}, dict(n_init=1)),
    ("100x120, 40x32 colour, noise 1", (100, 120), (40, 32), 1.0, dict(colour=True), {}),
    ("100x120, 40x32 colour, noise 1, per-channel s", (100, 120), (40, 32), 1.0, dict(colour=True),
     dict(noise="per_channel")),
    ("100x120, 2 faces 40x32, noise 1", (100, 120), (40, 32), 1.0, dict(n_faces=2), dict(n_faces=2)),
]


def clean(case, seed=0):
    label, shape, face, noise, mk, kw = case
    X, truth = make_faces(1000, shape, face, noise=noise, random_state=seed, **mk)
    est, n_warn, dt = fit(X, face, **kw)
    z = est.misfit_
    ok = n_warn == 0 and np.mean(z > 5) <= 0.005
    print(f"  {label}: z mean {z.mean():+.3f}, sd {z.std():.3f}, largest {z.max():.2f}, "
          f"above 5 {np.mean(z > 5):.2%}; MisfitWarning: {'yes' if n_warn else 'no'}; {dt:.1f} s  "
          f"{'OK' if ok else 'FAIL'}")
    return ok


def empty_frames(seed, **mk):
    X, truth, kinds = make_faces_with_outliers(1000, (128, 128), (48, 48), no_face=0.3, other_object=0.0,
                                               noise=1.0, random_state=seed, **mk)
    C = mk.get("n_faces", 1)
    est, n_warn, dt = fit(X, (48, 48), empty_frames=True, n_faces=C)
    empty = kinds == NO_FACE
    right = np.mean((est.labels_ == -1) == empty)
    exact = np.mean((est.positions_[~empty] == truth.positions[~empty]).all(axis=1))
    floor = floor_params(X, truth, (48, 48))
    ratios = []
    mapping = match_faces(est.labels_[~empty], truth.labels[~empty], C)
    for c in range(C):
        t = mapping[c]
        F_floor = np.moveaxis(floor.faces[t], 0, -1)
        F_true = np.asarray(truth.faces[t], dtype=float)
        F_true = F_true if F_true.ndim == 3 else F_true[..., None]
        F_est = np.asarray(est.faces_[c], dtype=float)
        F_est = F_est if F_est.ndim == 3 else F_est[..., None]
        ratios.append(rms(F_est - F_true) / rms(F_floor - F_true))
    ratio = max(ratios)
    ok = right >= 0.99 and exact >= 0.99 and ratio <= 1.05
    what = (" colour" if mk.get("colour") else "") + (f", {C} faces" if C > 1 else "")
    print(f"  seed {seed}{what}: classified right {right:.1%}, positions exact "
          f"{exact:.1%} (of {int((~empty).sum())} frames with a face), F/floor {ratio:.3f}, "
          f"weight of 'no face' {est.empty_weight_:.3f} (true share {empty.mean():.3f}), "
          f"z > 5 on {np.mean(est.misfit_ > 5):.2%}; {dt:.1f} s  {'OK' if ok else 'FAIL'}")
    return ok


def main():
    results = []
    print("1. 5% bad frames (3% no face, 2% another object), 1,000 frames of 128x128, 48x48 face, noise = contrast")
    results += [bad_frames(seed) for seed in (0, 1)]
    print("2. clean stacks, 1,000 frames")
    results += [clean(case, seed) for seed, case in enumerate(CLEAN)]
    print("3. 30% of frames without the face, empty_frames=True, 1,000 frames of 128x128, 48x48 face, noise 1")
    results += [empty_frames(seed) for seed in (0, 1)]
    results.append(empty_frames(2, colour=True))
    results.append(empty_frames(3, n_faces=2))
    print(f"{sum(results)} of {len(results)} cases meet the limits")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
