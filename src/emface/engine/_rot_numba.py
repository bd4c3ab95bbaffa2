"""Fused CPU loops of the rotation E-step (`rotstep`): the same formulas, one pass per image, threads over images.

Each is the numpy expression named in its docstring, held to it by
tests/test_rotations_engine.py to 1e-12.
"""

from __future__ import annotations

import numba


@numba.njit(parallel=True, cache=True, fastmath=False)
def loss_and_logits(loss, face_sq, xbt, logA, log_rho, lg):
    """In place: ``loss = face_sq[k, c, j] - 2·corr + xbt[k]`` (loss holds corr on entry), and
    ``lg = logA[c] + log_rho[k, j] - loss``. loss, lg (n, C, m, PQ); face_sq (n, C, m); xbt (n, PQ);
    logA (C, PQ); log_rho (n, m)."""
    n, C, m, PQ = loss.shape
    for k in numba.prange(n):
        for c in range(C):
            for j in range(m):
                f = face_sq[k, c, j]
                lr = log_rho[k, j]
                for d in range(PQ):
                    v = f - 2.0 * loss[k, c, j, d] + xbt[k, d]
                    loss[k, c, j, d] = v
                    lg[k, c, j, d] = (logA[c, d] + lr) - v


@numba.njit(parallel=True, cache=True, fastmath=False)
def normalise(e, weight, loss, el, qcd):
    """In place ``q = e · weight[k, j]`` (weight: 1/Z where the angle is allowed, else 0), with
    ``el[k] = Σ q·loss`` and ``qcd[k, c, d] = Σ_j q``."""
    n, C, m, PQ = e.shape
    for k in numba.prange(n):
        acc = 0.0
        for c in range(C):
            for d in range(PQ):
                qcd[k, c, d] = 0.0
            for j in range(m):
                w = weight[k, j]
                for d in range(PQ):
                    q = e[k, c, j, d] * w
                    e[k, c, j, d] = q
                    if q > 0.0:
                        acc += q * loss[k, c, j, d]
                    qcd[k, c, d] += q
        el[k] = acc
