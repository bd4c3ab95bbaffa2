"""A brute-force reference of brightness that changes from frame to frame (MODEL.md), for the tests.

``X_k = a_k·μ_(c,d) + b_k + noise``: every mean image is built explicitly and
scaled and shifted, per channel group. Shares no code with emface. Layouts
are those of `tests/reference.py` (images first, channels last); gains and
offsets are (K, G) with G = 1 (one per image) or Ch (one per image and channel).
"""

import math

import numpy as np

from reference import _canon, mean_image


def _per_channel(v, Ch):
    v = np.asarray(v, dtype=np.float64).reshape(len(v), -1)
    return np.repeat(v, Ch, axis=1) if v.shape[1] == 1 else v


def log_p_given_cd(X, F, B, s, A, gains, offsets):
    """log p(X_k | c, d, a_k, b_k, θ) for every image, face and position: (K, C, P, Q)."""
    X, F, B, s, A = _canon(X, F, B, s, A)
    K, H, W, Ch = X.shape
    C, h, w, _ = F.shape
    P, Q = H - h + 1, W - w + 1
    a, b = _per_channel(gains, Ch), _per_channel(offsets, Ch)
    out = np.empty((K, C, P, Q))
    const = sum(-0.5 * H * W * math.log(2 * math.pi * s[ch] ** 2) for ch in range(Ch))
    for c in range(C):
        for i in range(P):
            for j in range(Q):
                mu = mean_image(F[c], B, i, j)
                for k in range(K):
                    total = const
                    for ch in range(Ch):
                        r = X[k, ..., ch] - a[k, ch] * mu[..., ch] - b[k, ch]
                        total -= (r ** 2).sum() / (2 * s[ch] ** 2)
                    out[k, c, i, j] = total
    return out


def log_joint(X, F, B, s, A, gains, offsets):
    A4 = _canon(X, F, B, s, A)[4]
    with np.errstate(divide="ignore"):
        return log_p_given_cd(X, F, B, s, A, gains, offsets) + np.log(A4)[None]


def posterior(X, F, B, s, A, gains, offsets):
    lj = log_joint(X, F, B, s, A, gains, offsets)
    q = np.zeros_like(lj)
    for k in range(len(lj)):
        e = np.exp(lj[k] - lj[k].max())
        q[k] = e / e.sum()
    return q


def log_likelihood(X, F, B, s, A, gains, offsets):
    """Σ_k log p(X_k | a_k, b_k, θ)."""
    lj = log_joint(X, F, B, s, A, gains, offsets)
    total = 0.0
    for k in range(len(lj)):
        m = lj[k].max()
        total += m + math.log(np.exp(lj[k] - m).sum())
    return total


def update_brightness(X, F, B, s, A, q, n_groups):
    """argmin over (a_k, b_k) of ``E_q Σ_ch ||X_k - a μ - b||² / (2 s_ch²)``, by weighted least squares
    over every (position, pixel) row, one problem per image and group."""
    X, F, B, s, A = _canon(X, F, B, s, A)
    K, H, W, Ch = X.shape
    C, h, w, _ = F.shape
    P, Q = H - h + 1, W - w + 1
    groups = [list(range(Ch))] if n_groups == 1 else [[ch] for ch in range(Ch)]
    a = np.empty((K, n_groups))
    b = np.empty((K, n_groups))
    for k in range(K):
        for g, chs in enumerate(groups):
            rows, rhs = [], []
            for c in range(C):
                for i in range(P):
                    for j in range(Q):
                        mu = mean_image(F[c], B, i, j)
                        for ch in chs:
                            wgt = math.sqrt(q[k, c, i, j] / (2 * s[ch] ** 2))
                            rows.append(np.stack([wgt * mu[..., ch].ravel(), np.full(H * W, wgt)], axis=1))
                            rhs.append(wgt * X[k, ..., ch].ravel())
            sol = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
            a[k, g], b[k, g] = sol
    return a, b


def m_step(X, q, h, w, gains, offsets):
    """F, B, s (one shared s) maximising ``E_q log p(X, c, d | a, b, θ)`` for given (a_k, b_k):
    F_c and B pixel by pixel as weighted means, then s² from explicit residuals with the new F, B."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 3:
        X = X[..., None]
    K, H, W, Ch = X.shape
    C, P, Q = q.shape[1:]
    a, b = _per_channel(gains, Ch), _per_channel(offsets, Ch)
    numF = np.zeros((C, h, w, Ch))
    denF = np.zeros((C, Ch))
    numB = np.zeros((H, W, Ch))
    denB = np.zeros((H, W, Ch))
    for k in range(K):
        y = X[k] - b[k]
        cov = np.zeros((H, W))
        for c in range(C):
            for i in range(P):
                for j in range(Q):
                    numF[c] += q[k, c, i, j] * a[k] * y[i:i + h, j:j + w]
                    denF[c] += q[k, c, i, j] * a[k] ** 2
                    cov[i:i + h, j:j + w] += q[k, c, i, j]
        numB += a[k] * y * (1 - cov)[..., None]
        denB += (a[k] ** 2)[None, None, :] * (1 - cov)[..., None]
    F = numF / denF[:, None, None, :]
    Bn = numB / denB
    sse = 0.0
    for k in range(K):
        for c in range(C):
            for i in range(P):
                for j in range(Q):
                    mu = mean_image(F[c], Bn, i, j)
                    sse += q[k, c, i, j] * ((X[k] - a[k] * mu - b[k]) ** 2).sum()
    return F, Bn, math.sqrt(sse / (K * H * W * Ch))


def log_p_empty(X, B, s, gains, offsets):
    """log p(X_k | "no face", a_k, b_k, θ): the mean image is a_k·B + b_k. Shape (K,)."""
    X = np.asarray(X, dtype=np.float64)
    X = X[..., None] if X.ndim == 3 else X
    K, H, W, Ch = X.shape
    B = np.asarray(B, dtype=np.float64)
    B = B[..., None] if B.ndim == 2 else B
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), (Ch,))
    a, b = _per_channel(gains, Ch), _per_channel(offsets, Ch)
    out = np.empty(K)
    for k in range(K):
        total = sum(-0.5 * H * W * math.log(2 * math.pi * s[ch] ** 2) for ch in range(Ch))
        for ch in range(Ch):
            total -= ((X[k, ..., ch] - a[k, ch] * B[..., ch] - b[k, ch]) ** 2).sum() / (2 * s[ch] ** 2)
        out[k] = total
    return out


def log_likelihood_with_empty(X, F, B, s, A, pi0, gains, offsets):
    """Σ_k log [ Σ_(c,d) A(c,d) p(X_k | c, d, a, b) + π_∅ p(X_k | ∅, a, b) ]."""
    lj = log_joint(X, F, B, s, A, gains, offsets)
    le = log_p_empty(X, B, s, gains, offsets) + math.log(pi0)
    total = 0.0
    for k in range(len(lj)):
        v = np.append(lj[k].ravel(), le[k])
        m = v.max()
        total += m + math.log(np.exp(v - m).sum())
    return total


def map_gain(X, F, B, s, label, pos):
    """For one image at its (label, position) (label -1: "no face"): how much the best (a, b) (one gain
    and offset for all channels) lowers ``Σ_ch ||X - a μ - b||² / (2 s_ch²)`` from a = 1, b = 0, by
    least squares on the explicit mean image."""
    X = np.asarray(X, dtype=np.float64)
    X = X[..., None] if X.ndim == 2 else X
    H, W, Ch = X.shape
    mu = np.array(B, dtype=np.float64, copy=True) if label < 0 else mean_image(F[label], B, *pos)
    wgt = np.repeat(1.0 / np.sqrt(2.0 * np.broadcast_to(s, (Ch,)) ** 2), H * W)
    M = np.stack([mu.transpose(2, 0, 1).ravel(), np.ones(H * W * Ch)], axis=1) * wgt[:, None]
    y = X.transpose(2, 0, 1).ravel() * wgt
    sol = np.linalg.lstsq(M, y, rcond=None)[0]
    r0 = y - M @ np.array([1.0, 0.0])
    r1 = y - M @ sol
    return float(r0 @ r0 - r1 @ r1)
