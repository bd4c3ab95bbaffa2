"""The yardstick: EM written the way the public course solutions are.

Vectorised with `scipy.signal.fftconvolve` over the whole (H, W, K) stack; all
of q is kept in memory; the log-probabilities are recomputed for the bound.
Written from the model (MODEL.md), not copied from any solution. Used only by
`benchmarks/speed.py` to time one iteration against emface.
"""

import numpy as np
from scipy.signal import fftconvolve


def calculate_log_probability(X, F, B, s):
    """log p(X_k | d, θ), shape (H-h+1, W-w+1, K)."""
    H, W, K = X.shape
    h, w = F.shape
    ones = np.ones((h, w, 1))
    resid_b = (X - B[..., None]) ** 2
    total_b = resid_b.sum(axis=(0, 1))  # (K,)
    win_b = fftconvolve(resid_b, ones, mode="valid", axes=(0, 1))
    win_x2 = fftconvolve(X ** 2, ones, mode="valid", axes=(0, 1))
    xf = fftconvolve(X, F[::-1, ::-1, None], mode="valid", axes=(0, 1))
    win_f = win_x2 - 2 * xf + (F ** 2).sum()
    sse = total_b[None, None, :] - win_b + win_f
    return -0.5 * H * W * np.log(2 * np.pi * s ** 2) - sse / (2 * s ** 2)


def run_e_step(X, F, B, s, A, use_MAP=False):
    ll = calculate_log_probability(X, F, B, s)
    with np.errstate(divide="ignore"):
        ll = ll + np.log(A)[..., None]
    if use_MAP:
        P, Q, K = ll.shape
        flat = ll.reshape(P * Q, K).argmax(axis=0)
        return np.stack([flat // Q, flat % Q])
    ll -= ll.max(axis=(0, 1), keepdims=True)
    q = np.exp(ll)
    q /= q.sum(axis=(0, 1), keepdims=True)
    return q


def _one_hot(d, P, Q):
    K = d.shape[1]
    q = np.zeros((P, Q, K))
    q[d[0], d[1], np.arange(K)] = 1.0
    return q


def run_m_step(X, q, h, w, use_MAP=False):
    H, W, K = X.shape
    P, Q = H - h + 1, W - w + 1
    if use_MAP:
        q = _one_hot(q, P, Q)
    A = q.mean(axis=2)
    F = fftconvolve(X, q[::-1, ::-1, :], mode="valid", axes=(0, 1)).sum(axis=2) / K
    cov = fftconvolve(q, np.ones((h, w, 1)), mode="full", axes=(0, 1))
    free = 1.0 - cov
    den = free.sum(axis=2)
    B = np.where(den > 1e-12, (X * free).sum(axis=2) / np.where(den > 1e-12, den, 1.0), X.mean(axis=2))
    # s^2: expected squared residual under q with the new F and B
    ones = np.ones((h, w, 1))
    resid_b = (X - B[..., None]) ** 2
    win_b = fftconvolve(resid_b, ones, mode="valid", axes=(0, 1))
    win_x2 = fftconvolve(X ** 2, ones, mode="valid", axes=(0, 1))
    xf = fftconvolve(X, F[::-1, ::-1, None], mode="valid", axes=(0, 1))
    sse = resid_b.sum(axis=(0, 1))[None, None] - win_b + win_x2 - 2 * xf + (F ** 2).sum()
    s = np.sqrt((q * sse).sum() / (K * H * W))
    return F, B, s, A


def calculate_lower_bound(X, F, B, s, A, q, use_MAP=False):
    ll = calculate_log_probability(X, F, B, s)
    P, Q, K = ll.shape
    with np.errstate(divide="ignore"):
        logA = np.log(A)
    if use_MAP:
        return float((ll[q[0], q[1], np.arange(K)] + logA[q[0], q[1]]).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0).sum()
        return float(np.where(q > 0, q * (ll + logA[..., None]), 0.0).sum() - ent)


def iteration(X, F, B, s, A, h, w, use_MAP=False):
    """One EM iteration as the course solutions run it: E-step, M-step, bound."""
    q = run_e_step(X, F, B, s, A, use_MAP)
    F, B, s, A = run_m_step(X, q, h, w, use_MAP)
    L = calculate_lower_bound(X, F, B, s, A, q, use_MAP)
    return F, B, s, A, L
