"""Brightness that changes from frame to frame: a gain and an offset per image (MODEL.md).

Image k is the model's mean image scaled and shifted, ``X_k = a_k·μ_(c,d) + b_k + N(0, s²)``,
with one (a_k, b_k) per image, or one per channel and image ("white balance").
A *group* is the set of channels that share a gain and an offset: one group
(all channels) or one per channel. Gains and offsets are (n, G) arrays in
working units.

Given (a, b), with ``r = x - b`` and λ = 1/(2 s²), the λ-weighted expanded loss
of a (face, position) relative to the background alone is, per group g,

    L(c, d) = Σ_g [ a²·FF_cg - 2a·corr_cg(d) + 2ab·SF_cg + box(2a·XB_g - 2ab·LB_g - a²·BB_g)(d) ]

with ``corr_cg = Σ_(ch∈g) λ x_ch ⋆ F_c,ch`` from the cached spectra (no extra FFT),
``FF_cg = Σ λ||F_c,ch||²``, ``SF_cg = Σ λ ΣF_c,ch`` and the images ``XB = Σ λ x B``,
``LB = Σ λ B``, ``BB = Σ λ B²``. With a = 1, b = 0 it is the note's loss
(`kernels.logits`). The pass then updates (a, b) per image by the 2×2 normal
equations of ``min E_q Σ λ ||x - a μ - b||²`` (posterior averages of the same
per-position quantities) with the θ that produced q, and adds the image's
sums weighted by the new (a, b): an ECM step, so the bound never decreases.

The M-step's sums become ``S_F = Σ_k a_k Σ_d q_k(d) (x_k - b_k)|_d``,
``SX = Σ_k a_k (x_k - b_k)``, ``XC = Σ_k a_k (x_k - b_k) ∘ cov_k``,
``SXX = Σ_k ||x_k - b_k||²``, with the normalisers ``NW = Σ_k a_k² q_k``
(in place of N for F and the coverage) and ``KW = Σ_k a_k²`` (in place of K
for B); N itself (the prior's counts) stays unweighted. `normalize` then fixes
mean(a) = 1 and mean(b) = 0 by an exact reparametrisation of F and B.

This pass runs the numpy kernels of `kernels` whatever the engine's backend.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import kernels
from .chunk import Chunk, chunk_spectra, standardized

__all__ = ["BRIGHTNESS", "GAIN_MIN", "brightness_pass", "group_map", "normalize", "weighted_normalisers",
           "brightness_test", "probe_gains", "probe_frames", "probe_sample", "TEST_LEVEL", "TEST_FRAMES",
           "start_gains"]

#: the values of the estimator's option
BRIGHTNESS = ("auto", "fixed", "per_image", "per_channel")

#: the "auto" test's level: per-image brightness is fitted when the note's model is rejected at it
TEST_LEVEL = 1e-3

#: the frames the "auto" test reads (`probe_frames`): a sample of this size spread over the stack, so the
#: test costs the same whatever K (all frames of a smaller stack)
TEST_FRAMES = 256

#: the fewest chunks the sample is spread over (when the stack has that many)
_TEST_MIN_CHUNKS = 8

#: the smallest gain: a gain is positive; a frame whose best gain would be below this gets this one
GAIN_MIN = 1e-3


def group_map(n_channels, n_groups):
    """The group of each channel: all in group 0 (one gain per image), or each its own."""
    if n_groups == 1:
        return np.zeros(n_channels, dtype=np.int64)
    if n_groups != n_channels:
        raise ValueError(f"gains must have 1 or {n_channels} columns (one per channel), got {n_groups}")
    return np.arange(n_channels)


def _group_sum(v, gmap, n_groups, axis):
    """Sum an array's channel axis `axis` into groups (`group_map`: one group, or one per channel)."""
    if n_groups == v.shape[axis]:  # one group per channel (or one channel): nothing to add
        return np.asarray(v, dtype=np.float64)
    return np.sum(v, axis=axis, keepdims=True, dtype=np.float64)


def _theta_terms(plan, gmap, G):
    """What θ gives per group: FF (C, G), SF (C, G), box LB and BB (G, P, Q), and whole-image sums."""
    p = plan.params
    lam = plan.lam
    F = p.faces
    B = p.background
    lamc = lam[:, None, None]
    h, w = p.face_shape
    H, W = p.image_shape
    FF = _group_sum(np.einsum("d,cdij->cd", lam, F * F), gmap, G, 1)
    SF = _group_sum(np.einsum("d,cdij->cd", lam, F), gmap, G, 1)
    LB = _group_sum(lamc * B, gmap, G, 0)
    BB = _group_sum(lamc * B * B, gmap, G, 0)
    return SimpleNamespace(
        FF=FF, SF=SF, box_LB=plan.pose.window_sums(LB), box_BB=plan.pose.window_sums(BB),
        LBsum=LB.sum(axis=(1, 2)), BBsum=BB.sum(axis=(1, 2)), M1=_group_sum(lam * H * W, gmap, G, 0))


def _correlations(x, xhat, plan, gmap, G):
    """``corr[k, c, g] = Σ_(ch∈g) λ_ch (x_k,ch ⋆ F_c,ch)``, (n, C, G, P, Q) float64: one inverse FFT per group."""
    P, Q = plan.grid_shape
    out = []
    for g in range(G):
        chs = np.flatnonzero(gmap == g)
        sl = slice(int(chs[0]), int(chs[-1]) + 1)
        if plan.route == "fft":
            cg = kernels.correlate_fft(xhat[:, sl], plan.filters[:, sl], (P, Q), plan.image_shape,
                                       idft_rows=plan.idft_rows, workers=plan.workers)
        else:
            cg = kernels.correlate_direct(x[:, sl].astype(plan.dtype), plan.faces_w[:, sl].astype(plan.dtype),
                                          (P, Q))
        out.append(np.asarray(cg, dtype=np.float64))
    return np.stack(out, axis=2)


def _image_terms(x, xhat, plan, gmap, G):
    """Per image and group: the correlations, box(XB) (n, G, P, Q), and Σλ<x,B>, Σλ Σx, Σλ||x||² (n, G)."""
    lamc = plan.lam[:, None, None]
    B = plan.params.background
    XB = _group_sum(x * (lamc * B), gmap, G, 1)  # (n, G, H, W)
    return SimpleNamespace(
        corr=_correlations(x, xhat, plan, gmap, G),
        box_XB=plan.pose.window_sums(XB),
        XBsum=XB.sum(axis=(2, 3)),
        Xsum=_group_sum(np.einsum("d,ndij->nd", plan.lam, x), gmap, G, 1),
        XX=_group_sum(np.einsum("d,ndij->nd", plan.lam, x * x), gmap, G, 1))


def _loss(th, im, a, b, log_const):
    """The loss L (n, C, P, Q) of every (face, position) given (a, b), and ``base = log p(x | ∅ mean B)``."""
    aa, ab = a * a, a * b  # (n, G)
    L = (np.einsum("ng,cg->nc", aa, th.FF) + 2.0 * np.einsum("ng,cg->nc", ab, th.SF))[:, :, None, None]
    L = L - 2.0 * np.einsum("ng,ncgpq->ncpq", a, im.corr)
    box = (2.0 * a[:, :, None, None] * im.box_XB - 2.0 * ab[:, :, None, None] * th.box_LB[None]
           - aa[:, :, None, None] * th.box_BB[None]).sum(axis=1)
    L = L + box[:, None]
    rss = im.XX - 2.0 * a * im.XBsum - 2.0 * b * im.Xsum + aa * th.BBsum + 2.0 * ab * th.LBsum + b * b * th.M1
    return L, log_const - rss.sum(axis=1)


def _solve(th, im, q, a_old, b_old=None):
    """The (a, b) that minimise ``E_q Σ_(ch∈g) λ ||x - a μ - b||²`` per image and group (n, G) each.

    The 2×2 normal equations in ``E_q Σλ<x, μ>``, ``E_q Σλ||μ||²``, ``E_q Σλ Σμ``,
    ``Σλ Σx`` and ``Σλ·HW``. Where μ is constant under q (no contrast: the
    system is singular) the gain stays; a gain below `GAIN_MIN` is held at it,
    with its best offset (the constrained minimum of a convex quadratic).
    """
    qd = q.sum(axis=1)                          # (n, P, Q)
    qc = q.sum(axis=(2, 3))                     # (n, C)
    Mxm = im.XBsum + np.einsum("ncpq,ncgpq->ng", q, im.corr) - np.einsum("npq,ngpq->ng", qd, im.box_XB)
    Mmm = th.BBsum + qc @ th.FF - np.einsum("npq,gpq->ng", qd, th.box_BB)
    Mm = th.LBsum + qc @ th.SF - np.einsum("npq,gpq->ng", qd, th.box_LB)
    return _normal_solve(Mxm, Mmm, Mm, im.Xsum, th.M1, a_old, b_old)


def _normal_solve(Mxm, Mmm, Mm, Mx, M1, a_old, b_old=None):
    """The 2×2 solve from the moments (n, G) (see `_solve`), and what it lowered the expected loss, (n,)."""
    det = Mmm * M1 - Mm * Mm
    ok = det > 1e-12 * np.abs(Mmm * M1)
    a = np.where(ok, (Mxm * M1 - Mm * Mx) / np.where(ok, det, 1.0), a_old)
    a = np.maximum(a, GAIN_MIN)
    b = (Mx - a * Mm) / M1

    def expected_loss(a, b):  # E_q Σλ||x - aμ - b||² but for the Σλ||x||² that does not depend on (a, b)
        return (-2.0 * a * Mxm - 2.0 * b * Mx + a * a * Mmm + 2.0 * a * b * Mm + b * b * M1).sum(axis=1)

    gain = None if b_old is None else np.maximum(expected_loss(a_old, b_old) - expected_loss(a, b), 0.0)
    return a, b, gain


def probe_gains(chunk, params, positions, labels):
    """What fitting (a, b) per image would gain at θ, with each image at its most probable (face, position).

    For `brightness_test` after a fit of the note's model: with each image's
    mean image μ at its (label, position) (label -1: "no face", μ = B), the
    2×2 solve from a = 1, b = 0 gives how much it lowers
    ``Σ_ch ||x - a μ - b||² / (2 s_ch²)``: the rise of the MAP joint
    ``max_d log p(x, d | a, b, θ)`` it guarantees (one shared gain per image;
    no FFT, no posterior, no copy of the images: one product with B and two
    h×w crops per image).

    Parameters
    ----------
    chunk : Chunk
    params : Params, working units
    positions : int ndarray (n, 2); labels : int ndarray (n,)

    Returns
    -------
    ndarray (n,)
    """
    r = chunk.data  # raw (n, H, W, Ch); working units x = (r - o)·v: sums of x from sums of r
    o, v = float(chunk.offset), float(chunk.inv_scale)
    n, H, W, Ch = r.shape
    lam = 1.0 / (2.0 * params.noise_std ** 2)
    B = np.moveaxis(params.background, 0, -1)  # (H, W, Ch)
    sums = _frame_sums(r, B)
    r_sum = sums[:, :Ch]  # Σ r per channel
    r_mu = sums[:, Ch:]  # Σ r∘μ, μ = B so far: the window's share is added below
    mu_sum = np.repeat(B.sum(axis=(0, 1))[None], n, axis=0)  # Σ μ
    mu_sq = np.repeat(np.einsum("ijd,ijd->d", B, B)[None], n, axis=0)  # ||μ||²
    _add_windows(r, B, np.moveaxis(params.faces, 1, -1), positions, labels, r_mu, mu_sum, mu_sq)
    x_sum = v * (r_sum - o * H * W)
    x_mu = v * (r_mu - o * mu_sum)
    ones = np.ones((n, 1))
    _, _, gain = _normal_solve((x_mu @ lam)[:, None], (mu_sq @ lam)[:, None], (mu_sum @ lam)[:, None],
                               (x_sum @ lam)[:, None], np.array([lam.sum() * H * W]), ones, 0.0 * ones)
    return gain


def _frame_sums(r, B):
    """Σ r and Σ r∘B per channel over whole frames r (n, H, W, Ch), (n, 2·Ch) float64, in one matrix
    product: columns d of M pick channel d, columns Ch + d weigh it by B."""
    n, H, W, Ch = r.shape
    M = np.zeros((H * W * Ch, 2 * Ch))
    for d in range(Ch):
        M[d::Ch, d] = 1.0
        M[d::Ch, Ch + d] = B[..., d].ravel()
    return r.reshape(n, -1).astype(np.float64, copy=False) @ M


def _add_windows(r, B, F, positions, labels, r_mu, mu_sum, mu_sq):
    """Replace B by the face F[c] (C, h, w, Ch) in each frame's window at its (label, position), in place:
    ``Σ r∘μ += Σ_win r∘(F_c - B)``, ``Σ μ += Σ_win (F_c - B)``, ``||μ||² += Σ_win (F_c² - B²)``.
    Label -1 ("no face") leaves μ = B. One h×w slice of r and of B per frame (no copy of the frames)."""
    h, w = F.shape[1:3]
    F_sum = np.einsum("cijd->cd", F)
    F_sq = np.einsum("cijd,cijd->cd", F, F)
    for k in np.flatnonzero(np.asarray(labels) >= 0):
        c, i, j = int(labels[k]), int(positions[k, 0]), int(positions[k, 1])
        B_win = B[i:i + h, j:j + w]
        r_mu[k] += np.einsum("ijd,ijd->d", r[k, i:i + h, j:j + w], F[c] - B_win)
        mu_sum[k] += F_sum[c] - np.einsum("ijd->d", B_win)
        mu_sq[k] += F_sq[c] - np.einsum("ijd,ijd->d", B_win, B_win)


def probe_frames(bounds, size=None):
    """The frames of the "auto" test: ``[(chunk number, frames), ...]``, the first `frames` of each chunk.

    Every frame when the stack has at most `size`; else about `size` frames:
    the first frames of each of ``max(8, ⌈size / chunk length⌉)`` chunks evenly
    spaced over the stack (only those chunks are read). The choice depends on
    the stack's shape alone, never on its values: under the note's model the
    sample's statistic is χ² with 2·(frames in the sample) degrees of freedom,
    as the whole stack's is with 2K, so the test keeps its level.

    Parameters
    ----------
    bounds : list of (start, stop)
        The source's chunks, in order.
    size : int, optional
        Default `TEST_FRAMES`.

    Returns
    -------
    list of (int, int)
    """
    size = TEST_FRAMES if size is None else int(size)
    K = bounds[-1][1] if bounds else 0
    if K <= size:
        return [(i, b - a) for i, (a, b) in enumerate(bounds)]
    longest = max(b - a for a, b in bounds)
    k = min(len(bounds), max(_TEST_MIN_CHUNKS, -(-size // longest)))
    ids = np.unique(np.round(np.linspace(0, len(bounds) - 1, k)).astype(np.int64))
    per = -(-size // len(ids))
    out = []
    for i in ids:
        a, b = bounds[i]
        out.append((int(i), min(per, b - a)))
    return out


def probe_sample(source, params, positions, labels, size=None):
    """`probe_gains` summed over the test's sample of a source's frames (`probe_frames`).

    Parameters
    ----------
    source : ArraySource (or any source with ``bounds`` and ``chunk(i)``)
    params : Params, working units
    positions : int ndarray (K, 2); labels : int ndarray (K,)
        Every frame's most probable position and face.
    size : int, optional
        Default `TEST_FRAMES`.

    Returns
    -------
    (float, int)
        The summed gain and the number of frames it sums.
    """
    gain, n = 0.0, 0
    for i, m in probe_frames(source.bounds, size):
        a = source.bounds[i][0]
        chunk = source.chunk(i)
        sub = Chunk(np.asarray(chunk.data)[:m], chunk.offset, chunk.inv_scale)
        gain += float(probe_gains(sub, params, positions[a:a + m], labels[a:a + m]).sum())
        n += m
    return gain, n


def _channels(v, gmap):
    """A per-group (n, G) array per channel, (n, Ch)."""
    return v[:, gmap]


def _crop_sums(chunk, qw, plan, rows, stats_from_q):
    """S_F (C, Ch, h, w) and XC (Ch, H, W) of ``Σ_k x_k ⋆ qw_k`` for the images `rows`, by the fused
    kernels' crops (`stats_from_q`: `estep.stats_from_q`, which skips negligible q)."""
    sub = Chunk(np.ascontiguousarray(chunk.data[rows]), chunk.offset, chunk.inv_scale)
    st = stats_from_q(sub, qw[rows], plan.pose, backend="numba", workers=plan.workers, with_moments=False)
    return st.S_F, st.XC


def _face_sums_weighted(chunk, x, xhat, qw, plan, crop_sums):
    """``Σ_k x_k ⋆ qw_k`` and ``Σ_k x_k ∘ (qw_k ⊛ 1)`` for weighted posteriors qw (n, C, P, Q), one group
    of channels: crops for images whose q has at most `plan.max_sparse` non-negligible entries (as the
    fused pass), the frequency domain for the others (all of them without `crop_sums`)."""
    n = len(qw)
    Ch = x.shape[1]
    H, W = plan.image_shape
    C = plan.n_faces
    h, w = plan.face_shape
    S_F, S_F_hat, XC = np.zeros((C, Ch, h, w)), None, np.zeros((Ch, H, W))
    if plan.backend == "numba" and crop_sums is not None:
        nnz = np.count_nonzero(qw.reshape(n, -1) > crop_sums[1], axis=1)
    else:  # the array-API route sums in the frequency domain
        nnz = np.full(n, plan.max_sparse + 1)
    sparse = np.flatnonzero(nnz <= plan.max_sparse)
    dense = np.flatnonzero(nnz > plan.max_sparse)
    if sparse.size:
        S_F, XC = _crop_sums(chunk, qw, plan, sparse, crop_sums[0])
    if dense.size:
        _, _, S_F_hat, XCd = kernels.accumulate(x[dense], qw[dense], plan.pose,
                                                xhat=None if xhat is None else xhat[dense], workers=plan.workers)
        XC = XC + XCd
    return S_F, S_F_hat, XC


def _weighted_sums(chunk, x, xhat, q, plan, a, b, gmap, crop_sums):
    """The M-step sums of the chunk weighted by (a, b) (see the module's docstring).

    Linear in the posterior: ``Σ_k a_k (x_k - b_k) ⋆ q_k = Σ_k x_k ⋆ (a_k q_k) - Σ_k a_k b_k (1 ⋆ q_k)``,
    so the face and coverage sums are the note's sums of a_k-weighted posteriors
    (crops or frequency domain, as the pass chooses), less an offset term from
    the small array ``Σ_k a_k b_k q_k``.
    """
    n, Ch, H, W = x.shape
    G = a.shape[1]
    h, w = plan.face_shape
    ach, bch = _channels(a, gmap), _channels(b, gmap)
    S_F = np.zeros((plan.n_faces, Ch, h, w))
    XC = np.zeros((Ch, H, W))
    S_F_hat = None
    for g in range(G):
        chs = np.flatnonzero(gmap == g)
        sl = slice(int(chs[0]), int(chs[-1]) + 1)
        qw = a[:, g, None, None, None] * q
        part = chunk if G == 1 else Chunk(np.ascontiguousarray(chunk.data[..., sl]), chunk.offset, chunk.inv_scale)
        sf, sfh, xc = _face_sums_weighted(part, x[:, sl], None if xhat is None else xhat[:, sl], qw, plan,
                                          crop_sums)
        nab = np.tensordot(a[:, g] * b[:, g], q, axes=(0, 0))  # Σ_k a_k b_k q_k, (C, P, Q)
        S_F[:, sl] = sf - nab.sum(axis=(1, 2))[:, None, None, None]
        XC[sl] = xc - plan.pose.coverage(nab.sum(axis=0))[None]
        if sfh is not None:
            if S_F_hat is None:
                S_F_hat = np.zeros((plan.n_faces, Ch) + sfh.shape[2:], dtype=np.complex128)
            S_F_hat[:, sl] = sfh
    a2 = ach * ach
    NW = np.stack([np.tensordot(a2[:, d], q, axes=(0, 0)) for d in range(Ch)], axis=1)
    xs = x.sum(axis=(2, 3))
    return SimpleNamespace(N=q.sum(axis=0), S_F=S_F, S_F_hat=S_F_hat, XC=XC,
                           SX=np.einsum("nd,ndij->dij", ach, x) - (ach * bch).sum(axis=0)[:, None, None],
                           SXX=(np.einsum("ndij,ndij->d", x, x) - 2.0 * (bch * xs).sum(axis=0)
                                + (bch * bch).sum(axis=0) * H * W),
                           NW=NW, KW=a2.sum(axis=0))


def brightness_pass(chunk, plan, gains, offsets, *, output=None, fit_steps=0, crop_sums=None):
    """One chunk's E-step with per-image brightness, the ECM update of (a, b), and the weighted sums.

    Parameters
    ----------
    chunk : Chunk
    plan : Plan
    gains, offsets : ndarray (n, G)
        Each image's (a, b) in working units, G = 1 or Ch.

    The raw arrays also hold ``ecm_gain``: Σ over the images of what their
    (a, b) update raised the expected complete-data log-likelihood (a lower
    bound of the log-likelihood's rise), the statistic of `brightness_test`.
    output : {None, "q", "log_joint"}
        As `emface.engine.estep.chunk_stats`.
    fit_steps : int
        Alternations of the E-step and the (a, b) update before the pass's own
        E-step (new images, whose brightness is not known: start at a = 1, b = 0).
    crop_sums : (callable, float), optional
        `estep.stats_from_q` and its threshold `estep.Q_THRESHOLD`: the fused
        crops for images whose posteriors are sparse (numba backend). Without
        them every image's sums go through the frequency domain.

    Returns
    -------
    raw : SimpleNamespace
        The arrays `stats._build_stats` reads, plus ``NW``, ``KW`` and the
        updated ``gains`` and ``offsets`` (n, G).
    out : ndarray or None
    """
    x = standardized(chunk, np.float64, use_numba=False)
    xhat = chunk_spectra(chunk, plan, x.astype(plan.dtype, copy=False)) if plan.route == "fft" else None
    a = np.array(gains, dtype=np.float64, copy=True).reshape(chunk.n, -1)
    b = np.array(offsets, dtype=np.float64, copy=True).reshape(chunk.n, -1)
    G = a.shape[1]
    gmap = group_map(x.shape[1], G)
    th = _theta_terms(plan, gmap, G)
    im = _image_terms(x, xhat, plan, gmap, G)
    for _ in range(int(fit_steps)):
        L, _base = _loss(th, im, a, b, plan.log_const)
        q = kernels.posterior(plan.logA - L, plan.hard, plan.log_empty)[0]
        a, b, _ = _solve(th, im, q, a)
    L, base = _loss(th, im, a, b, plan.log_const)
    lg = plan.logA - L
    n, C = chunk.n, plan.n_faces
    Ch = x.shape[1]
    H, W = plan.image_shape
    h, w = plan.face_shape
    P, Q = plan.grid_shape
    if output == "log_joint":
        flat = lg.reshape(n, -1)
        arg = np.argmax(flat, axis=1)
        ll = flat[np.arange(n), arg] + base
        nan = np.full(n, np.nan)
        raw = SimpleNamespace(N=np.zeros((C, P, Q)), S_F=np.zeros((C, Ch, h, w)), S_F_hat=None,
                              XC=np.zeros((Ch, H, W)), SX=None, SXX=None, ll=ll, arg=arg, maxp=nan, ent=nan,
                              cprob=np.full((n, C), np.nan), near=kernels.neighbour_gains(L, arg, plan.pose.neighbours), chi2=nan, qe=nan,
                              NW=None, KW=None, gains=a, offsets=b, ecm_gain=0.0)
        return raw, lg + base[:, None, None, None]
    q, top, arg, maxp, ent, cprob, qe = kernels.posterior(lg, plan.hard, plan.log_empty)
    near = kernels.neighbour_gains(L, arg, plan.pose.neighbours)
    chi2 = kernels.expected_residual(q, L, base, plan.log_const)
    a, b, gain = _solve(th, im, q, a, b)
    sums = _weighted_sums(chunk, x, xhat, q, plan, a, b, gmap, crop_sums)
    raw = SimpleNamespace(**vars(sums), ll=top + base, arg=arg, maxp=maxp, ent=ent, cprob=cprob, near=near,
                          chi2=chi2, qe=qe, gains=a, offsets=b, ecm_gain=float(gain.sum()))
    return raw, (q if output == "q" else None)


def brightness_test(ecm_gain, n_images, n_groups, level=TEST_LEVEL):
    """Is a gain and an offset per image worth fitting? A likelihood-ratio test at the fitted θ.

    Under the note's model (every a = 1, b = 0) twice the log-likelihood
    gained by fitting (a_k, b_k) per image at the fitted θ is about
    χ²_(2·G·K). `ecm_gain` is a lower bound of that gain (so the test errs
    towards the note's model): the summed `probe_gains` (the MAP joint's gain
    with each image at its most probable position; what `FaceEM` uses, with
    no FFT) or `Stats.ecm_gain` of one brightness pass from a = 1, b = 0 (the
    log-likelihood's). `n_images` is the number of images summed: `FaceEM`
    sums a sample of `TEST_FRAMES` of them (`probe_frames`); the test is then
    the same test on those images, at the same level.

    Returns
    -------
    dict with ``statistic`` (2·gain), ``dof``, ``p_value`` and ``significant`` (p < `level`).
    """
    from scipy.special import chdtrc  # χ²'s survival function (scipy.stats takes a second to import)

    dof = 2 * int(n_groups) * int(n_images)
    stat = 2.0 * max(float(ecm_gain), 0.0)
    p = float(chdtrc(dof, stat))
    return dict(statistic=stat, dof=dof, p_value=p, significant=bool(p < level))


def weighted_normalisers(stats, n_channels, pose, cover=None):
    """What the M-step divides by: (Nc (C, Ch), cover (Ch, H, W) or (H, W), Kb (Ch,) or float).

    Without brightness (``stats.NW`` None) the note's ``N_c``, ``C = Σ_k cov_k``
    and K; with it ``Σ_k a_k² N_kc``, ``Σ_k a_k² cov_k`` and ``Σ_k a_k²`` per
    channel. The coverage is the `pose` object's (or `cover`, when given).
    """
    C = stats.N.shape[0]
    if getattr(stats, "NW", None) is None:
        N = np.maximum(stats.N, 0.0)
        Nc = np.repeat(N.reshape(C, -1).sum(axis=1)[:, None], n_channels, axis=1)
        return Nc, pose.coverage(N.sum(axis=0)) if cover is None else cover, float(stats.n_images)
    NW = np.maximum(stats.NW, 0.0)
    if cover is None:
        cover = np.stack([pose.coverage(NW[:, ch].sum(axis=0)) for ch in range(NW.shape[1])])
    return NW.reshape(C, NW.shape[1], -1).sum(axis=2), cover, np.asarray(stats.KW, dtype=np.float64)


def normalize(faces, background, gains, offsets):
    """Fix mean(a) = 1 and mean(b) = 0 per group by an exact reparametrisation (the likelihood is unchanged).

    ``a·μ + b = (a/ā)·(ā μ) + b``, then ``a'·μ' + b = a'·(μ' + c) + (b - c a')``
    with c = mean(b) once mean(a') = 1: F and B are scaled by ā and shifted by
    c on the group's channels; s is unchanged.

    Returns faces, background, gains, offsets (new arrays).
    """
    F = np.array(faces, dtype=np.float64, copy=True)
    B = np.array(background, dtype=np.float64, copy=True)
    a = np.array(gains, dtype=np.float64, copy=True)
    b = np.array(offsets, dtype=np.float64, copy=True)
    gmap = group_map(B.shape[0], a.shape[1])
    abar = a.mean(axis=0)
    a /= abar
    c = b.mean(axis=0)
    b -= c * a
    for ch, g in enumerate(gmap):
        F[:, ch] = F[:, ch] * abar[g] + c[g]
        B[ch] = B[ch] * abar[g] + c[g]
    return F, B, a, b


def start_gains(n_images, n_groups):
    """Gains and offsets of frames whose brightness is not known: a = 1, b = 0."""
    return np.ones((n_images, n_groups)), np.zeros((n_images, n_groups))

