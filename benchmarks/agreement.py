"""Largest disagreement between the engine and the brute-force reference (tests/reference.py).

    python benchmarks/agreement.py

Over random problems with odd sizes and priors with zeros, one and several
faces, one and several channels, for every backend and correlation route:
log-probabilities, soft and hard E-steps, soft and hard M-steps and the lower
bound. Relative errors are measured against the largest magnitude of the
quantity; B is compared where the background is seen in at least 1e-4 of an
image (elsewhere (SX - XC)/(K - C) is ill-conditioned in any arithmetic).
"""

import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import reference as ref  # noqa: E402
from conftest import as_ref, random_problem, ref_args  # noqa: E402
from emface.engine import params_from  # noqa: E402
from emface.engine.kernels import coverage  # noqa: E402
from emface.executor import EngineConfig, LocalExecutor  # noqa: E402
from emface.sources import ArraySource  # noqa: E402

SHAPES = [(5, 7, 9, 3, 4), (4, 6, 11, 6, 5), (3, 9, 5, 4, 5), (3, 5, 5, 5, 5), (6, 8, 7, 1, 1), (8, 13, 17, 5, 7)]
MODELS = [(1, 1), (3, 1), (1, 3), (2, 2)]  # (faces C, channels Ch)
COLS = ["log p(X, c, d)", "soft E-step q", "hard E-step (equal)", "soft M-step", "hard M-step", "lower bound"]


def rel(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def m_step_error(new, q, X, theta, h, w):
    F, B, s, A = ref.m_step(X, q, h, w, previous_B=as_ref(B=theta.background), previous_F=as_ref(F=theta.faces))
    seen = (len(X) - coverage(q.sum(axis=(0, 1)), (h, w))) > 1e-4
    Bn = as_ref(B=new.background)
    return max(rel(as_ref(F=new.faces), F), rel(Bn[seen], B[seen]), rel(new.prior, A), rel(new.noise_std, s))


def main():
    routes = [("numba", "fft"), ("numba", "direct"), ("numpy", "fft"), ("numpy", "direct")]
    if importlib.util.find_spec("torch") is not None:
        routes.append(("torch", "fft"))
    worst = {}
    for seed in range(5):
        for shape in SHAPES:
            for model in MODELS:
                K, H, W, h, w = shape
                rng = np.random.default_rng(1000 * seed + sum(shape) + 10 * model[0] + model[1])
                th, X, _, _ = random_problem(rng, K, H, W, h, w, n_faces=model[0], n_channels=model[1])
                args = ref_args(th)
                lj_ref = ref.log_joint(X, *args)
                q_ref = ref.posterior(X, *args)
                labels_ref, pos_ref = ref.hard_assignments(X, *args)
                q_hard = ref.one_hot(labels_ref, pos_ref, *th.prior.shape)
                fin = np.isfinite(lj_ref)
                for backend, route in routes:
                    ex = LocalExecutor(ArraySource(X, (h, w), standardize=False, chunk_size=2),
                                       EngineConfig(backend=backend, route=route))
                    d = worst.setdefault(f"{backend}/{route}", {})

                    def keep(name, value, d=d):
                        d[name] = max(d.get(name, 0.0), value)

                    _, lj = ex.collect(th, output="log_joint")
                    keep(COLS[0], rel(lj[fin], lj_ref[fin]))
                    st, q = ex.collect(th, output="q")
                    keep(COLS[1], float(np.abs(q - q_ref).max()))
                    keep(COLS[5], rel(st.loglik, ref.lower_bound(X, *args, q_ref)))
                    new, _ = params_from(st, th, noise_floor=1e-300)
                    keep(COLS[3], m_step_error(new, q_ref, X, th, h, w))
                    hs = ex.pass_stats(th, hard=True)
                    same = np.array_equal(hs.positions, pos_ref) and np.array_equal(hs.labels, labels_ref)
                    d[COLS[2]] = d.get(COLS[2], True) and bool(same)
                    new, _ = params_from(hs, th, noise_floor=1e-300)
                    keep(COLS[4], m_step_error(new, q_hard, X, th, h, w))
    print(f"{5 * len(SHAPES) * len(MODELS)} random problems (faces x channels in {MODELS})")
    print("| backend/route | " + " | ".join(COLS) + " |")
    print("|" + "---|" * (len(COLS) + 1))
    for key, d in worst.items():
        print(f"| {key} | " + " | ".join(str(d[c]) if isinstance(d[c], bool) else f"{d[c]:.1e}" for c in COLS) + " |")


if __name__ == "__main__":
    main()
