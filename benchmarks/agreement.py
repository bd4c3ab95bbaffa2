"""Largest disagreement between the engine and the brute-force reference (tests/reference.py).

    python benchmarks/agreement.py

Over random problems with odd sizes and priors with zeros, for every backend and
correlation route: log-probabilities, soft and hard E-steps, soft and hard
M-steps and the lower bound. Relative errors are measured against the largest
magnitude of the quantity; B is compared where the background is seen in at
least 1e-4 of an image (elsewhere (SX - XC)/(K - C) is ill-conditioned in any
arithmetic).
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import reference as ref  # noqa: E402
from conftest import random_problem  # noqa: E402
from emface.engine import params_from  # noqa: E402
from emface.engine.kernels import coverage  # noqa: E402
from emface.executor import EngineConfig, LocalExecutor  # noqa: E402
from emface.sources import ArraySource  # noqa: E402

SHAPES = [(5, 7, 9, 3, 4), (4, 6, 11, 6, 5), (3, 9, 5, 4, 5), (3, 5, 5, 5, 5), (6, 8, 7, 1, 1), (8, 13, 17, 5, 7)]


def rel(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def main():
    worst = {}
    routes = [("numba", "fft"), ("numba", "direct"), ("numpy", "fft"), ("numpy", "direct")]
    try:
        import torch  # noqa: F401

        routes.append(("torch", "fft"))
    except ImportError:
        pass
    for seed in range(5):
        for shape in SHAPES:
            K, H, W, h, w = shape
            rng = np.random.default_rng(1000 * seed + sum(shape))
            th, X, _ = random_problem(rng, K, H, W, h, w)
            F, B, s, A = th.face, th.background, th.noise_std, th.prior
            lj_ref = ref.log_joint(X, F, B, s, A)
            q_ref = ref.posterior(X, F, B, s, A)
            pos_ref = ref.hard_positions(X, F, B, s, A)
            for backend, route in routes:
                ex = LocalExecutor(ArraySource(X, (h, w), standardize=False, chunk_size=2),
                                   EngineConfig(backend=backend, route=route))
                st, lj = ex.collect(th, output="log_joint")
                fin = np.isfinite(lj_ref)
                key = f"{backend}/{route}"
                d = worst.setdefault(key, {})
                d["log p(X, d)"] = max(d.get("log p(X, d)", 0), rel(lj[fin], lj_ref[fin]))
                st, q = ex.collect(th, output="q")
                d["soft E-step q"] = max(d.get("soft E-step q", 0), float(np.abs(q - q_ref).max()))
                lb = ref.lower_bound(X, F, B, s, A, q_ref)
                d["lower bound"] = max(d.get("lower bound", 0), rel(st.loglik, lb))
                new, _ = params_from(st, th, face_shape=(h, w), noise_floor=1e-300)
                Fr, Br, sr, Ar = ref.m_step(X, q_ref, h, w, previous_B=B)
                seen = (K - coverage(st.N, (h, w))) > 1e-4
                m = max(rel(new.face, Fr), rel(new.background[seen], Br[seen]), rel(new.prior, Ar),
                        rel(new.noise_std, sr))
                d["soft M-step"] = max(d.get("soft M-step", 0), m)
                hs = ex.pass_stats(th, hard=True)
                d["hard E-step (positions equal)"] = d.get("hard E-step (positions equal)", True) and bool(
                    np.array_equal(hs.positions, pos_ref))
                new, _ = params_from(hs, th, face_shape=(h, w), noise_floor=1e-300)
                Fr, Br, sr, Ar = ref.m_step(X, ref.one_hot(pos_ref, *A.shape), h, w, previous_B=B)
                seen = (K - coverage(hs.N, (h, w))) > 1e-4
                m = max(rel(new.face, Fr), rel(new.background[seen], Br[seen]), rel(new.prior, Ar),
                        rel(new.noise_std, sr))
                d["hard M-step"] = max(d.get("hard M-step", 0), m)
    cols = ["log p(X, d)", "soft E-step q", "hard E-step (positions equal)", "soft M-step", "hard M-step",
            "lower bound"]
    print("| backend/route | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for key, d in worst.items():
        print(f"| {key} | " + " | ".join(str(d[c]) if isinstance(d[c], bool) else f"{d[c]:.1e}" for c in cols) + " |")


if __name__ == "__main__":
    main()
