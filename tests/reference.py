"""A brute-force implementation of the model, written from MODEL.md for the tests.

Loops over faces and positions and builds every mean image μ_(c,d)
explicitly. Slow and obvious on purpose: it shares no code with emface.

Layouts are the user's, images first and channels last: X (K, H, W) or
(K, H, W, Ch); faces (h, w) for one grey face, (C, h, w) grey, (C, h, w, Ch)
in colour; background (H, W) or (H, W, Ch); s a number or (Ch,); prior
(C, P, Q) (a (P, Q) prior means one face).

Brightness that changes from frame to frame (MODEL.md): the likelihoods, the
posteriors and the M-step take optional per-image ``gains`` and ``offsets``,
``X_k = a_k·μ + b_k + noise``, shaped (K,) or (K, G) with G = 1 (one per
image) or Ch (one per image and channel); left out, a = 1 and b = 0 (the
note's model). `update_brightness` and `map_gain` solve for them.
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


def _brightness(gains, offsets, K, Ch):
    """Per image and channel (a, b), (K, Ch) each: a = 1 and b = 0 where not given."""
    def per_channel(v, fill):
        if v is None:
            return np.full((K, Ch), fill)
        v = np.asarray(v, dtype=np.float64).reshape(K, -1)
        return np.repeat(v, Ch, axis=1) if v.shape[1] == 1 else v

    return per_channel(gains, 1.0), per_channel(offsets, 0.0)


def _log_gauss(x, mu, s, a, b, const):
    """log N(x; a·μ + b, s²) of one image (H, W, Ch), with a, b, s per channel and its constant."""
    r = x - a * mu - b
    total = const
    for ch in range(x.shape[-1]):
        total -= (r[..., ch] ** 2).sum() / (2 * s[ch] ** 2)
    return total


def mean_image(F, B, i, j):
    """μ: the background (H, W, Ch) with the face (h, w, Ch) pasted at (i, j)."""
    mu = np.array(B, dtype=np.float64, copy=True)
    h, w = F.shape[:2]
    mu[i:i + h, j:j + w] = F
    return mu


def log_p_given_cd(X, F, B, s, A, gains=None, offsets=None):
    """log p(X_k | c, d, a_k, b_k, θ) for every image, face and position: shape (K, C, P, Q)."""
    X, F, B, s, A = _canon(X, F, B, s, A)
    K, H, W, Ch = X.shape
    C, h, w, _ = F.shape
    P, Q = H - h + 1, W - w + 1
    a, b = _brightness(gains, offsets, K, Ch)
    out = np.empty((K, C, P, Q))
    const = sum(-0.5 * H * W * math.log(2 * math.pi * s[ch] ** 2) for ch in range(Ch))
    for c in range(C):
        for i in range(P):
            for j in range(Q):
                mu = mean_image(F[c], B, i, j)
                for k in range(K):
                    out[k, c, i, j] = _log_gauss(X[k], mu, s, a[k], b[k], const)
    return out


def log_joint(X, F, B, s, A, gains=None, offsets=None):
    _, _, _, _, A4 = _canon(X, F, B, s, A)
    with np.errstate(divide="ignore"):
        return log_p_given_cd(X, F, B, s, A, gains, offsets) + np.log(A4)[None]


def posterior(X, F, B, s, A, gains=None, offsets=None):
    lj = log_joint(X, F, B, s, A, gains, offsets)
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


def log_likelihood(X, F, B, s, A, gains=None, offsets=None):
    """Σ_k log p(X_k | a_k, b_k, θ)."""
    lj = log_joint(X, F, B, s, A, gains, offsets)
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


def m_step(X, q, h, w, alpha=0.0, previous_B=None, previous_F=None, per_channel=False, *, gains=None,
           offsets=None):
    """F, B, s, A maximising E_q[log p(X, c, d | a, b, θ)] (+ α Σ log A), by explicit loops.

    q is (K, C, P, Q). A face with no weight keeps `previous_F`; a background
    pixel with (almost) no evidence -- covered by a face in all images up to
    1e-9 of an image -- keeps `previous_B` (or the images' mean). Given
    (a_k, b_k), F and B are the weighted means of ``(X_k - b_k)/a_k`` with
    weights ``q·a_k²``; s² the mean of ``(X_k - a_k μ - b_k)²``.

    Returns F (C, h, w, Ch), B (H, W, Ch), s (Ch,), A (C, P, Q).
    """
    K, C, P, Q = q.shape
    F, B, s, A, _ = m_step_flat(X, np.asarray(q).reshape(K, -1), C, P, Q, h, w, alpha=alpha, previous_B=previous_B,
                                previous_F=previous_F, per_channel=per_channel, gains=gains, offsets=offsets)
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


def log_joint_flat(X, F, B, s, A, pi0=None, gains=None, offsets=None):
    """log p(X_k, z | a_k, b_k, θ), shape (K, C·P·Q [+ 1]): the last column is "no face" (mean image
    a_k·B + b_k) when pi0 is given."""
    X, F, B, s, A = _canon(X, F, B, s, A)
    K, H, W, Ch = X.shape
    C, P, Q = A.shape
    a, b = _brightness(gains, offsets, K, Ch)
    prior = list(A.reshape(-1)) + ([pi0] if pi0 is not None else [])
    mus = _mean_images(F, B, P, Q, pi0 is not None)
    const = sum(-0.5 * H * W * math.log(2 * math.pi * s[ch] ** 2) for ch in range(Ch))
    out = np.empty((K, len(mus)))
    for z, mu in enumerate(mus):
        la = math.log(prior[z]) if prior[z] > 0 else -math.inf
        for k in range(K):
            out[k, z] = la + _log_gauss(X[k], mu, s, a[k], b[k], const)
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


def log_likelihood_flat(X, F, B, s, A, pi0=None, gains=None, offsets=None):
    lj = log_joint_flat(X, F, B, s, A, pi0, gains, offsets)
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
                with_empty=False, gains=None, offsets=None):
    """F, B, s, A and π_∅ maximising E_q[log p(X, z | a, b, θ)] (+ α Σ log of every weight), by loops over z.

    A and π_∅ share one simplex: each is its count plus α over K + α·(C·P·Q + 1).
    A "no face" image shows the background on every pixel. With (a_k, b_k),
    F and B weigh ``a_k (X_k - b_k)`` by q and divide by the sums of ``q·a_k²``.

    Returns F (C, h, w, Ch), B (H, W, Ch), s (Ch,), A (C, P, Q), pi0 (None without "no face").
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 3:
        X = X[..., None]
    K, H, W, Ch = X.shape
    a, b = _brightness(gains, offsets, K, Ch)
    M = C * P * Q
    counts = q.sum(axis=0)
    den = K + alpha * (M + (1 if with_empty else 0))
    A = ((counts[:M] + alpha) / den).reshape(C, P, Q)
    pi0 = (counts[M] + alpha) / den if with_empty else None
    F = np.zeros((C, h, w, Ch))
    den_F = np.zeros((C, Ch))
    num_B = np.zeros((H, W, Ch))
    den_B = np.zeros((H, W, Ch))
    for z in range(q.shape[1]):
        for k in range(K):
            p = q[k, z]
            y = a[k] * (X[k] - b[k])
            outside = np.ones((H, W), dtype=bool)
            if z < M:
                c, rem = divmod(z, P * Q)
                i, j = divmod(rem, Q)
                F[c] += p * y[i:i + h, j:j + w]
                den_F[c] += p * a[k] ** 2
                outside[i:i + h, j:j + w] = False
            num_B += p * np.where(outside[..., None], y, 0.0)
            den_B += p * outside[..., None] * a[k] ** 2
    for c in range(C):
        for ch in range(Ch):
            if den_F[c, ch] > 1e-12 * K:
                F[c, ..., ch] /= den_F[c, ch]
            else:
                F[c, ..., ch] = 0.0 if previous_F is None else np.reshape(previous_F, F.shape)[c, ..., ch]
    ok = den_B > 1e-9 * K
    fallback = X.mean(axis=0) if previous_B is None else np.asarray(previous_B, dtype=np.float64).reshape(H, W, Ch)
    B = np.where(ok, num_B / np.where(ok, den_B, 1.0), fallback)
    sse = np.zeros(Ch)
    for z, mu in enumerate(_mean_images(F, B, P, Q, with_empty)):
        for k in range(K):
            if q[k, z] > 0:
                r = X[k] - a[k] * mu - b[k]
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


# ----------------------------------------------------------------------------- brightness: solving for (a, b)
#
# ``X_k = a_k·μ + b_k + noise`` (MODEL.md "Brightness that changes from frame to frame"); the likelihoods and
# the M-step above take the gains and offsets; these two solve for them by explicit least squares.

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
