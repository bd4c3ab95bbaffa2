"""Prints what FaceEM does with each bad or odd input (issue 6's table). Run by hand:

    python benchmarks/robustness.py
"""

import os
import tempfile
import warnings

import numpy as np

from emface import FaceEM

rng = np.random.default_rng(0)
X = rng.normal(100, 20, size=(20, 12, 14))


def attempt(label, make):
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = make()
        extra = f" (warned: {w[0].category.__name__}: {w[0].message})" if w else ""
        print(f"| {label} | works: {out}{extra} |")
    except Exception as exc:  # noqa: BLE001 - we print what the user would see
        print(f"| {label} | {type(exc).__name__}: {exc} |")


def fit(X, face=(4, 5), **kw):
    kw.setdefault("random_state", 0)
    est = FaceEM(face, **kw).fit(X)
    return f"s={est.noise_std_:.3g}, objective {est.lower_bound_:.4g}, converged={est.converged_}"


print("| input | what it got |\n|---|---|")
bad = X.copy(); bad[3, 4, 5] = np.nan
attempt("NaN pixel", lambda: fit(bad))
inf = X.copy(); inf[0, 0, 0] = np.inf
attempt("inf pixel", lambda: fit(inf))
attempt("2-D input", lambda: fit(X[0]))
attempt("grey stack with an extra axis, X[None]", lambda: fit(X[None]))
attempt("empty stack (0, 12, 14)", lambda: fit(X[:0]))
attempt("strings", lambda: fit(np.full((2, 5, 5), "x")))
attempt("face (13, 5) in 12x14 images", lambda: fit(X, face=(13, 5)))
attempt("face_shape=(0, 3)", lambda: fit(X, face=(0, 3)))
attempt("face_shape='4x5'", lambda: fit(X, face="4x5"))
attempt("prior_smoothing=-1", lambda: fit(X, prior_smoothing=-1.0))
attempt("n_init=0", lambda: fit(X, n_init=0))
attempt("max_iter=-1", lambda: fit(X, max_iter=-1))
attempt("face_init of shape (3, 5)", lambda: fit(X, face_init=np.zeros((3, 5))))
attempt("background_init of shape (12, 13)", lambda: fit(X, background_init=np.zeros((12, 13))))
A = np.full((9, 10), 1 / 90); A[0, 0] = -A[0, 0]
attempt("prior_init with a negative entry", lambda: fit(X, prior_init=A))
attempt("prior_init summing to 2", lambda: fit(X, prior_init=np.full((9, 10), 2 / 90)))
est = FaceEM((4, 5), random_state=0, n_init=1).fit(X)
attempt("predict on 12x15 images", lambda: est.predict(np.zeros((2, 12, 15))))
attempt("uint8 stack", lambda: fit(np.clip(X, 0, 255).astype(np.uint8)))
attempt("int64 stack", lambda: fit(X.astype(np.int64)))
attempt("bool stack", lambda: fit(X > 100))
attempt("a single image", lambda: fit(X[:1]))
attempt("constant images", lambda: fit(np.full((10, 12, 14), 3.0)))
attempt("values around 1e8", lambda: fit(1e8 + X * 1e6))
attempt("values around 1e-8", lambda: fit(X * 1e-10))
attempt("X x 1e200", lambda: fit(X * 1e200))
attempt("X x 1e-200", lambda: fit(X * 1e-200))
attempt("predict NaN pixel", lambda: est.predict(bad))
attempt("predict X x 1e200 under a model of X", lambda: est.predict(X * 1e200))
attempt("n_faces=21 for 20 images", lambda: fit(X, n_faces=21))
attempt("max_memory='1e400GB'", lambda: fit(X, max_memory="1e400GB"))
attempt("sample(10**12)", lambda: est.sample(10**12)[0].shape)
ro = X.copy(); ro.setflags(write=False)
attempt("read-only array", lambda: fit(ro))
attempt("non-contiguous view X[:, :, ::-1]", lambda: fit(X[:, :, ::-1]))
with tempfile.TemporaryDirectory() as d:
    p = os.path.join(d, "x.npy")
    np.save(p, X)
    attempt("memory-mapped .npy", lambda: fit(np.load(p, mmap_mode="r")))
    m = os.path.join(d, "m.npz")
    est.save(m)
    z = dict(np.load(m))
    z["prior"] = np.full((1, 1681, 1), 1 / 1681)
    np.savez(m, **z)
    attempt("model with a prior of shape (1, 1681, 1)", lambda: FaceEM.load(m).predict(X))
    open(m, "wb").close()
    attempt("empty model file", lambda: FaceEM.load(m))
    attempt(".npy given as a model", lambda: FaceEM.load(p))
