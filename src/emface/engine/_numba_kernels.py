"""Fused CPU kernels (Numba): one sweep per image for everything after the correlation.

Per image, in one thread and in cache-sized buffers:

1. the summed-area table of ``x'·B`` and ``||x' - B||²`` (x' = (x - offset)·inv_scale,
   applied on the fly so that raw uint8/float32/float64 chunks need no copy);
2. the logits ``log A - L/(2s²)``, their maximum and arg-maximum;
3. the posterior q (soft: softmax in the log domain; hard: one-hot), its
   entropy, the per-image log-likelihood, and ``N += q``;
4. the M-step sums S_F and XC by adding ``q(d) · crop_d`` for every position
   whose probability is above `thr` -- exact up to terms below 1e-300 relative,
   and a single crop for hard EM -- unless the image has more than
   `max_sparse` such positions, in which case it is flagged for the dense
   route (FFT for S_F, `coverage_xc` for XC).

Images are split into `n_blocks` contiguous blocks, one per parallel task, each
with its own partial sums, so no two threads write the same memory.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_OPTS = dict(cache=True, nogil=True, error_model="numpy")


@nb.njit(**_OPTS)
def _sat_xb(x, off, inv, B, sat):
    """Fill ``sat`` (H+1, W+1) with the SAT of x'·B; return (||x' - B||², ||x'||²)."""
    H, W = x.shape
    rss = 0.0
    xx = 0.0
    for c in range(W + 1):
        sat[0, c] = 0.0
    for r in range(H):
        run = 0.0
        sat[r + 1, 0] = 0.0
        for c in range(W):
            v = (x[r, c] - off) * inv
            b = B[r, c]
            run += v * b
            sat[r + 1, c + 1] = sat[r, c + 1] + run
            d = v - b
            rss += d * d
            xx += v * v
    return rss, xx


@nb.njit(**_OPTS)
def _logits(corr, sat, logA, boxB2, F2, inv2s2, h, w, out):
    """Write logits into ``out`` (P, Q); return (max, flat argmax)."""
    P, Q = out.shape
    mx = -np.inf
    am = 0
    for i in range(P):
        for j in range(Q):
            xb = sat[i + h, j + w] - sat[i, j + w] - sat[i + h, j] + sat[i, j]
            L = F2 - 2.0 * corr[i, j] + 2.0 * xb - boxB2[i, j]
            la = logA[i, j]
            if la == -np.inf:
                v = -np.inf
            else:
                v = la - L * inv2s2
            out[i, j] = v
            if v > mx:
                mx = v
                am = i * Q + j
    return mx, am


@nb.njit(**_OPTS)
def _window_L(x, off, inv, F, B, i, j):
    """L(i, j) = Σ_window (x' - F)² - (x' - B)², summed directly (no cancellation)."""
    h, w = F.shape
    acc = 0.0
    for a in range(h):
        for b in range(w):
            v = (x[i + a, j + b] - off) * inv
            d1 = v - F[a, b]
            d2 = v - B[i + a, j + b]
            acc += d1 * d1 - d2 * d2
    return acc


# the expanded logits carry a rounding error of about rel_eps·(||F||² + ||x||² + ||B||²)/(2s²)
# nats; where that exceeds this, the leading positions are recomputed directly
REFINE_ABOVE = 1e-6


@nb.njit(**_OPTS)
def _refine(x, off, inv, F, B, logA, inv2s2, err, band, out, mx, am):
    """Recompute the logits near the maximum directly when the fast ones are imprecise.

    At low noise 1/(2s²) magnifies the rounding of the expanded sums; the
    positions that carry the posterior are few then, and summing their windows
    directly makes q and the log-likelihood exact to float64.
    """
    P, Q = out.shape
    cut = mx - band - 2.0 * err
    nmx = -np.inf
    nam = am
    for i in range(P):
        for j in range(Q):
            v = out[i, j]
            if v > cut:
                v = logA[i, j] - _window_L(x, off, inv, F, B, i, j) * inv2s2
                out[i, j] = v
            if v > nmx:
                nmx = v
                nam = i * Q + j
    return nmx, nam


# exp(x) underflows to exactly 0.0 in float64 below x = -745.14; positions that
# far below the best one get q = 0 without calling exp, bit for bit as exp would.
LOG_CUTOFF = -745.2


@nb.njit(**_OPTS)
def _softmax_inplace(out, mx, thr):
    """Turn logits into q in place; return (logsumexp, entropy, max prob, #q > thr).

    One exponential per position (none where it would underflow), kept and
    then scaled by 1/sum. The entropy is ``log z - sum(e (l - max)) / z``;
    positions with q = 0 (including log A = -inf) contribute nothing.
    """
    P, Q = out.shape
    z = 0.0
    el = 0.0
    for i in range(P):
        for j in range(Q):
            d = out[i, j] - mx
            if d > LOG_CUTOFF:
                e = math.exp(d)
                z += e
                el += e * d
                out[i, j] = e
            else:
                out[i, j] = 0.0
    logz = math.log(z)
    iz = 1.0 / z
    ent = logz - el * iz
    if ent < 0.0:
        ent = 0.0
    cnt = 0
    qmax = 0.0
    for i in range(P):
        for j in range(Q):
            e = out[i, j]
            if e > 0.0:
                q = e * iz
                if q > thr:
                    cnt += 1
                if q > qmax:
                    qmax = q
                out[i, j] = q
    return mx + logz, ent, qmax, cnt


@nb.njit(**_OPTS)
def _add_crops(x, off, inv, q, thr, SF, XC):
    """S_F += q(d)·crop_d and XC[window_d] += q(d)·crop_d for every q(d) > thr."""
    P, Q = q.shape
    h, w = SF.shape
    for i in range(P):
        for j in range(Q):
            p = q[i, j]
            if p > thr:
                for a in range(h):
                    for b in range(w):
                        v = p * ((x[i + a, j + b] - off) * inv)
                        SF[a, b] += v
                        XC[i + a, j + b] += v


@nb.njit(**_OPTS)
def _add_crop_one(x, off, inv, i, j, SF, XC):
    h, w = SF.shape
    for a in range(h):
        for b in range(w):
            v = (x[i + a, j + b] - off) * inv
            SF[a, b] += v
            XC[i + a, j + b] += v


@nb.njit(**_OPTS)
def _add_coverage_xc(x, off, inv, q, satq, XC):
    """XC += x' ∘ (q ⊛ 1_{h×w}) through a summed-area table of q."""
    P, Q = q.shape
    H, W = x.shape
    h = H - P + 1
    w = W - Q + 1
    for c in range(Q + 1):
        satq[0, c] = 0.0
    for i in range(P):
        run = 0.0
        satq[i + 1, 0] = 0.0
        for j in range(Q):
            run += q[i, j]
            satq[i + 1, j + 1] = satq[i, j + 1] + run
    for r in range(H):
        r_hi = min(r, P - 1) + 1
        r_lo = max(r - h + 1, 0)
        for c in range(W):
            c_hi = min(c, Q - 1) + 1
            c_lo = max(c - w + 1, 0)
            cov = satq[r_hi, c_hi] - satq[r_lo, c_hi] - satq[r_hi, c_lo] + satq[r_lo, c_lo]
            XC[r, c] += cov * ((x[r, c] - off) * inv)


@nb.njit(parallel=True, **_OPTS)
def fused_pass(
    X, off, inv, corr, out, logA, boxB2, B, F, F2, BB, inv2s2, log_const, hard, mode, thr,
    max_sparse, rel_eps, band, N_part, SF_part, XC_part, dense, pos, ll, maxp, ent,
):
    """One E-step and the M-step sums for a chunk.

    Parameters
    ----------
    X : (n, H, W) raw images (any real dtype); x' = (X - off) * inv.
    corr : (n, P, Q) the correlations x' ⋆ F (float32 or float64).
    out : (n, P, Q) float64; receives q (mode 0) or log p(x_k, d | θ) (mode 1).
        May be the same array as `corr` when that is float64.
    logA, boxB2 : (P, Q) float64
    B : (H, W) float64
    F : (h, w) float64
    F2, BB, inv2s2, log_const : float
        ||F||², ||B||², 1/(2s²) and -HW/2·log(2πs²).
    hard : bool
    mode : int
        0: posterior and sums; 1: only the log joint (no sums).
    thr : float
        Smallest q that counts in the sparse sums.
    max_sparse : int
        Images with more positions above `thr` go to the dense route.
    rel_eps, band : float
        Relative rounding of the correlations (about 1e-13 in float64, 1e-6 in
        float32), which sets when the logits within `band` nats (plus twice
        the rounding) of the best are recomputed directly: 40 in float64
        (q exact to float64), 2 in float32 (the arg-max and leading q exact).
    N_part, SF_part, XC_part : (n_blocks, ...) float64, zeroed
        Partial sums, one per block.
    dense : (n,) uint8, out -- 1 where the dense route must finish S_F and XC.
    pos : (n,) int64, out -- flat argmax. ll, maxp, ent : (n,) float64, out.
    """
    n, H, W = X.shape
    P, Q = logA.shape
    h = H - P + 1
    w = W - Q + 1
    n_blocks = N_part.shape[0]
    for blk in nb.prange(n_blocks):
        k0 = (blk * n) // n_blocks
        k1 = ((blk + 1) * n) // n_blocks
        sat = np.empty((H + 1, W + 1))
        Nb = N_part[blk]
        SFb = SF_part[blk]
        XCb = XC_part[blk]
        for k in range(k0, k1):
            x = X[k]
            rss, xx = _sat_xb(x, off, inv, B, sat)
            o = out[k]
            mx, am = _logits(corr[k], sat, logA, boxB2, F2, inv2s2, h, w, o)
            err = rel_eps * (F2 + xx + BB) * inv2s2
            if err > REFINE_ABOVE and mx > -np.inf:
                mx, am = _refine(x, off, inv, F, B, logA, inv2s2, err, band, o, mx, am)
            pos[k] = am
            base = log_const - rss * inv2s2
            if mode == 1:
                for i in range(P):
                    for j in range(Q):
                        o[i, j] += base
                ll[k] = mx + base
                maxp[k] = np.nan
                ent[k] = np.nan
                continue
            ai = am // Q
            aj = am - ai * Q
            if hard:
                for i in range(P):
                    for j in range(Q):
                        o[i, j] = 0.0
                o[ai, aj] = 1.0
                Nb[ai, aj] += 1.0
                ll[k] = mx + base
                maxp[k] = 1.0
                ent[k] = 0.0
                _add_crop_one(x, off, inv, ai, aj, SFb, XCb)
                dense[k] = 0
            else:
                lse, e, qmax, cnt = _softmax_inplace(o, mx, thr)
                ll[k] = lse + base
                maxp[k] = qmax
                ent[k] = e
                for i in range(P):
                    for j in range(Q):
                        Nb[i, j] += o[i, j]
                if cnt <= max_sparse:
                    _add_crops(x, off, inv, o, thr, SFb, XCb)
                    dense[k] = 0
                else:
                    dense[k] = 1


@nb.njit(parallel=True, **_OPTS)
def coverage_xc(X, off, inv, q, idx, XC_part):
    """XC for the images ``idx`` of a chunk through coverage maps (the dense route)."""
    n_blocks = XC_part.shape[0]
    m = idx.shape[0]
    P, Q = q.shape[1], q.shape[2]
    for blk in nb.prange(n_blocks):
        satq = np.empty((P + 1, Q + 1))
        XCb = XC_part[blk]
        for t in range((blk * m) // n_blocks, ((blk + 1) * m) // n_blocks):
            k = idx[t]
            _add_coverage_xc(X[k], off, inv, q[k], satq, XCb)


@nb.njit(parallel=True, **_OPTS)
def crops_from_q(X, off, inv, q, thr, N_part, SF_part, XC_part):
    """N, S_F and XC of a chunk under a given q, by crops (the direct route)."""
    n = X.shape[0]
    P, Q = q.shape[1], q.shape[2]
    n_blocks = N_part.shape[0]
    for blk in nb.prange(n_blocks):
        for k in range((blk * n) // n_blocks, ((blk + 1) * n) // n_blocks):
            qk = q[k]
            for i in range(P):
                for j in range(Q):
                    N_part[blk, i, j] += qk[i, j]
            _add_crops(X[k], off, inv, qk, thr, SF_part[blk], XC_part[blk])


@nb.njit(parallel=True, **_OPTS)
def chunk_moments(X, off, inv, sq, SX_part):
    """Per-image ||x'||² into ``sq`` and partial ``sum_k x'`` into ``SX_part``."""
    n, H, W = X.shape
    n_blocks = SX_part.shape[0]
    for blk in nb.prange(n_blocks):
        S = SX_part[blk]
        for k in range((blk * n) // n_blocks, ((blk + 1) * n) // n_blocks):
            acc = 0.0
            for r in range(H):
                for c in range(W):
                    v = (X[k, r, c] - off) * inv
                    acc += v * v
                    S[r, c] += v
            sq[k] = acc


@nb.njit(parallel=True, **_OPTS)
def standardize(X, off, inv, out):
    """out = (X - off) * inv, in parallel (out may have another dtype)."""
    n = X.shape[0]
    for k in nb.prange(n):
        xk = X[k]
        ok = out[k]
        for r in range(xk.shape[0]):
            for c in range(xk.shape[1]):
                ok[r, c] = (xk[r, c] - off) * inv


@nb.njit(parallel=True, **_OPTS)
def crops_at_positions(X, off, inv, rows, cols, N_part, SF_part, XC_part):
    """N, S_F and XC of a chunk whose posteriors are one-hot at (rows[k], cols[k])."""
    n = X.shape[0]
    n_blocks = N_part.shape[0]
    for blk in nb.prange(n_blocks):
        for k in range((blk * n) // n_blocks, ((blk + 1) * n) // n_blocks):
            i = rows[k]
            j = cols[k]
            N_part[blk, i, j] += 1.0
            _add_crop_one(X[k], off, inv, i, j, SF_part[blk], XC_part[blk])
