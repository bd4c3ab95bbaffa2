"""A brute-force implementation of the model with in-plane rotations, from MODEL.md, for the tests.

Loops over faces, angles and positions and builds every mean image
μ_(c,r,d) explicitly: the face turned pixel by pixel with Keys cubic
convolution (a = -1/2, samples outside the window read 0) inside the disc D
inscribed in the window, the background elsewhere. Shares no code with emface.

Layouts are the user's, channels last: X (K, H, W, Ch), F (C, h, h, Ch),
B (H, W, Ch), s (Ch,), A (C, P, Q), rho (R,), angles in degrees.
"""

import math

import numpy as np


def keys(t, a=-0.5):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def disc(h):
    c = (h - 1) / 2
    return np.array([[(i - c) ** 2 + (j - c) ** 2 <= (h / 2) ** 2 for j in range(h)] for i in range(h)])


def rotation_weights(h, angle):
    """The dense h²×h² matrix of D∘R_θ, one output pixel at a time."""
    D = disc(h)
    c = (h - 1) / 2
    th = math.radians(angle)
    M = np.zeros((h * h, h * h))
    for i in range(h):
        for j in range(h):
            if not D[i, j]:
                continue
            x, y = j - c, -(i - c)
            xs = math.cos(th) * x + math.sin(th) * y
            ys = -math.sin(th) * x + math.cos(th) * y
            u, v = c - ys, c + xs
            if abs(u - round(u)) < 1e-9:
                u = float(round(u))
            if abs(v - round(v)) < 1e-9:
                v = float(round(v))
            for a in range(math.floor(u) - 1, math.floor(u) + 3):
                for b in range(math.floor(v) - 1, math.floor(v) + 3):
                    if 0 <= a < h and 0 <= b < h:
                        M[i * h + j, a * h + b] += keys(u - a) * keys(v - b)
    return M


def rotate(F, angle):
    """D∘R_θ F for a face (h, h, Ch): the turned face inside the disc, 0 outside."""
    h = F.shape[0]
    M = rotation_weights(h, angle)
    return np.stack([(M @ F[..., ch].ravel()).reshape(h, h) for ch in range(F.shape[-1])], axis=-1)


def mean_image(T, B, i, j):
    """μ: B with the disc pixels of the window at (i, j) replaced by the turned face T (h, h, Ch)."""
    mu = np.array(B, dtype=np.float64, copy=True)
    h = T.shape[0]
    D = disc(h)
    win = mu[i:i + h, j:j + h]
    win[D] = T[D]
    return mu


def log_joint(X, F, B, s, A, rho, angles, gains=None, offsets=None):
    """log p(X_k, c, r, d | θ) for every image, face, angle and corner: (K, C, R, P, Q). With per-image
    `gains` and `offsets` (K,) the mean image of image k is ``a_k·μ + b_k`` (a = 1, b = 0 without them)."""
    K, H, W, Ch = X.shape
    C, h = F.shape[:2]
    R = len(angles)
    P, Q = H - h + 1, W - h + 1
    gains = np.ones(K) if gains is None else np.asarray(gains, dtype=np.float64)
    offsets = np.zeros(K) if offsets is None else np.asarray(offsets, dtype=np.float64)
    const = sum(-0.5 * H * W * math.log(2 * math.pi * s[ch] ** 2) for ch in range(Ch))
    out = np.empty((K, C, R, P, Q))
    for c in range(C):
        for r in range(R):
            T = rotate(F[c], angles[r])
            for i in range(P):
                for j in range(Q):
                    mu = mean_image(T, B, i, j)
                    for k in range(K):
                        res = X[k] - gains[k] * mu - offsets[k]
                        ll = const - sum(np.sum(res[..., ch] ** 2) / (2 * s[ch] ** 2) for ch in range(Ch))
                        out[k, c, r, i, j] = ll + math.log(A[c, i, j]) + math.log(rho[r]) \
                            if A[c, i, j] > 0 and rho[r] > 0 else -math.inf
    return out


def log_likelihood(X, *theta):
    lj = log_joint(X, *theta)
    flat = lj.reshape(len(X), -1)
    m = flat.max(axis=1)
    return m + np.log(np.exp(flat - m[:, None]).sum(axis=1))


def posterior(X, *theta):
    lj = log_joint(X, *theta)
    flat = lj.reshape(len(X), -1)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(lj.shape)


def lower_bound(X, F, B, s, A, rho, angles, q):
    """``Σ_k Σ q log p(X_k, c, r, d | θ) + H(q)`` with 0·log 0 = 0."""
    lj = log_joint(X, F, B, s, A, rho, angles)
    pos = q > 0
    return float(np.sum(q[pos] * lj[pos]) - np.sum(q[pos] * np.log(q[pos])))


def sums(X, q, h):
    """N (C, R, P, Q), S_(c,r) (C, R, h, h, Ch) and XC (H, W, Ch), cover (H, W), by loops."""
    K, H, W, Ch = X.shape
    C, R, P, Q = q.shape[1:]
    D = disc(h)
    N = q.sum(axis=0)
    S = np.zeros((C, R, h, h, Ch))
    XC = np.zeros((H, W, Ch))
    cover = np.zeros((H, W))
    for k in range(K):
        for c in range(C):
            for r in range(R):
                for i in range(P):
                    for j in range(Q):
                        w = q[k, c, r, i, j]
                        if w == 0:
                            continue
                        S[c, r] += w * X[k, i:i + h, j:j + h]
                        m = np.zeros((H, W))
                        m[i:i + h, j:j + h] = D
                        XC += w * m[..., None] * X[k]
                        cover += w * m
    return N, S, XC, cover


# ----------------------------------------------------------------------------- per-image brightness
# X_k = a_k·μ_(c,r,d) + b_k + noise, one gain and one offset per image (gains, offsets: (K,)).

# the brightness versions of the likelihoods are `log_joint`, `posterior` and `log_likelihood` with
# (gains, offsets) after θ

def update_brightness(X, F, B, s, angles, q):
    """argmin over (a_k, b_k) of ``E_q Σ_ch ||X_k - a μ - b||² / (2 s_ch²)``: weighted least squares over
    every (face, angle, corner, pixel) row, one problem per image. Returns gains, offsets (K,)."""
    K, H, W, Ch = X.shape
    C, h = F.shape[:2]
    R = len(angles)
    P, Q = H - h + 1, W - h + 1
    a = np.empty(K)
    b = np.empty(K)
    Ts = [[rotate(F[c], angles[r]) for r in range(R)] for c in range(C)]
    for k in range(K):
        rows, rhs = [], []
        for c in range(C):
            for r in range(R):
                for i in range(P):
                    for j in range(Q):
                        if q[k, c, r, i, j] == 0:
                            continue
                        mu = mean_image(Ts[c][r], B, i, j)
                        for ch in range(Ch):
                            wgt = math.sqrt(q[k, c, r, i, j] / (2 * s[ch] ** 2))
                            rows.append(np.stack([wgt * mu[..., ch].ravel(), np.full(H * W, wgt)], axis=1))
                            rhs.append(wgt * X[k, ..., ch].ravel())
        a[k], b[k] = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
    return a, b


def m_step(X, q, angles, F_prev, B_prev, gains=None, offsets=None, alpha=0.0):
    """The M-step from the definitions, given each image's (a_k, b_k) (a = 1, b = 0 without them): A and ρ
    the marginals (with α), F by a dense solve of the normal equations of ``Σ_k E_q ||X_k - a_k μ - b_k||²``
    (a_k²-weighted; pixels no operator reaches keep F_prev), B per pixel, s² from explicit residuals.

    Returns F (C, h, h, Ch), B (H, W, Ch), s (Ch,) shared, A (C, P, Q), rho (R,)."""
    K, H, W, Ch = X.shape
    gains = np.ones(K) if gains is None else np.asarray(gains, dtype=np.float64)
    offsets = np.zeros(K) if offsets is None else np.asarray(offsets, dtype=np.float64)
    C, R, P, Q = q.shape[1:]
    h = F_prev.shape[1]
    D = disc(h)
    Ms = [rotation_weights(h, ang) for ang in angles]
    N = q.sum(axis=0)
    A = (N.sum(axis=1) + alpha) / (K + alpha * C * P * Q)
    rho = (N.sum(axis=(0, 2, 3)) + alpha) / (K + alpha * R)
    F = np.array(F_prev, dtype=np.float64, copy=True)
    for c in range(C):
        G = np.zeros((h * h, h * h))
        rhs = np.zeros((h * h, Ch))
        for k in range(K):
            y = X[k] - offsets[k]
            for r in range(R):
                for i in range(P):
                    for j in range(Q):
                        wq = q[k, c, r, i, j]
                        if wq == 0:
                            continue
                        G += wq * gains[k] ** 2 * Ms[r].T @ Ms[r]
                        rhs += wq * gains[k] * Ms[r].T @ y[i:i + h, j:j + h].reshape(h * h, Ch)
        if not G.any():
            continue
        act = np.diag(G) > 1e-12 * np.diag(G).max()
        for ch in range(Ch):
            f = F[c, ..., ch].ravel().copy()
            f[act] = np.linalg.solve(G[np.ix_(act, act)], rhs[act, ch] - G[np.ix_(act, ~act)] @ f[~act])
            F[c, ..., ch] = f.reshape(h, h)
    num = np.zeros((H, W, Ch))
    den = np.zeros((H, W))
    for k in range(K):
        cov = np.zeros((H, W))
        for i in range(P):
            for j in range(Q):
                cov[i:i + h, j:j + h] += q[k, :, :, i, j].sum() * D
        num += gains[k] * (X[k] - offsets[k]) * (1 - cov)[..., None]
        den += gains[k] ** 2 * (1 - cov)
    B = np.array(B_prev, dtype=np.float64, copy=True)
    ok = den > 1e-9 * np.sum(np.asarray(gains) ** 2)
    B[ok] = num[ok] / den[ok][:, None]
    sse = 0.0
    for c in range(C):
        for r in range(R):
            T = rotate(F[c], angles[r])
            for i in range(P):
                for j in range(Q):
                    mu = mean_image(T, B, i, j)
                    for k in range(K):
                        if q[k, c, r, i, j] > 0:
                            sse += q[k, c, r, i, j] * np.sum((X[k] - gains[k] * mu - offsets[k]) ** 2)
    s = np.full(Ch, math.sqrt(sse / (K * H * W * Ch)))
    return F, B, s, A, rho
