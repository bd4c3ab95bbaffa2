"""Whole fits through the public API only, for comparing two commits (`benchmarks/ab.py`).

Every figure is what a user's script pays: ``FaceEM(...).fit(X)`` with the
defaults, on stacks from `emface.datasets.make_faces` (bundled photographs),
the noise equal to the faces' contrast. It imports nothing but ``emface``'s
public names, so the same file runs against any commit:

    python benchmarks/ab.py --old /tmp/old --new . -- python benchmarks/public_fits.py

(``ab.py`` runs the file in each checkout; give an absolute path to run this
copy against an older checkout that lacks it.)

Per case, the seconds of an iteration by the 10-minus-2 protocol (fits with
``max_iter=10`` and ``max_iter=2``, ``tol=0``, the difference over 8), and the
wall and CPU seconds of the default fit (CPU seconds of every thread of the
process: on a shared machine they drift less than wall seconds). ``--default-only``
skips the 10-minus-2 fits. Cases: one grey face, several faces (C = 4
and C = 8), colour, and incremental EM (``algorithm="incremental"``).
"""

from __future__ import annotations

import argparse
import time
import warnings

from emface import FaceEM
from emface.datasets import make_faces

CASES = {
    # name: (make_faces kwargs, FaceEM kwargs)
    "grey 128x128 48x48 K=2000": (dict(n_images=2000, image_shape=(128, 128), face_shape=(48, 48)), {}),
    "faces C=4 100x120 40x32 K=2000": (dict(n_images=2000, n_faces=4), dict(n_faces=4)),
    "faces C=8 100x120 40x32 K=2000": (dict(n_images=2000, n_faces=8), dict(n_faces=8)),
    "colour 128x128 48x48 K=2000": (dict(n_images=2000, image_shape=(128, 128), face_shape=(48, 48),
                                         colour=True), {}),
    "incremental 64x64 24x24 K=20000": (dict(n_images=20000, image_shape=(64, 64), face_shape=(24, 24),
                                             noise=3.0), dict(algorithm="incremental")),
}


def _fit(X, face_shape, **options):
    t = time.perf_counter()
    FaceEM(face_shape, random_state=0, **options).fit(X)
    return time.perf_counter() - t


def _fit_cpu(X, face_shape, **options):
    """Wall and CPU seconds of a fit."""
    t, c = time.perf_counter(), time.process_time()
    FaceEM(face_shape, random_state=0, **options).fit(X)
    return time.perf_counter() - t, time.process_time() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="substrings of the case names to run")
    ap.add_argument("--default-only", action="store_true", help="time the default fit only")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    print(f"{'case':<34} {'s/iteration':>11} {'default fit s':>13} {'cpu s':>7}")
    for name, (data, options) in CASES.items():
        if args.only and not any(s in name for s in args.only):
            continue
        X, truth = make_faces(noise=data.pop("noise", 1.0), random_state=0, **data)
        shape = truth.faces.shape[1:3]
        _fit(X, shape, max_iter=2, tol=0, **options)  # every kernel loaded: a warm session
        per_iter = float("nan")
        if not args.default_only:
            t2 = _fit(X, shape, max_iter=2, tol=0, **options)
            t10 = _fit(X, shape, max_iter=10, tol=0, **options)
            per_iter = (t10 - t2) / 8
        full, cpu = _fit_cpu(X, shape, **options)
        print(f"{name:<34} {per_iter:11.4f} {full:13.2f} {cpu:7.2f}", flush=True)


if __name__ == "__main__":
    main()
