"""Whole iterations: what a `FaceEM` fit costs per iteration as a user runs it, and where that time goes.

Run by hand (not by CI):

    python benchmarks/whole_fits.py                # the table: grey vs colour, one face vs 8, soft and hard
    python benchmarks/whole_fits.py --quick        # small stacks, to try it
    python benchmarks/whole_fits.py --profile      # plus where each fit's time goes (steps, moves, draws)
    python benchmarks/whole_fits.py --only colour  # one group: colour or faces

The protocol of issue 19: the seconds of a whole default fit with ``max_iter=10``
minus those of the same fit with ``max_iter=2`` (``tol=0``, the default start,
the same seed), divided by 8 -- the cost of one more iteration of the fit a user
runs, restarts, over-relaxation, moves and all. Stacks are smooth random faces
(Gaussian-filtered noise) on a smooth random background, 128x128 frames, a 48x48
face, K = 2000, with noise equal to the faces' contrast ("sharp": one position
holds nearly all of each image's posterior) and three times the contrast
("spread": the posterior of an image spreads over many positions). The colour
stacks are the grey ones' three independent channels' worth of draws; C = 8 uses
eight different smooth faces, equally often.

Columns:

- s/it: (time of the 10-iteration fit - time of the 2-iteration fit) / 8, the
  median over `--repeats` pairs (the two fits of a pair run back to back);
- E+M: the seconds of one E-step pass plus one M-step alone
  (``_common.time_iterations``, from the data-driven start, spectra cached);
- s/it / E+M: how much a whole iteration costs beyond its E- and M-steps;
- ratio: s/it over the matching grey (or one-face) row's s/it, the figure
  issue 19 judges (3 channels <= 1.6x grey, C = 8 <= 6x one face);
- passes: E-step passes of the 10-iteration fit minus those of the 2-iteration
  fit (8 when every iteration is one pass);
- runs: EM runs (restarts) of the 2- and of the 10-iteration fit;
- maxp: the 10-iteration fit's mean posterior probability of the chosen
  position (near 1: sharp; lower: spread).

With ``--profile`` each 10-iteration fit is run once more with its time split
(exclusive: a step called inside a move counts as the step) into E-step
passes, M-steps, the objective, over-relaxation's extrapolation, the starts,
the restart rule's decisiveness draws and the moves' own work.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from collections import defaultdict

import numpy as np
from scipy import ndimage

from _common import cpu_count, time_iterations
from emface import FaceEM

SHAPE, FACE, K = (128, 128), (48, 48), 2000
QUICK = ((64, 64), (24, 24), 400)


def smooth(rng, shape, sigma=3.0):
    """Gaussian-filtered white noise, rescaled to mean 0 and standard deviation 1 (per channel)."""
    z = ndimage.gaussian_filter(rng.standard_normal(shape), (sigma, sigma) + (0,) * (len(shape) - 2))
    z -= z.mean(axis=(0, 1))
    return z / z.std(axis=(0, 1))


def smooth_stack(K, image_shape, face_shape, *, n_faces=1, colour=False, noise=1.0, seed=0):
    """K float64 frames: one of `n_faces` smooth random faces at a uniform position on a smooth background."""
    rng = np.random.default_rng(seed)
    ch = (3,) if colour else ()
    faces = np.stack([smooth(rng, face_shape + ch) for _ in range(n_faces)])
    bg = 0.5 * smooth(rng, image_shape + ch, sigma=8.0)
    H, W = image_shape
    h, w = face_shape
    labels = rng.integers(0, n_faces, K)
    rows = rng.integers(0, H - h + 1, K)
    cols = rng.integers(0, W - w + 1, K)
    X = np.repeat(bg[None], K, axis=0)
    for k in range(K):
        X[k, rows[k]:rows[k] + h, cols[k]:cols[k] + w] = faces[labels[k]]
    X += noise * rng.standard_normal(X.shape)  # each face has contrast 1
    return X


# ---------------------------------------------------------------------------------------------- profiling
class Profile:
    """Exclusive seconds and calls of the patched functions (a stack of timers: the inner one owns its time)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack = []

    def wrap(self, name, fn):
        def timed(*a, **kw):
            now = time.perf_counter()
            if self._stack:
                outer, since = self._stack[-1]
                self.seconds[outer] += now - since
            self._stack.append([name, now])
            try:
                return fn(*a, **kw)
            finally:
                end = time.perf_counter()
                _, since = self._stack.pop()
                self.seconds[name] += end - since
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][1] = end
        return timed


@contextlib.contextmanager
def profiled(prof):
    """Patch the steps, starts, the restart rule's draws and the moves to record into `prof`."""
    import emface.estimator as est_mod
    import emface.moves as moves_mod
    from emface.mixture import FaceMixture

    targets = [(FaceMixture, "e_step"), (FaceMixture, "m_step"), (FaceMixture, "objective"),
               (FaceMixture, "extrapolate"), (est_mod, "auto_start"), (est_mod, "random_start"),
               (est_mod, "_model_decisiveness"), (moves_mod, "shift_escape"), (moves_mod, "split_merge")]
    saved = [(obj, name, obj.__dict__[name]) for obj, name in targets]
    try:
        for obj, name, fn in saved:
            setattr(obj, name, prof.wrap(name, fn))
        yield prof
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def _count_passes():
    """A context counting E-step passes (FaceMixture.e_step calls)."""
    prof = Profile()
    return profiled(prof), prof


# ---------------------------------------------------------------------------------------------- timing
def fit(X, face_shape, max_iter, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        ctx, prof = _count_passes()
        with ctx:
            est = FaceEM(face_shape, max_iter=max_iter, tol=0.0, random_state=0, **kw).fit(X)
        return est, time.perf_counter() - t, prof


def whole_iteration(X, face_shape, repeats, **kw):
    """(median s/it by the 10 - 2 protocol, extra passes, maxp, the 10-iteration fit's runs)."""
    fit(X[:100], face_shape, 2, **kw)  # untimed: compiles this case's kernels
    per_it = []
    for _ in range(repeats):
        est2, t2, p2 = fit(X, face_shape, 2, **kw)
        est, t10, p10 = fit(X, face_shape, 10, **kw)
        per_it.append((t10 - t2) / 8)
    passes = p10.calls["e_step"] - p2.calls["e_step"]
    maxp = float(np.mean(est.posterior_summary(X if kw.get("hard") else None).probability))
    return float(np.median(per_it)), passes, maxp, (len(est2.runs_), len(est.runs_))


def em_only(X, face_shape, n_faces, hard, repeats):
    times, _, _ = time_iterations(X, face_shape, n_faces=n_faces, hard=hard, n_iter=max(3, repeats), start="auto")
    return float(np.median(times))


def profile_row(X, face_shape, **kw):
    prof = Profile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        with profiled(prof):
            est = FaceEM(face_shape, max_iter=10, tol=0.0, random_state=0, **kw).fit(X)
        total = time.perf_counter() - t
    parts = ", ".join(f"{n} {prof.seconds[n]:.2f}s/{prof.calls[n]}" for n in sorted(prof.seconds, key=lambda n:
                                                                                     -prof.seconds[n]))
    rest = total - sum(prof.seconds.values())
    print(f"    profile of the 10-iteration fit ({total:.2f} s, {len(est.runs_)} run(s), "
          f"n_iter {[r['n_iter'] for r in est.runs_] if isinstance(est.runs_[0], dict) else '?'}): "
          f"{parts}, rest {rest:.2f}s", flush=True)


CASES = {
    # group: (label, n_faces, colour)
    "colour": [("grey", 1, False), ("3 channels", 1, True)],
    "faces": [("C=1", 1, False), ("C=8", 8, False)],
}


def main(quick=False, repeats=3, only=None, profile=False, noises=(1.0, 3.0), hards=(False, True)):
    (H, W), (h, w), n = QUICK if quick else (SHAPE, FACE, K)
    print(f"whole FaceEM iterations at {H}x{W}, a {h}x{w} face, K={n}, smooth random faces, "
          f"{cpu_count()} worker(s): (fit(max_iter=10) - fit(max_iter=2)) / 8, tol=0, the default start, "
          f"median of {repeats}")
    print(f"| group | case | EM | noise | s/it | E+M | s/it / E+M | ratio | passes | runs | maxp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for group, cases in CASES.items():
        if only and group != only:
            continue
        for noise in noises:
            for hard in hards:
                base = None
                for label, C, colour in cases:
                    X = smooth_stack(n, (H, W), (h, w), n_faces=C, colour=colour, noise=noise, seed=0)
                    sit, passes, maxp, runs = whole_iteration(X, (h, w), repeats, n_faces=C, hard=hard)
                    em = em_only(X, (h, w), C, hard, repeats)
                    base = base or sit
                    print(f"| {group} | {label} | {'hard' if hard else 'soft'} | {noise:g} | {sit:.3f} | "
                          f"{em:.3f} | {sit / em:.2f} | {sit / base:.2f} | {passes} | {runs[0]}, {runs[1]} | {maxp:.3f} |", flush=True)
                    if profile:
                        profile_row(X, (h, w), n_faces=C, hard=hard)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64x64 frames, a 24x24 face, K=400")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=sorted(CASES))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--noise", type=float, nargs="*", default=[1.0, 3.0])
    ap.add_argument("--em", choices=["soft", "hard", "both"], default="both")
    a = ap.parse_args()
    hards = {"soft": (False,), "hard": (True,), "both": (False, True)}[a.em]
    main(a.quick, a.repeats, a.only, a.profile, tuple(a.noise), hards)
