"""A brute-force implementation of the model, written from MODEL.md for the tests.

Loops over faces and positions and builds every mean image μ_(c,d)
explicitly. Slow and obvious on purpose: it shares no code with emface.

Layouts are the user's, images first and channels last: X (K, H, W) or
(K, H, W, Ch); faces (h, w) for one grey face, (C, h, w) grey, (C, h, w, Ch)
in colour; background (H, W) or (H, W, Ch); s a number or (Ch,); prior
(C, P, Q) (a (P, Q) prior means one face).
"""

import math

import numpy as np


def _canon(X, F, B, s, A):
    """Everything with a channel axis: X (K,H,W,Ch), F (C,h,w,Ch), B (H,W,Ch), s (Ch,), A (C,P,Q)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 3:
        X = X[..., None]
    Ch = X.shape[-1]
    F = np.asarray(F, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if B.ndim == 2:
        B = B[..., None]
    if F.ndim == 2:  # one grey face
        F = F[None, ..., None]
    elif F.ndim == 3:  # grey faces (C, h, w)
        F = F[..., None]
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), (Ch,))
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 2:
        A = A[None]
    return X, F, B, s, A


def mean_image(F, B, i, j):
    """μ: the background (H, W, Ch) with the face (h, w, Ch) pasted at (i, j)."""
    mu = np.array(B, dtype=np.float64, copy=True)
    h, w = F.shape[:2]
    mu[i:i + h, j:j + w] = F
    return mu


def log_p_given_cd(X, F, B, s, A):
    """log p(X_k | c, d, θ) for every image, face and position: shape (K, C, P, Q)."""
    X, F, B, s, A = _canon(X, F, B, s, A)
    K, H, W, Ch = X.shape
    C, h, w, _ = F.shape
    P, Q = H - h + 1, W - w + 1
    out = np.empty((K, C, P, Q))
    const = sum(-0.5 * H * W * math.log(2 * math.pi * s[ch] ** 2) for ch in range(Ch))
    for c in range(C):
        for i in range(P):
            for j in range(Q):
                mu = mean_image(F[c], B, i, j)
                for k in range(K):
                    r = X[k] - mu
                    total = const
                    for ch in range(Ch):
                        total -= (r[..., ch] ** 2).sum() / (2 * s[ch] ** 2)
                    out[k, c, i, j] = total
    return out


def log_joint(X, F, B, s, A):
    _, _, _, _, A4 = _canon(X, F, B, s, A)
    with np.errstate(divide="ignore"):
        return log_p_given_cd(X, F, B, s, A) + np.log(A4)[None]


def posterior(X, F, B, s, A):
    lj = log_joint(X, F, B, s, A)
    q = np.zeros_like(lj)
    for k in range(lj.shape[0]):
        m = lj[k].max()
        e = np.exp(lj[k] - m)
        q[k] = e / e.sum()
    return q


def hard_assignments(X, F, B, s, A):
    """(labels (K,), positions (K, 2)) of each image's most probable (face, position)."""
    lj = log_joint(X, F, B, s, A)
    K, C, P, Q = lj.shape
    flat = lj.reshape(K, -1).argmax(axis=1)
    rem = flat % (P * Q)
    return flat // (P * Q), np.stack([rem // Q, rem % Q], axis=1)


def one_hot(labels, positions, C, P, Q):
    K = len(positions)
    q = np.zeros((K, C, P, Q))
    for k, (i, j) in enumerate(positions):
        q[k, labels[k], i, j] = 1.0
    return q


def log_likelihood(X, F, B, s, A):
    """Σ_k log p(X_k | θ)."""
    lj = log_joint(X, F, B, s, A)
    total = 0.0
    for k in range(lj.shape[0]):
        m = lj[k].max()
        total += m + math.log(np.exp(lj[k] - m).sum())
    return total


def lower_bound(X, F, B, s, A, q):
    """E_q[log p(X, c, d | θ)] + H(q), with 0·log 0 = 0."""
    lj = log_joint(X, F, B, s, A)
    total = 0.0
    for k in range(lj.shape[0]):
        for idx in np.ndindex(q.shape[1:]):
            p = q[k][idx]
            if p > 0:
                total += p * lj[k][idx] - p * math.log(p)
    return total


def m_step(X, q, h, w, alpha=0.0, previous_B=None, previous_F=None, per_channel=False):
    """F, B, s, A maximising E_q[log p(X, c, d | θ)] (+ α Σ log A), by explicit loops.

    q is (K, C, P, Q). A face with no weight keeps `previous_F`; a background
    pixel with (almost) no evidence -- covered by a face in all images up to
    1e-9 of an image -- keeps `previous_B` (or the images' mean).

    Returns F (C, h, w, Ch), B (H, W, Ch), s (Ch,), A (C, P, Q).
    """
    K, C, P, Q = q.shape
    F, B, s, A, _ = m_step_flat(X, np.asarray(q).reshape(K, -1), C, P, Q, h, w, alpha=alpha, previous_B=previous_B,
                                previous_F=previous_F, per_channel=per_channel)
    return F, B, s, A


# ----------------------------------------------------------------------------- the "no face" class and the misfit
#
# The latent variable z of an image runs over every (face, position), flattened in (C, P, Q) order,
# and then -- with a weight π_∅ = pi0 -- over "no face", whose mean image is the background B itself.
# Every function below builds each mean image explicitly and loops over z.

def _mean_images(F, B, P, Q, with_empty):
    """Every mean image μ_z, in the flat order of z (faces' (c, i, j), then "no face")."""
    C = F.shape[0]
    out = [mean_image(F[c], B, i, j) for c in range(C) for i in range(P) for j in range(Q)]
    if with_empty:
        out.append(np.array(B, dtype=np.float64, copy=True))
    return out


def log_joint_flat(X, F, B, s, A, pi0=None):
    """log p(X_k, z | θ), shape (K, C·P·Q [+ 1]): the last column is "no face" when pi0 is given."""
    X, F, B, s, A = _canon(X, F, B, s, A)
    K, H, W, Ch = X.shape
    C, P, Q = A.shape
    prior = list(A.reshape(-1)) + ([pi0] if pi0 is not None else [])
    mus = _mean_images(F, B, P, Q, pi0 is not None)
    const = sum(-0.5 * H * W * math.log(2 * math.pi * s[ch] ** 2) for ch in range(Ch))
    out = np.empty((K, len(mus)))
    for z, mu in enumerate(mus):
        la = math.log(prior[z]) if prior[z] > 0 else -math.inf
        for k in range(K):
            r = X[k] - mu
            out[k, z] = la + const - sum((r[..., ch] ** 2).sum() / (2 * s[ch] ** 2) for ch in range(Ch))
    return out


def posterior_flat(X, F, B, s, A, pi0=None):
    lj = log_joint_flat(X, F, B, s, A, pi0)
    q = np.zeros_like(lj)
    for k in range(len(lj)):
        e = np.exp(lj[k] - lj[k].max())
        q[k] = e / e.sum()
    return q


def hard_flat(X, F, B, s, A, pi0=None):
    """One-hot q (K, C·P·Q [+ 1]) at each image's most probable z."""
    lj = log_joint_flat(X, F, B, s, A, pi0)
    q = np.zeros_like(lj)
    q[np.arange(len(lj)), lj.argmax(axis=1)] = 1.0
    return q


def log_likelihood_flat(X, F, B, s, A, pi0=None):
    lj = log_joint_flat(X, F, B, s, A, pi0)
    return sum(lj[k].max() + math.log(np.exp(lj[k] - lj[k].max()).sum()) for k in range(len(lj)))


def lower_bound_flat(X, F, B, s, A, q, pi0=None):
    """E_q[log p(X, z | θ)] + H(q) for a flat q, 0·log 0 = 0."""
    lj = log_joint_flat(X, F, B, s, A, pi0)
    total = 0.0
    for k in range(len(lj)):
        for z in range(lj.shape[1]):
            p = q[k, z]
            if p > 0:
                total += p * lj[k, z] - p * math.log(p)
    return total


def expected_chi2(X, F, B, s, A, q, with_empty=False):
    """E_q[Σ_ch ||X_k,ch - μ_z,ch||² / s_ch²] of each image, (K,), for a flat q."""
    X, F, B, s, A = _canon(X, F, B, s, A)
    K = X.shape[0]
    C, P, Q = A.shape
    out = np.zeros(K)
    for z, mu in enumerate(_mean_images(F, B, P, Q, with_empty)):
        for k in range(K):
            r = X[k] - mu
            out[k] += q[k, z] * sum((r[..., ch] ** 2).sum() / s[ch] ** 2 for ch in range(X.shape[-1]))
    return out


def m_step_flat(X, q, C, P, Q, h, w, alpha=0.0, previous_B=None, previous_F=None, per_channel=False,
                with_empty=False):
    """F, B, s, A and π_∅ maximising E_q[log p(X, z | θ)] (+ α Σ log of every weight), by loops over z.

    A and π_∅ share one simplex: each is its count plus α over K + α·(C·P·Q + 1).
    A "no face" image shows the background on every pixel.

    Returns F (C, h, w, Ch), B (H, W, Ch), s (Ch,), A (C, P, Q), pi0 (None without "no face").
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 3:
        X = X[..., None]
    K, H, W, Ch = X.shape
    M = C * P * Q
    counts = q.sum(axis=0)
    den = K + alpha * (M + (1 if with_empty else 0))
    A = ((counts[:M] + alpha) / den).reshape(C, P, Q)
    pi0 = (counts[M] + alpha) / den if with_empty else None
    F = np.zeros((C, h, w, Ch))
    num_B = np.zeros((H, W, Ch))
    den_B = np.zeros((H, W))
    for z in range(q.shape[1]):
        for k in range(K):
            p = q[k, z]
            outside = np.ones((H, W), dtype=bool)
            if z < M:
                c, rem = divmod(z, P * Q)
                i, j = divmod(rem, Q)
                F[c] += p * X[k, i:i + h, j:j + w]
                outside[i:i + h, j:j + w] = False
            num_B += p * np.where(outside[..., None], X[k], 0.0)
            den_B += p * outside
    Nc = counts[:M].reshape(C, -1).sum(axis=1)
    for c in range(C):
        if Nc[c] > 1e-12 * K:
            F[c] /= Nc[c]
        else:
            F[c] = previous_F[c] if previous_F is not None else 0.0
    ok = den_B > 1e-9 * K
    fallback = X.mean(axis=0) if previous_B is None else np.asarray(previous_B, dtype=np.float64).reshape(H, W, Ch)
    B = np.where(ok[..., None], num_B / np.where(ok, den_B, 1.0)[..., None], fallback)
    sse = np.zeros(Ch)
    for z, mu in enumerate(_mean_images(F, B, P, Q, with_empty)):
        for k in range(K):
            if q[k, z] > 0:
                r = X[k] - mu
                sse += q[k, z] * (r * r).sum(axis=(0, 1))
    s = np.sqrt(sse / (K * H * W)) if per_channel else np.full(Ch, math.sqrt(sse.sum() / (K * H * W * Ch)))
    return F, B, s, A, pi0


#: the eight neighbouring corners (di, dj) of `Stats.near`, in its order: rows then columns, centre left out
NEAR = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


def neighbour_gains(X, F, B, s, A, pi0=None):
    """``log p(X_k | c*, d* + δ) - log p(X_k | c*, d*)`` for each δ of `NEAR`, (K, 8), by explicit mean images.

    (c*, d*) is each image's most probable (face, corner) under the prior; the
    gains leave the prior out. -inf off the grid, and in every column of an
    image whose most probable z is "no face".
    """
    X, F, B, s, A = _canon(X, F, B, s, A)
    K, H, W, Ch = X.shape
    C, P, Q = A.shape
    best = log_joint_flat(X, F, B, s, A, pi0).argmax(axis=1)
    out = np.full((K, len(NEAR)), -math.inf)

    def loglik(k, c, i, j):
        r = X[k] - mean_image(F[c], B, i, j)
        return -sum((r[..., ch] ** 2).sum() / (2 * s[ch] ** 2) for ch in range(Ch))

    for k in range(K):
        if best[k] == C * P * Q:
            continue
        c, i, j = best[k] // (P * Q), (best[k] % (P * Q)) // Q, best[k] % Q
        for t, (di, dj) in enumerate(NEAR):
            if 0 <= i + di < P and 0 <= j + dj < Q:
                out[k, t] = loglik(k, c, i + di, j + dj) - loglik(k, c, i, j)
    return out
