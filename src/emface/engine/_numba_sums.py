"""Fused CPU kernels (Numba) of the M-step's sums and of a chunk's conversions.

Each is the fused twin of an array-API kernel or chunk helper (same name, or
the name in brackets): ``_add_crop`` (`kernels.crops`), ``_add_coverage_xc``
and ``coverage_xc`` (`kernels.coverage`), ``accumulate`` and
``accumulate_at_positions`` (`kernels.accumulate`, from a given q or one-hot
positions), ``_add_moments`` (`kernels.moments`), ``spectral_product``,
``standardize`` (`chunk.standardized`), ``block_moments``. Every per-pixel array
is channels-last, as the images are stored: raw chunks (n, H, W, Ch), partial
sums S_F (C, h, w, Ch), XC and SX (H, W, Ch). The parallel kernels split the
images into contiguous blocks, one per task, each with its own partial sums.
"""

from __future__ import annotations

import numpy as np

from ._numba_base import OPTS as _OPTS
from . import _numba_base as fm
from ._numba_base import nb, serial_and_parallel

__all__ = ["PARALLEL"]


@nb.njit(**_OPTS)
def _sq_norms(x, off, inv, out):
    """||x'_ch||² of one image, per channel, into out (Ch,)."""
    H, W, Ch = x.shape
    flat = x.reshape(H * W * Ch)
    for ch in range(Ch):
        acc = 0.0
        for t in range(ch, flat.shape[0], Ch):
            v = (flat[t] - off) * inv
            acc += v * v
        out[ch] = acc


@nb.njit(**_OPTS)
def _add_crop(x, off, inv, p, i, j, SFc, XC):
    """SFc += p·crop_(i,j) and XC[window] += p·crop_(i,j), over every channel (p may be 0 for SFc-less use)."""
    h, w, Ch = SFc.shape
    H, W = x.shape[0], x.shape[1]
    # channels last: each window row is one contiguous run of w·Ch values
    x2 = x.reshape(H, W * Ch)
    S2 = SFc.reshape(h, w * Ch)
    X2 = XC.reshape(H, W * Ch)
    j0 = j * Ch
    for a in range(h):
        for t in range(w * Ch):
            v = p * ((x2[i + a, j0 + t] - off) * inv)
            S2[a, t] += v
            X2[i + a, j0 + t] += v


@nb.njit(**_OPTS)
def _add_crops(x, off, inv, q, thr, SF, XC):
    """S_F[c] += q(c, d)·crop_d and XC[window_d] += q(c, d)·crop_d for every q(c, d) > thr."""
    C, P, Q = q.shape
    for c in range(C):
        for i in range(P):
            for j in range(Q):
                p = q[c, i, j]
                if p > thr:
                    _add_crop(x, off, inv, p, i, j, SF[c], XC)


@nb.njit(**_OPTS)
def _add_crops_at(x, off, inv, qf, nz, nnz, thr, P, Q, SF, XC):
    """`_add_crops` over the listed non-zero entries of the flat posterior only."""
    for u in range(nnz):
        t = nz[u]
        p = qf[t]
        if p > thr:
            c, i, j = fm.decode(t, P, Q)
            _add_crop(x, off, inv, p, i, j, SF[c], XC)


@nb.njit(**_OPTS)
def _add_coverage_xc(x, off, inv, q, h, w, satq, XC):
    """XC += x' ∘ ((Σ_c q_c) ⊛ 1_{h×w}) through a summed-area table of Σ_c q_c."""
    C, P, Q = q.shape
    H, W, Ch = x.shape
    for c in range(Q + 1):
        satq[0, c] = 0.0
    for i in range(P):
        run = 0.0
        satq[i + 1, 0] = 0.0
        for j in range(Q):
            for c in range(C):
                run += q[c, i, j]
            satq[i + 1, j + 1] = satq[i, j + 1] + run
    for r in range(H):
        r_hi = min(r, P - 1) + 1
        r_lo = max(r - h + 1, 0)
        for cc in range(W):
            c_hi = min(cc, Q - 1) + 1
            c_lo = max(cc - w + 1, 0)
            cov = fm.window_total(satq[r_hi, c_hi], satq[r_lo, c_hi], satq[r_hi, c_lo], satq[r_lo, c_lo])
            for ch in range(Ch):
                XC[r, cc, ch] += cov * ((x[r, cc, ch] - off) * inv)


@nb.njit(**_OPTS)
def _add_moments(x, off, inv, SX, SXX):
    """SX += x' and SXX[ch] += ||x'_ch||², over the image's contiguous values."""
    H, W, Ch = x.shape
    flat = x.reshape(H * W * Ch)
    sx = SX.reshape(H * W * Ch)
    for t in range(flat.shape[0]):
        sx[t] += (flat[t] - off) * inv
    sq = np.empty(Ch)
    _sq_norms(x, off, inv, sq)
    for ch in range(Ch):
        SXX[ch] += sq[ch]


def coverage_xc(X, off, inv, q, idx, h, w, XC_part):
    """XC for the images ``idx`` of a chunk through coverage maps of an h×w face (the dense route)."""
    n_blocks = XC_part.shape[0]
    m = idx.shape[0]
    P, Q = q.shape[2], q.shape[3]
    for blk in nb.prange(n_blocks):
        satq = np.empty((P + 1, Q + 1))
        XCb = XC_part[blk]
        for t in range((blk * m) // n_blocks, ((blk + 1) * m) // n_blocks):
            k = idx[t]
            _add_coverage_xc(X[k], off, inv, q[k], h, w, satq, XCb)


def accumulate(X, off, inv, q, thr, with_moments, N_part, SF_part, XC_part, SX_part, SXX_part):
    """N, S_F and XC of a chunk under a given q (n, C, P, Q), by crops."""
    n = X.shape[0]
    n_blocks = N_part.shape[0]
    for blk in nb.prange(n_blocks):
        for k in range((blk * n) // n_blocks, ((blk + 1) * n) // n_blocks):
            N_part[blk] += q[k]
            _add_crops(X[k], off, inv, q[k], thr, SF_part[blk], XC_part[blk])
            if with_moments:
                _add_moments(X[k], off, inv, SX_part[blk], SXX_part[blk])


def accumulate_at_positions(X, off, inv, labels, rows, cols, with_moments, N_part, SF_part, XC_part, SX_part,
                       SXX_part):
    """N, S_F and XC of a chunk whose posteriors are one-hot at (labels[k], rows[k], cols[k]) (label < 0: no face)."""
    n = X.shape[0]
    n_blocks = N_part.shape[0]
    for blk in nb.prange(n_blocks):
        for k in range((blk * n) // n_blocks, ((blk + 1) * n) // n_blocks):
            c = labels[k]
            i = rows[k]
            j = cols[k]
            if c >= 0:  # a negative label is "no face": moments only
                N_part[blk, c, i, j] += 1.0
                _add_crop(X[k], off, inv, 1.0, i, j, SF_part[blk, c], XC_part[blk])
            if with_moments:
                _add_moments(X[k], off, inv, SX_part[blk], SXX_part[blk])


def block_moments(X, out):
    """Per image: [count of non-finite values, sum, min, max] into out (n, 4), then
    [Σ (x - m)², Σ (x - m)³] around the block's mean m into out[:, 4:6] (a second pass)."""
    n = X.shape[0]
    for k in nb.prange(n):
        xk = X[k].ravel()
        bad = 0
        acc = 0.0
        lo = np.inf
        hi = -np.inf
        for t in range(xk.shape[0]):
            v = float(xk[t])
            if not np.isfinite(v):
                bad += 1
                continue
            acc += v
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        out[k, 0] = bad
        out[k, 1] = acc
        out[k, 2] = lo
        out[k, 3] = hi
    total = 0.0
    size = 0
    for k in range(n):
        total += out[k, 1]
        size += X[k].size
    m = total / max(size, 1)
    for k in nb.prange(n):
        xk = X[k].ravel()
        a2 = 0.0
        a3 = 0.0
        for t in range(xk.shape[0]):
            d = float(xk[t]) - m
            a2 += d * d
            a3 += d * d * d
        out[k, 4] = a2
        out[k, 5] = a3


def spectral_product(xhat, filters, out):
    """``out[k, c] = Σ_ch xhat[k, ch] · filters[c, ch]``: the channel-summed product before the inverse FFTs.

    The fused copy of the product in `kernels.correlate_fft`: the spectra are
    read once and no temporary is made, whatever the number of channels.
    """
    n, Ch, H, Wr = xhat.shape
    C = filters.shape[0]
    for k in nb.prange(n):
        for c in range(C):
            o = out[k, c]
            for r in range(H):
                for f in range(Wr):
                    o[r, f] = xhat[k, 0, r, f] * filters[c, 0, r, f]
            for ch in range(1, Ch):
                for r in range(H):
                    for f in range(Wr):
                        o[r, f] += xhat[k, ch, r, f] * filters[c, ch, r, f]


def spectral_product_pairs(xhat, filters, kk, cc, out):
    """``out[t] = Σ_ch xhat[kk[t], ch] · filters[cc[t], ch]``: `spectral_product` for listed (image, face) pairs.

    The route of `sparse_faces`: only the faces an image's posterior can reach are correlated.
    """
    m = kk.shape[0]
    Ch, H, Wr = xhat.shape[1], xhat.shape[2], xhat.shape[3]
    for t in nb.prange(m):
        k = kk[t]
        c = cc[t]
        o = out[t]
        for r in range(H):
            for f in range(Wr):
                o[r, f] = xhat[k, 0, r, f] * filters[c, 0, r, f]
        for ch in range(1, Ch):
            for r in range(H):
                for f in range(Wr):
                    o[r, f] += xhat[k, ch, r, f] * filters[c, ch, r, f]


def window_norms(X, off, inv, h, w, out):
    """out[k] = max over the h×w windows of ``Σ_ch ||x'_k,ch(window)||²``, through a summed-area table.

    The bound of `sparse_faces`: ``|<x'_window, Δ>| <= sqrt(out[k]) ||Δ||`` at every corner.
    """
    n, H, W, Ch = X.shape
    for k in nb.prange(n):
        x = X[k]
        sat = np.zeros((H + 1, W + 1))
        for r in range(H):
            run = 0.0
            for c in range(W):
                for ch in range(Ch):
                    v = (x[r, c, ch] - off) * inv
                    run += v * v
                sat[r + 1, c + 1] = sat[r, c + 1] + run
        best = 0.0
        for i in range(H - h + 1):
            for j in range(W - w + 1):
                v = fm.window_total(sat[i + h, j + w], sat[i, j + w], sat[i + h, j], sat[i, j])
                if v > best:
                    best = v
        out[k] = best


def standardize(X, off, inv, out):
    """out = (X - off) * inv with the channels moved first: X (n, H, W, Ch) -> out (n, Ch, H, W)."""
    n = X.shape[0]
    for k in nb.prange(n):
        xk = X[k]
        ok = out[k]
        for r in range(xk.shape[0]):
            for c in range(xk.shape[1]):
                for ch in range(xk.shape[2]):
                    ok[ch, r, c] = (xk[r, c, ch] - off) * inv


#: the kernels with a parallel loop; each also exists serially as ``<name>_serial`` (`serial_and_parallel`)
PARALLEL = ("coverage_xc", "accumulate", "accumulate_at_positions", "standardize", "block_moments",
            "spectral_product", "spectral_product_pairs", "window_norms")
serial_and_parallel(globals(), PARALLEL)
