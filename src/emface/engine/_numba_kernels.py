"""Fused CPU kernels (Numba): one sweep per image for everything after the correlation.

The E-step of `emface.engine.kernels` (the array-API kernels that numpy and
torch share), fused so that each image is read once, in one thread and in
cache-sized buffers. Both call the formulas of `_formulas` (compiled in
`_numba_base`), and each kernel here is named after its array-API twin:
``_summed_area_xb`` (`kernels.summed_area`), ``_logits``, ``_neighbour_gains``,
``_posterior`` (the softmax of `kernels.posterior`); the direct sums
(``_window_loss``, ``_delta``, ``_top_joint``, ``_bg_rss``) exist only here, for
precision at low noise. The M-step's sums are in `_numba_sums`. The tests hold
the two routes to each other and to the brute-force model to 1e-10. Per image:

1. the summed-area table of ``Σ_ch x'_ch · λ_ch B_ch`` (x' = (x - offset)·inv_scale,
   applied on the fly so raw uint8, float32 or float64 chunks need no copy),
   whose total with the image's cached norms gives ``Σ_ch λ_ch ||x'_ch - B_ch||²``,
   and, on the executor's first pass, the sums ``Σ_k x'`` and ``Σ_k ||x'||²``;
2. the logits ``log A(c, d) - L(c, d)`` of every face c and corner d, their
   maximum and arg-maximum; at low noise, where 1/(2s²) magnifies the rounding
   of the expanded sums, the leading ones are summed directly instead,
   relative to the best, whose joint is summed directly too;
3. the posterior q over (c, d) (soft: softmax in the log domain; hard:
   one-hot), its entropy, the face probabilities, the per-image
   log-likelihood, and ``N += q``;
4. the M-step sums S_F and XC, by adding ``q(c, d) · crop_d`` for every (c, d)
   whose probability is above `thr` (a single crop for hard EM) -- unless the
   image has more than `max_sparse` such (c, d), in which case it is flagged
   for the dense route (FFT for S_F, `coverage_xc` for XC).

Images are split into contiguous blocks, one per parallel task, each with its
own partial sums, so no two threads write the same memory. Every per-pixel
array here is channels-last, as the images are stored: raw chunks (n, H, W, Ch),
faces (C, h, w, Ch), the background (H, W, Ch), and the partial sums S_F
(C, h, w, Ch), XC and SX (H, W, Ch); the engine moves the channels first
around them.
"""

from __future__ import annotations

import math

import numpy as np

from . import _numba_base as fm
from . import _numba_sums
from ._numba_base import OPTS as _OPTS
from ._numba_base import nb, serial_and_parallel
from ._numba_sums import _add_crop, _add_crops_at, _add_moments, _sq_norms


@nb.njit(**_OPTS)
def _summed_area_xb(x, off, inv, Bw, sat, row, SX, SXX, with_moments):
    """Fill ``sat`` (H+1, W+1) with the SAT of Σ_ch x'_ch·Bw_ch; return its total, Σ_ch <x'_ch, Bw_ch>.

    ``row`` is scratch of W·Ch values. Adds x' to SX and ||x'_ch||² to SXX when `with_moments`.
    """
    H, W, Ch = x.shape
    for c in range(W + 1):
        sat[0, c] = 0.0
    # channels last: each image row is one contiguous run of W·Ch values
    x2 = x.reshape(H, W * Ch)
    b2 = Bw.reshape(H, W * Ch)
    for r in range(H):
        xr = x2[r]
        br = b2[r]
        if Ch == 3:
            # RGB: the channel sums in one loop of fixed stride, which the compiler unrolls
            # (measured: 18 µs against 27 µs per 128x128 image, one thread)
            for c in range(W):
                t = 3 * c
                row[c] = (((xr[t] - off) * inv) * br[t] + ((xr[t + 1] - off) * inv) * br[t + 1]
                          + ((xr[t + 2] - off) * inv) * br[t + 2])
        else:
            # the row's products in one vectorised loop, then one channel sum per pixel
            for t in range(W * Ch):
                row[t] = ((xr[t] - off) * inv) * br[t]
            if Ch > 1:
                for c in range(W):
                    v = row[c * Ch]
                    for ch in range(1, Ch):
                        v += row[c * Ch + ch]
                    row[c] = v
        run = 0.0
        sat[r + 1, 0] = 0.0
        prev = sat[r]
        cur = sat[r + 1]
        for c in range(W):
            run += row[c]
            cur[c + 1] = prev[c + 1] + run
    if with_moments:
        _add_moments(x, off, inv, SX, SXX)
    return sat[H, W]


@nb.njit(**_OPTS)
def _logits(corr, sat, logA, boxB2, F2, h, w, xb2, out, skip, gain):
    """Write the logits of every (face, corner) into ``out`` (C, P, Q); return (max, flat argmax).

    ``xb2`` (P, Q) is scratch: the class-free part ``2·box(x'·λB) - box(λB²)``.
    A face with ``skip[c]`` (its posterior is bounded below exp underflow, `sparse_faces`)
    gets logits -inf and its correlations are not read; every other face's
    ``max_d -L(c, d)`` goes to ``gain[c]`` (over every corner, also where log A = -inf).
    """
    C, P, Q = out.shape
    for i in range(P):
        for j in range(Q):
            xb = fm.window_total(sat[i + h, j + w], sat[i, j + w], sat[i + h, j], sat[i, j])
            xb2[i, j] = fm.class_free(xb, boxB2[i, j])
    mx = -np.inf
    am = 0
    for c in range(C):
        if skip[c]:
            for i in range(P):
                for j in range(Q):
                    out[c, i, j] = -np.inf
            continue
        f2 = F2[c]
        g = -np.inf
        for i in range(P):
            for j in range(Q):
                L = fm.expanded_loss(f2, corr[c, i, j], xb2[i, j])
                if -L > g:
                    g = -L
                la = logA[c, i, j]
                if la == -np.inf:
                    v = -np.inf
                else:
                    v = la - L
                out[c, i, j] = v
                if v > mx:
                    mx = v
                    am = (c * P + i) * Q + j
        gain[c] = g
    return mx, am


@nb.njit(**_OPTS)
def _delta(x, off, inv, F, B, lam, c, i, j, cs, i0, j0):
    """Σ_ch λ_ch Σ_pixels (r_(c,d)² - r_(c*,d*)²): the difference of two mean images' residuals.

    Pixels outside both windows have the same residual x' - B in both and add
    nothing, so only the union of the two windows is summed: no large term
    cancels against another.
    """
    Ch = x.shape[2]
    h, w = F.shape[1], F.shape[2]
    r0 = min(i, i0)
    r1 = max(i, i0) + h
    c0 = min(j, j0)
    c1 = max(j, j0) + w
    total = 0.0
    for r in range(r0, r1):
        for cc in range(c0, c1):
            in1 = i <= r < i + h and j <= cc < j + w
            in0 = i0 <= r < i0 + h and j0 <= cc < j0 + w
            if not (in1 or in0):
                continue
            for ch in range(Ch):
                v = (x[r, cc, ch] - off) * inv
                total += fm.loss_term(lam[ch], v, F[c, r - i, cc - j, ch] if in1 else B[r, cc, ch],
                                      F[cs, r - i0, cc - j0, ch] if in0 else B[r, cc, ch])
    return total


@nb.njit(**_OPTS)
def _top_joint(x, off, inv, F, B, lam, la, log_const, i, j):
    """log p(x, c, d | θ) of one (face, position), from the residual of its mean image, summed directly.

    ``log_const + log A - Σ_ch λ_ch (Σ_outside (x' - B)² + Σ_window (x' - F_c)²)``: a sum of
    squares with no cancellation, where the expanded form subtracts two large
    numbers when 1/(2s²) is large.
    """
    H, W, Ch = x.shape
    h, w = F.shape[0], F.shape[1]
    total = 0.0
    for r in range(H):
        for c in range(W):
            inside = i <= r < i + h and j <= c < j + w
            for ch in range(Ch):
                v = (x[r, c, ch] - off) * inv
                d = v - (F[r - i, c - j, ch] if inside else B[r, c, ch])
                total += lam[ch] * (d * d)
    return log_const + la - total


@nb.njit(**_OPTS)
def _window_loss(x, off, inv, F, B, lam, i, j):
    """L(c, d) = Σ_ch λ_ch Σ_window (x' - F_c)² - (x' - B)², summed directly."""
    h, w, Ch = F.shape
    total = 0.0
    for a in range(h):
        for b in range(w):
            for ch in range(Ch):
                v = (x[i + a, j + b, ch] - off) * inv
                total += fm.loss_term(lam[ch], v, F[a, b, ch], B[i + a, j + b, ch])
    return total


#: above this many nats of rounding in ``log_const - Σ λ ||x' - B||²`` (expanded as
#: ``Σ λ ||x'||² - 2 Σ λ <x', B> + Σ λ ||B||²``), the best joint is summed directly over the
#: whole image instead of over its window
FRAME_EXACT = 1e-9

#: The expanded logits carry a rounding error of about
#: ``err = rel_eps · Σ_ch λ_ch (||F||² + ||x'||² + ||B||²)`` nats. When `err`
#: exceeds REFINE_ABOVE nats, the logits within ``band + 2·err`` nats of the
#: best are recomputed by direct sums (see `_refine`).
REFINE_ABOVE = 1e-6


@nb.njit(**_OPTS)
def _refine(x, off, inv, F, B, lam, logA, err, band, exact, out, mx, am):
    """Recompute the logits near the maximum directly when the fast ones are imprecise.

    At low noise λ = 1/(2s²) magnifies the rounding of the expanded sums, and
    in float32 so does the correlations' precision; the (face, corner) pairs
    that carry the posterior are few then, and their logits are summed over
    their windows directly (`_window_loss`). When even those sums are too large
    for float64 (`exact`: λ·||x' - B||² beyond ~1e7), each leading pair gets
    its log joint *relative to the current best* (c*, d*) instead, summed over
    the union of the two windows (`_delta`), so q is exact however large λ
    is; the others are made relative too. Returns the new maximum and
    arg-maximum, and the reference (c*, i*, j*) whose joint is 0 in the
    relative frame (c* = -1 when the logits stay absolute).
    """
    C, P, Q = out.shape
    cs, i0, j0 = fm.decode(am, P, Q)
    la0 = logA[cs, i0, j0]
    cut = mx - band - 2.0 * err
    nmx = -np.inf
    nam = am
    for c in range(C):
        for i in range(P):
            for j in range(Q):
                v = out[c, i, j]
                if v > cut:
                    if exact:
                        v = (logA[c, i, j] - la0) - _delta(x, off, inv, F, B, lam, c, i, j, cs, i0, j0)
                    else:
                        v = logA[c, i, j] - _window_loss(x, off, inv, F[c], B, lam, i, j)
                elif exact:
                    v = v - mx
                out[c, i, j] = v
                if v > nmx:
                    nmx = v
                    nam = (c * P + i) * Q + j
    return nmx, nam, (cs if exact else -1), i0, j0


@nb.njit(**_OPTS)
def _neighbour_gains(corr, xb2, F2, c, i, j, offsets, out):
    """``L(c, d) - L(c, d + δ)`` for each δ of `offsets` (the pose's `neighbours`), -inf off the grid.

    From the expanded sums, which exist whatever log A is: the shift escape's
    ranking of moves leaves the prior out.
    """
    C, P, Q = corr.shape
    top = fm.expanded_loss(F2[c], corr[c, i, j], xb2[i, j])
    for t in range(offsets.shape[0]):
        ii = i + offsets[t, 0]
        jj = j + offsets[t, 1]
        if fm.in_grid(ii, jj, P, Q):
            out[t] = top - fm.expanded_loss(F2[c], corr[c, ii, jj], xb2[ii, jj])
        else:
            out[t] = -np.inf


#: exp(x) underflows to exactly 0.0 in float64 below x = -745.14; entries that
#: far below the best get q = 0 without calling exp, bit for bit as exp would.
LOG_CUTOFF = -745.2


@nb.njit(**_OPTS)
def _posterior(o, mx, extra, thr, nz):
    """Turn the flat logits ``o`` into q in place, with one more logit `extra` beside them (the "no face"
    class; -inf without it).

    Returns (logsumexp, entropy, max prob over ``o``, #q > thr, #q > 0, q of `extra`, E_q[logit]).
    `mx` is the maximum over ``o`` and `extra`. One exponential per entry
    (none where it would underflow), kept and then scaled by 1/sum. The
    entropy is ``log z - Σ e (l - max) / z``; entries with q = 0 (including
    log A = -inf) contribute nothing. The indices of the non-zero entries go
    to `nz`, so the sums that follow visit only those (a few, once the
    posteriors are peaked, out of C·P·Q).
    """
    M = o.shape[0]
    z = 0.0
    el = 0.0
    nnz = 0
    for t in range(M):
        d = o[t] - mx
        if d > LOG_CUTOFF:
            e = math.exp(d)
            z += e
            el += e * d
            o[t] = e
            nz[nnz] = t
            nnz += 1
        else:
            o[t] = 0.0
    qe = 0.0
    d = extra - mx
    if d > LOG_CUTOFF:
        qe = math.exp(d)
        z += qe
        el += qe * d
    logz = math.log(z)
    iz = 1.0 / z
    ent = fm.softmax_entropy(logz, el * iz)
    cnt = 0
    qmax = 0.0
    for u in range(nnz):
        t = nz[u]
        q = o[t] * iz
        if q > thr:
            cnt += 1
        if q > qmax:
            qmax = q
        o[t] = q
    return mx + logz, ent, qmax, cnt, nnz, qe * iz, mx + el * iz


@nb.njit(**_OPTS)
def _bg_rss(x, off, inv, B, lam):
    """Σ_ch λ_ch ||x' - B_ch||², summed directly (the "no face" residual where the expanded sum loses digits)."""
    H, W, Ch = x.shape
    total = 0.0
    for r in range(H):
        for c in range(W):
            for ch in range(Ch):
                d = (x[r, c, ch] - off) * inv - B[r, c, ch]
                total += lam[ch] * (d * d)
    return total


def fused_pass(
    X, off, inv, corr, out, logA, boxB2, Bw, B, lam, F, F2, BBw, log_const, log_empty, hard, mode, thr,
    max_sparse, rel_eps, band, with_moments, sq, have_sq, offsets, N_part, SF_part, XC_part, SX_part, SXX_part,
    dense, pos, ll, maxp, ent, cprob, near, chi2, qe, skip, gain, best, best_gain, dense_faces,
):
    """One E-step and the M-step sums for a chunk.

    Parameters
    ----------
    X : (n, H, W, Ch) raw images (any real dtype); x' = (X - off) * inv.
    corr : (n, C, P, Q) the λ-weighted correlations Σ_ch λ_ch x'_ch ⋆ F_c,ch (float32 or float64).
    out : (n, C, P, Q) float64; receives q (mode 0) or log p(x_k, c, d | θ) (mode 1).
        Not the same array as `corr`: the neighbour gains read `corr` after the logits are written.
    logA : (C, P, Q); boxB2 : (P, Q) = box(Σ_ch λ_ch B_ch²)
    Bw, B : (H, W, Ch) float64, λ·B and B; lam : (Ch,) = 1/(2 s_ch²)
    F : (C, h, w, Ch) float64; F2 : (C,) = Σ_ch λ_ch ||F_c,ch||²
    BBw, log_const : float
        Σ_ch λ_ch ||B_ch||² and -HW/2 Σ_ch log(2π s_ch²).
    log_empty : float
        log π_∅ of the "no face" class (-inf without it): its logit, one more
        entry of the softmax or argmax (flat index C·P·Q); its mean image is B,
        so it adds to N_empty (through `qe`) and to no face or coverage sum.
    hard : bool
    mode : int
        0: posterior and sums; 1: only the log joint (no sums).
    thr : float
        Smallest q that counts in the sparse sums.
    max_sparse : int
        Images with more (face, corner) pairs above `thr` than this many per face
        they reach (a face with some q above `thr`) go to the dense route, whose
        cost is one FFT per face reached.
    rel_eps, band : float
        Relative rounding of the correlations (about 1e-13 in float64, 1e-6 in
        float32) and the band of nats below the best in which logits are
        recomputed directly when the rounding is large (see `REFINE_ABOVE`):
        40 in float64 (q exact to float64), 2 in float32 (the arg-max and the
        leading q exact).
    with_moments : bool
        Also add Σ_k x' to SX_part and Σ_k ||x'||² to SXX_part.
    sq : (n, Ch) float64
        Each image's ||x'_ch||²: read when `have_sq`, else written (the chunk keeps them).
    have_sq : bool
    offsets : (m, 2) int64
        The neighbouring corners' offsets (the pose's `neighbours`), in the order of `near`.
    N_part, SF_part, XC_part, SX_part, SXX_part : (n_blocks, ...) float64, zeroed
        Partial sums, one per block.
    dense : (n,) uint8, out -- 1 where the dense route must finish S_F and XC.
    dense_faces : (n, C) uint8, out -- soft EM: 1 for the faces with some q above `thr`
        (the others add nothing measurable to S_F: the dense route leaves them out too).
    pos : (n,) int64, out -- flat argmax over (C, P, Q).
    ll, maxp, ent : (n,) float64, out. cprob : (n, C) float64, out.
    near : (n, m) float64, out -- the prior-free gains of the neighbouring corners (`_neighbour_gains`);
        -inf where "no face" wins.
    chi2 : (n,) float64, out -- ``E_q Σ_ch ||x' - μ||² / s_ch²`` (`kernels.expected_residual`), here as
        ``2 (log_const - frame + E_q[log A] - E_q[logit])``: the joint is ``logit + frame``.
    qe : (n,) float64, out -- the posterior of "no face" (0 without it).
    skip : (n, C) uint8
        1 where face c's correlations were not computed for image k: its
        logits are -inf (`sparse_faces` has bounded them below exp underflow).
    gain : (n, C) float64, out -- ``max_d -L_k(c, d)`` of every face not skipped (skipped: untouched).
    best, best_gain : (n,) int64 and float64, out -- the flat arg-max over the faces' logits
        (the "no face" class left out, before any refinement) and its ``-L``.
    """
    n, H, W, Ch = X.shape
    C, P, Q = logA.shape
    M = C * P * Q
    h, w = F.shape[1], F.shape[2]
    n_blocks = N_part.shape[0]
    logAf = logA.reshape(M)
    for blk in nb.prange(n_blocks):
        k0 = (blk * n) // n_blocks
        k1 = ((blk + 1) * n) // n_blocks
        sat = np.empty((H + 1, W + 1))
        row = np.empty(W * Ch)
        xb2 = np.empty((P, Q))
        nz = np.empty(M, dtype=np.int64)
        Nb = N_part[blk].reshape(M)
        SFb = SF_part[blk]
        XCb = XC_part[blk]
        for k in range(k0, k1):
            x = X[k]
            xb = _summed_area_xb(x, off, inv, Bw, sat, row, SX_part[blk], SXX_part[blk], with_moments)
            if not have_sq:
                _sq_norms(x, off, inv, sq[k])
            xx = 0.0
            for ch in range(Ch):
                xx += lam[ch] * sq[k, ch]
            # Σ_ch λ_ch ||x'_ch - B_ch||², from the image's norms and the SAT's total
            rss = xx - 2.0 * xb + BBw
            o = out[k]
            mx, am = _logits(corr[k], sat, logA, boxB2, F2, h, w, xb2, o, skip[k], gain[k])
            bc, bi, bj = fm.decode(am, P, Q)
            best[k] = am
            if skip[k, bc]:  # every logit -inf: no face was computed to be the best
                best_gain[k] = -np.inf
            else:
                best_gain[k] = -fm.expanded_loss(F2[bc], corr[k, bc, bi, bj], xb2[bi, bj])
            f2max = 0.0
            for c in range(C):
                f2max = max(f2max, F2[c])
            err = rel_eps * (f2max + xx + BBw)
            # the logits o plus `frame` are log p(x, c, d | θ)
            frame = log_const - rss
            rc = -1
            if err > REFINE_ABOVE and mx > -np.inf:
                # so large a norm that log_const - rss itself would lose digits: the relative frame
                exact = (xx + BBw) * 1.1e-16 > FRAME_EXACT
                mx, am, rc, ri, rj = _refine(x, off, inv, F, B, lam, logA, err, band, exact, o, mx, am)
                if rc >= 0:
                    frame = _top_joint(x, off, inv, F[rc], B, lam, logA[rc, ri, rj], log_const, ri, rj)
            # the "no face" logit in the logits' frame: log π_∅ + (log_const - Σ λ ||x' - B||²) - frame
            le = -np.inf
            if log_empty > -np.inf:
                le = log_empty
                if rc >= 0:
                    le = log_empty + (log_const - _bg_rss(x, off, inv, B, lam)) - frame
            # the joint is logit + frame and log_const + log A - Σ λ ||x' - μ||²: la_sub - logit is the residual
            la_sub = log_const - frame
            ac, ai, aj = fm.decode(am, P, Q)
            if le > mx and mode != 1:  # the log joints (mode 1) are over (face, position), as the array route's
                mx = le
                am = M
                for t in range(offsets.shape[0]):
                    near[k, t] = -np.inf
            else:
                _neighbour_gains(corr[k], xb2, F2, ac, ai, aj, offsets, near[k])
            pos[k] = am
            of = o.reshape(M)
            if mode == 1:
                for t in range(M):
                    of[t] += frame
                ll[k] = mx + frame
                maxp[k] = np.nan
                ent[k] = np.nan
                chi2[k] = np.nan
                qe[k] = np.nan
                continue
            if hard:
                for t in range(M):
                    of[t] = 0.0
                ll[k] = mx + frame
                maxp[k] = 1.0
                ent[k] = 0.0
                for c in range(C):
                    cprob[k, c] = 0.0
                dense[k] = 0
                if am == M:
                    qe[k] = 1.0
                    chi2[k] = fm.expected_chi2(la_sub, log_empty - le)
                else:
                    qe[k] = 0.0
                    chi2[k] = fm.expected_chi2(la_sub, logA[ac, ai, aj] - mx)
                    o[ac, ai, aj] = 1.0
                    Nb[am] += 1.0
                    cprob[k, ac] = 1.0
                    _add_crop(x, off, inv, 1.0, ai, aj, SFb[ac], XCb)
            else:
                lse, e, qmax, cnt, nnz, q0, mean_logit = _posterior(of, mx, le, thr, nz)
                ll[k] = lse + frame
                maxp[k] = q0 if am == M else qmax
                ent[k] = e
                qe[k] = q0
                for c in range(C):
                    cprob[k, c] = 0.0
                mean_la = q0 * log_empty if q0 > 0.0 else 0.0
                for u in range(nnz):
                    t = nz[u]
                    Nb[t] += of[t]
                    cprob[k, t // (P * Q)] += of[t]  # the face of flat index t (`_formulas.decode`)
                    mean_la += of[t] * logAf[t]
                chi2[k] = fm.expected_chi2(la_sub, mean_la - mean_logit)
                # the faces with a probability above `thr`: the dense route transforms only those
                reached = 0
                for c in range(C):
                    dense_faces[k, c] = 0
                for u in range(nnz):
                    t = nz[u]
                    if of[t] > thr and dense_faces[k, t // (P * Q)] == 0:
                        dense_faces[k, t // (P * Q)] = 1
                        reached += 1
                if cnt <= max_sparse * reached:
                    _add_crops_at(x, off, inv, of, nz, nnz, thr, P, Q, SFb, XCb)
                    dense[k] = 0
                else:
                    dense[k] = 1


serial_and_parallel(globals(), ("fused_pass",))

#: every kernel with a parallel loop, here and in `_numba_sums` (whose kernels are also names of this
#: module), each with its serial twin ``<name>_serial``: `pick` chooses between them
_PARALLEL = ("fused_pass",) + _numba_sums.PARALLEL
for _name in _numba_sums.PARALLEL:
    globals()[_name] = getattr(_numba_sums, _name)
    globals()[_name + "_serial"] = getattr(_numba_sums, _name + "_serial")
del _name

#: below this many multiply-adds (about 0.1 ms of work) a chunk's kernel runs serially. Measured
#: on 2 cores (soft EM, float64, 128x128, 48x48 face, K = 2,000, passive OpenMP workers): 0.10 s
#: per iteration at 200k, 0.15 s at 1M, 0.11 s at 50k; 8 faces 0.55 s, 0.63 s and 0.76 s.
SERIAL_BELOW = 200_000


def pick(name, work, n_blocks):
    """The parallel kernel, or its serial twin when there is one block or too little work."""
    serial = n_blocks <= 1 or work < SERIAL_BELOW
    return globals()[name + "_serial" if serial else name]
