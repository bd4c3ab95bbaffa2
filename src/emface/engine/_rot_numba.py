"""Fused CPU loops of the rotation E-step (`rotstep`): the same formulas, threads over (image, class) units.

Each kernel is the numpy expression named in its docstring (`rotstep` keeps
that numpy route; tests/test_rotation_kernels.py holds each kernel to it to
1e-12). A *unit* is one (image k, class u) pair of a batch, u = c·m + j over
the batch's C faces and m angles: units are many even for a batch of a few
images, so both threads stay busy. Every kernel takes float64 arrays and
accumulates in float64; `w` (n,) is a per-image weight on the whole loss
(``logit = log A + log ρ - w_k·L``; all ones for the note's model).
"""

from __future__ import annotations

import math

import numpy as np

from ._numba_base import OPTS, nb

__all__ = ["product", "logits", "exp_units", "normalise", "entries", "crop_sums", "UNDERFLOW"]

#: below this, exp(v) is exactly 0.0 in float64 (the smallest subnormal is exp(-744.44)): skip the call
UNDERFLOW = -746.0


@nb.njit(parallel=True, **OPTS)
def product(xhat, fil, idx, y):
    """``y[k, c, j] = Σ_ch xhat[k, ch] · fil[c, idx[k, j], ch]``: the channel-summed spectral product.

    xhat (n, Ch, H, Wr) complex; fil (C, R, Ch, H, Wr) complex; idx (n, m) int; y (n, C, m, H, Wr) out.
    """
    n, Ch, H, Wr = xhat.shape
    C = fil.shape[0]
    m = idx.shape[1]
    for t in nb.prange(n * C * m):  # the image innermost: a full sweep reads each filter once per thread
        k = t % n
        c = t // (n * m)
        j = (t // n) % m
        r = idx[k, j]
        for a in range(H):
            for b in range(Wr):
                y[k, c, j, a, b] = xhat[k, 0, a, b] * fil[c, r, 0, a, b]
        for ch in range(1, Ch):
            for a in range(H):
                for b in range(Wr):
                    y[k, c, j, a, b] += xhat[k, ch, a, b] * fil[c, r, ch, a, b]


@nb.njit(parallel=True, **OPTS)
def logits(corr, face_sq, xbt, logA, log_rho, w, m, loss, lg, umax, uarg):
    """The losses and logits of every unit, and each unit's largest logit.

    ``loss = (xbt[k] - 2·corr) + face_sq[k, u]``, ``lg = (logA[c] + log_rho[k, j]) - w[k]·loss``,
    ``umax[k, u] = max_d lg``, ``uarg[k, u]`` its first index. corr (n, E, P, Q), any layout (E = C·m);
    face_sq (n, E); xbt (n, P·Q); logA (C, P·Q); log_rho (n, m); w (n,); loss, lg (n, E, P·Q) out.
    """
    n, E, P, Q = corr.shape
    for t in nb.prange(n * E):
        k = t // E
        u = t % E
        c = u // m
        j = u % m
        f = face_sq[k, u]
        lr = log_rho[k, j]
        wk = w[k]
        best = -np.inf
        barg = 0
        for i in range(P):
            for jj in range(Q):
                d = i * Q + jj
                v = (xbt[k, d] - 2.0 * corr[k, u, i, jj]) + f
                loss[k, u, d] = v
                g = (logA[c, d] + lr) - wk * v
                lg[k, u, d] = g
                if g > best:
                    best = g
                    barg = d
        umax[k, u] = best
        uarg[k, u] = barg


@nb.njit(parallel=True, **OPTS)
def exp_units(lg, mx, usum):
    """In place ``lg = exp(lg - mx[k])`` (0 where that underflows), and ``usum[k, u] = Σ_d lg``.

    lg (n, E, PQ); mx (n,); usum (n, E) out.
    """
    n, E, PQ = lg.shape
    for t in nb.prange(n * E):
        k = t // E
        u = t % E
        top = mx[k]
        s = 0.0
        for d in range(PQ):
            v = lg[k, u, d] - top
            e = 0.0 if v < UNDERFLOW else math.exp(v)
            lg[k, u, d] = e
            s += e
        usum[k, u] = s


@nb.njit(parallel=True, **OPTS)
def normalise(e, usum, weight, loss, thr, n_blocks, el, qcd, cnt):
    """In place ``q = e · weight[k, j]`` (weight: 1/Z where the angle is allowed, else 0), with the partial
    sums of block b of the corners: ``el[k, c, b] = Σ_(j, d∈b, q>0) q·loss``, ``qcd[k, c, d] = Σ_j q``,
    ``cnt[k, c·m + j, b] = #{d ∈ b: q > thr}``. A unit whose e sum to 0 (usum (n, C·m), from `exp_units`)
    is all zeros and is skipped (most units of a sharp posterior in a sweep of all angles).

    e, loss (n, C, m, PQ); weight (n, m); el (n, C, n_blocks), qcd (n, C, PQ), cnt (n, C·m, n_blocks) out.
    """
    n, C, m, PQ = e.shape
    size = (PQ + n_blocks - 1) // n_blocks
    for t in nb.prange(n * C * n_blocks):
        k = t // (C * n_blocks)
        c = (t // n_blocks) % C
        b = t % n_blocks
        lo = b * size
        hi = min(PQ, lo + size)
        for d in range(lo, hi):
            qcd[k, c, d] = 0.0
        acc = 0.0
        for j in range(m):
            if usum[k, c * m + j] == 0.0:
                cnt[k, c * m + j, b] = 0
                continue
            wj = weight[k, j]
            count = 0
            for d in range(lo, hi):
                q = e[k, c, j, d] * wj
                e[k, c, j, d] = q
                if q > 0.0:
                    acc += q * loss[k, c, j, d]
                    if q > thr:
                        count += 1
                qcd[k, c, d] += q
            cnt[k, c * m + j, b] = count
        el[k, c, b] = acc


@nb.njit(parallel=True, **OPTS)
def entries(q, units, starts, thr, out_d, out_q):
    """The entries above `thr` of the listed units, in order: unit t = (units[t, 0], units[t, 1]) writes its
    corners d (ascending) and values from ``starts[t]`` on. q (n, E, PQ); units (T, 2); starts (T + 1,)."""
    for t in nb.prange(units.shape[0]):
        k = units[t, 0]
        u = units[t, 1]
        o = starts[t]
        for d in range(q.shape[2]):
            v = q[k, u, d]
            if v > thr:
                out_d[o] = d
                out_q[o] = v
                o += 1


@nb.njit(parallel=True, **OPTS)
def crop_sums(x, ek, ecls, ei, ej, eq, S_F):
    """``S_F[ecls[e]] += eq[e] · x[ek[e], :, ei[e]:ei[e]+h, ej[e]:ej[e]+h]`` for every entry e, in order
    (threads over the window's rows). x (n, Ch, H, W); S_F (M, Ch, h, h)."""
    Ch = x.shape[1]
    h = S_F.shape[2]
    for a in nb.prange(h):
        for e in range(ek.shape[0]):
            k, r, i, j, v = ek[e], ecls[e], ei[e], ej[e], eq[e]
            for ch in range(Ch):
                for b in range(h):
                    S_F[r, ch, a, b] += v * x[k, ch, i + a, j + b]


@nb.njit(**OPTS)
def near_gains(loss, arg, Q, offsets, out):
    """`kernels.neighbour_gains` of a batch: ``out[k, t] = L(c*, r*, d*) - L(c*, r*, d* + offsets[t])``,
    -inf off the grid. loss (n, E, P·Q); arg (n,) flat over (E, P·Q); offsets (T, 2); out (n, T)."""
    n, E, PQ = loss.shape
    P = PQ // Q
    for k in range(n):
        u = arg[k] // PQ
        d = arg[k] % PQ
        i = d // Q
        j = d % Q
        top = loss[k, u, d]
        for t in range(offsets.shape[0]):
            ii = i + offsets[t, 0]
            jj = j + offsets[t, 1]
            if 0 <= ii < P and 0 <= jj < Q:
                out[k, t] = top - loss[k, u, ii * Q + jj]
            else:
                out[k, t] = -np.inf


@nb.njit(parallel=True, **OPTS)
def cover_sums(x, ek, ei, ej, eq, D, XC):
    """``XC[:, ei[e]:ei[e]+h, ej[e]:ej[e]+h] += eq[e] · D ∘ x[ek[e], :, same window]`` for every entry e, in
    order (threads over the image's rows). x (n, Ch, H, W); D (h, h) float 0/1; XC (Ch, H, W)."""
    Ch, H = XC.shape[0], XC.shape[1]
    h = D.shape[0]
    for y in nb.prange(H):
        for e in range(ek.shape[0]):
            a = y - ei[e]
            if a < 0 or a >= h:
                continue
            k, j, v = ek[e], ej[e], eq[e]
            for ch in range(Ch):
                for b in range(h):
                    XC[ch, y, j + b] += (v * D[a, b]) * x[k, ch, y, j + b]
