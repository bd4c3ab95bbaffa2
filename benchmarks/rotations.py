"""Rotations: seconds per iteration and the acceptance figures of issue 19 (figures, not tests).

A textured round object (a bundled photo cropped to the disc inscribed in a
48×48 window) turned by any angle (uniform over 360°, continuous: not on the
grid; `scipy.ndimage.rotate`, cubic spline) and pasted at a random corner of
a 128×128 background photo, with Gaussian noise equal to the object's
contrast (its standard deviation inside the disc).

    python benchmarks/rotations.py accuracy [--K 1500] [--R 36]
        positions within 1 px, angles within 10° after the one global offset,
        the face's correlation with the truth inside the disc (after turning
        it by that offset), and the fit's time;
    python benchmarks/rotations.py speed [--K 2000] [--iters 6]
        seconds per iteration (wall, and CPU of all threads) for R = 1, 12, 36,
        72, sparse and full, against a translation-only fit of the same stack,
        and the whole default fits;
    python benchmarks/rotations.py cost [--K 2000]
        the whole default fits only: translation only, 36 angles sparse and full.

Times are whole `FaceEM` fits as a user runs them: (max_iter = n) minus
(max_iter = 2), tol = 0, divided by n - 2; the default start.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy import ndimage

from emface import FaceEM
from emface.datasets import photo
from emface.engine.rotations import disc_mask


def make_stack(K, *, image=128, window=48, face="coin", background="camera", noise=1.0, seed=0):
    """(X, truth): X (K, H, H); truth has the face (window²), each image's angle (degrees) and corner."""
    rng = np.random.default_rng(seed)
    F = photo(face, (window, window))
    B = photo(background, (image, image))
    D = disc_mask(window)
    s = noise * float(F[D].std())
    angles = rng.uniform(0.0, 360.0, K)
    P = image - window + 1
    pos = rng.integers(0, P, size=(K, 2))
    X = np.empty((K, image, image))
    for k in range(K):
        T = ndimage.rotate(F, angles[k], reshape=False, order=3, mode="nearest")
        mu = B.copy()
        win = mu[pos[k, 0]:pos[k, 0] + window, pos[k, 1]:pos[k, 1] + window]
        win[D] = T[D]
        X[k] = mu + rng.normal(0.0, s, size=mu.shape)
    return X, dict(face=F, angles=angles, positions=pos, noise=s)


def angle_errors(found, true):
    """Each image's angle error (degrees, in (-180, 180]) after the one global offset (the circular mean)."""
    d = np.deg2rad(np.asarray(found) - np.asarray(true))
    off = np.angle(np.mean(np.exp(1j * d)))
    err = np.rad2deg(np.angle(np.exp(1j * (d - off))))
    return err, np.rad2deg(off)


def face_correlation(fitted, true, offset):
    """Correlation inside the disc of the true face and the fitted one turned back by the global offset."""
    D = disc_mask(true.shape[0])
    # images show R_θ F̂ with θ = found angle; found = true + offset, so F̂ turned by offset is the true face
    # the fitted window outside the disc carries no evidence: fill it with the disc's mean before turning
    filled = np.where(D, fitted, float(fitted[D].mean()))
    back = ndimage.rotate(filled, offset, reshape=False, order=3, mode="nearest")
    return float(np.corrcoef(back[D], true[D])[0, 1])


def accuracy(K, R, seed=0, **fit):
    X, truth = make_stack(K, seed=seed)
    est = FaceEM((48, 48), rotations=R, random_state=seed, **fit)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    secs = time.perf_counter() - t0
    s = est.posterior_summary()
    pos_ok = float(np.mean(np.abs(s.positions - truth["positions"]).max(axis=1) <= 1))
    err, off = angle_errors(s.angles, truth["angles"])
    ang_ok = float(np.mean(np.abs(err) <= 10.0))
    corr = face_correlation(est.face_, truth["face"], off)
    print(f"K={K} R={R} {fit or ''}: positions within 1 px {100 * pos_ok:.1f}%, angles within 10° "
          f"{100 * ang_ok:.1f}% (global offset {off:.1f}°), face correlation {corr:.4f}, "
          f"{est.n_iter_} iterations, {secs:.1f} s")
    return dict(pos=pos_ok, ang=ang_ok, corr=corr, secs=secs, iters=est.n_iter_)


def _fit_time(X, n_iter, **kw):
    """Wall and CPU seconds (all threads) of a fit of `n_iter` iterations, tol = 0."""
    est = FaceEM((48, 48), max_iter=n_iter, tol=0.0, random_state=0, n_init=1, **kw)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X)
    return np.array([time.perf_counter() - t0, time.process_time() - c0])


def per_iteration(X, iters, **kw):
    """Wall and CPU seconds per whole iteration: (fit of `iters`) - (fit of 2), over iters - 2."""
    return (_fit_time(X, iters, **kw) - _fit_time(X, 2, **kw)) / (iters - 2)


def speed(K, iters, Rs=(1, 12, 36, 72)):
    X, _ = make_stack(K, seed=1)
    base = per_iteration(X, iters)
    print(f"K={K}, 128x128, 48x48: translation only {base[0]:.3f} s/iteration ({base[1]:.3f} s CPU)")
    print("  R    search  s/iteration (CPU s)   x translation (wall, CPU)")
    for R in Rs:
        for search in ("sparse", "full"):
            t = per_iteration(X, iters, rotations=R, angle_search=search)
            print(f"  {R:3d}  {search:6s}  {t[0]:7.3f} ({t[1]:7.3f})   {t[0] / base[0]:5.1f}x, {t[1] / base[1]:5.1f}x",
                  flush=True)
    cost(X)


def cost(X):
    """Whole default fits of the same stack: translation only, 36 angles with the sparse and the full search
    (wall and CPU seconds, and the ratio to translation only)."""
    base = None
    for kw in (dict(), dict(rotations=36), dict(rotations=36, angle_search="full")):
        est = FaceEM((48, 48), random_state=0, **kw)
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        base = base or (wall, cpu)
        print(f"  default fit {kw or 'translation only'}: {wall:.1f} s wall, {cpu:.1f} s CPU, {est.n_iter_} "
              f"iterations; {wall / base[0]:.1f}x (wall), {cpu / base[1]:.1f}x (CPU) translation only", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["accuracy", "speed", "cost"])
    ap.add_argument("--K", type=int, default=None)
    ap.add_argument("--R", type=int, default=36)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.what == "accuracy":
        accuracy(a.K or 1500, a.R, a.seed)
    elif a.what == "cost":
        cost(make_stack(a.K or 2000, seed=1)[0])
    else:
        speed(a.K or 2000, a.iters)


if __name__ == "__main__":
    main()
