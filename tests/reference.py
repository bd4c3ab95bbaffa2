"""A brute-force implementation of the model, written from MODEL.md for the tests.

Loops over positions and builds every mean image μ_d explicitly. Slow and
obvious on purpose: it shares no code with emface.
"""

import math

import numpy as np


def mean_image(F, B, i, j):
    mu = np.array(B, dtype=np.float64, copy=True)
    h, w = F.shape
    mu[i:i + h, j:j + w] = F
    return mu


def log_p_given_d(X, F, B, s):
    """log p(X_k | d, θ) for every image and position: shape (K, P, Q)."""
    K, H, W = X.shape
    h, w = F.shape
    P, Q = H - h + 1, W - w + 1
    out = np.empty((K, P, Q))
    for i in range(P):
        for j in range(Q):
            mu = mean_image(F, B, i, j)
            for k in range(K):
                r = X[k] - mu
                out[k, i, j] = -0.5 * H * W * math.log(2 * math.pi * s * s) - (r * r).sum() / (2 * s * s)
    return out


def log_joint(X, F, B, s, A):
    with np.errstate(divide="ignore"):
        return log_p_given_d(X, F, B, s) + np.log(A)[None]


def posterior(X, F, B, s, A):
    lj = log_joint(X, F, B, s, A)
    K = X.shape[0]
    q = np.zeros_like(lj)
    for k in range(K):
        m = lj[k].max()
        e = np.exp(lj[k] - m)
        q[k] = e / e.sum()
    return q


def hard_positions(X, F, B, s, A):
    lj = log_joint(X, F, B, s, A)
    K, P, Q = lj.shape
    flat = lj.reshape(K, -1).argmax(axis=1)
    return np.stack([flat // Q, flat % Q], axis=1)


def one_hot(positions, P, Q):
    K = len(positions)
    q = np.zeros((K, P, Q))
    for k, (i, j) in enumerate(positions):
        q[k, i, j] = 1.0
    return q


def log_likelihood(X, F, B, s, A):
    """Σ_k log p(X_k | θ)."""
    lj = log_joint(X, F, B, s, A)
    total = 0.0
    for k in range(X.shape[0]):
        m = lj[k].max()
        total += m + math.log(np.exp(lj[k] - m).sum())
    return total


def lower_bound(X, F, B, s, A, q):
    """E_q[log p(X, d | θ)] + H(q), with 0·log 0 = 0."""
    lj = log_joint(X, F, B, s, A)
    total = 0.0
    for k in range(X.shape[0]):
        for idx in np.ndindex(q.shape[1:]):
            p = q[k][idx]
            if p > 0:
                total += p * lj[k][idx] - p * math.log(p)
    return total


def m_step(X, q, h, w, alpha=0.0, previous_B=None):
    """F, B, s, A maximising E_q[log p(X, d | θ)] (+ α Σ log A), by explicit loops.

    A background pixel with (almost) no evidence -- covered by the face in all
    images up to 1e-9 of an image -- keeps `previous_B` (or the images' mean).
    """
    K, H, W = X.shape
    P, Q = H - h + 1, W - w + 1
    N = q.sum(axis=0)
    A = (N + alpha) / (K + alpha * P * Q)
    F = np.zeros((h, w))
    num_B = np.zeros((H, W))
    den_B = np.zeros((H, W))
    for k in range(K):
        for i in range(P):
            for j in range(Q):
                p = q[k, i, j]
                F += p * X[k, i:i + h, j:j + w]
                outside = np.ones((H, W), dtype=bool)
                outside[i:i + h, j:j + w] = False
                num_B += p * np.where(outside, X[k], 0.0)
                den_B += p * outside
    F /= K
    ok = den_B > 1e-9 * K
    fallback = X.mean(axis=0) if previous_B is None else previous_B
    B = np.where(ok, num_B / np.where(ok, den_B, 1.0), fallback)
    sse = 0.0
    for k in range(K):
        for i in range(P):
            for j in range(Q):
                p = q[k, i, j]
                if p > 0:
                    r = X[k] - mean_image(F, B, i, j)
                    sse += p * (r * r).sum()
    s = math.sqrt(sse / (K * H * W))
    return F, B, s, A
