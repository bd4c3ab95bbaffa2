"""E-step, M-step and objectives of the model with in-plane rotations (MODEL.md, "In-plane rotations").

The latent variable of image k is (c, r, d): face, angle, corner. With the
disc D and the templates ``T_cr = D∘R_r F_c``,

    L_k(c, r, d) = Σ_ch λ_ch [ ||T_cr||² - 2 (x_k ⋆ T_cr)(d) + (D ⋆ (2 x_k B - B²))(d) ]

and the logits are ``log A(c, d) + log ρ_r - L_k(c, r, d)``. One disc
correlation per image (an FFT of ``Σ λ x∘B``), one correlation per (c, r) from
the image's cached spectrum. The sums are those of `Stats` with the (face,
angle) pairs as its classes: ``N`` (C·R, P, Q), ``S_F`` (C·R, Ch, h, h) =
``S_(c,r)``, XC with the disc's coverage; so `mstep.expected_sse` with the
templates as faces is the expected residual.

**Sparse angle search** (Neal and Hinton, 1998). Each image has a set of
angles its posterior may use: all of them, or a window of ``2·half + 1``
grid steps about a centre (half = 0, ..., `width`); q is 0 outside.
`chunk_pass` takes each image's set (`centres`, -1: all angles). On a full
sweep (``full=True``) every angle is scored and each image gets a new set:
the narrowest window about its best angle whose posterior mass outside is at
most `SETTLE` (a loss of at most `SETTLE` nats in its bound; a sharp
posterior keeps 1 or 3 angles, so a pass over the windows scores fewer than
2·width + 1 angles an image) and, if it had a window before, that window is
not better; else all angles. Hard EM keeps the full width. The bound reported is that of the restricted q, so
it never decreases between full sweeps, and by at most `SETTLE` per image
switching to a window at a full sweep (far below rounding).

**Per-image weights.** ``chunk_pass(weights=w)`` scales each image's whole
loss, ``logit = log A + log ρ - w_k·L_k`` (the brightness model's ``a_k²``
on the standardised image), and ``sum_weights`` each image's share of S_F and
XC; both default to ones (the note's model, bit for bit).

**Where the time goes, and how it is spent** (128×128, 48×48: P·Q = 6,561
corners; a full sweep scores 36 angles, a window 5). A batch of images is
cut into *units*, one per (image, face, angle): per unit one spectral product
and one inverse FFT of the P rows and Q columns kept (about two thirds of a
full sweep's time: the floor of this method), then fused Numba loops
(`_rot_numba`, threads over units, float64): losses, logits and each unit's
maximum in one pass; the exponentials in a second (an entry more than 746
nats below the image's maximum is exactly 0 in float64 and skips its
``exp``), then the normalisation with ``E_q[L]``, the marginal over angles and
each unit's count of entries above `Q_THRESHOLD`. The sums choose per unit:
at most `MAX_CROPS` entries add their crops (and, if all an image's units
do, their discs to XC), more add in the frequency domain (one FFT). The numpy
route below each call computes the same (tests hold them together to 1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import scipy.fft as sfft

from .records import Stats
from . import kernels
from .chunk import chunk_spectra, standardized
from ._formulas import NEAR_OFFSETS, gaussian_log_norm
from .brightness import weighted_normalisers
from .mstep import (MStepInfo, _background_from, _expected_log, _gaussian_term, _noise_from, _smoothing_term,
                    expected_sse, face_sums, prior_from_counts)
from .rotations import Rotations, RotParams
from .rotsums import Q_THRESHOLD, _batch_sums, _hard_sums
from .rotwindows import SETTLE, _choose_sets, _window_groups, _windows

try:  # the fused loops of the posterior (numba is a dependency; numpy below computes the same)
    from . import _rot_numba as _nb
except ImportError:  # pragma: no cover
    _nb = None

__all__ = ["RotPlan", "make_rot_plan", "chunk_pass", "rot_params_from", "rot_objective", "rot_free_energy",
           "rot_expected_sse", "SETTLE", "Q_THRESHOLD"]

#: bytes of the per-batch work arrays (spectral products, correlations, losses, logits)
BATCH_BYTES = 64 * 2**20
#: blocks of the corners per (image, face) in the fused normalisation (threads work on the blocks)
_BLOCKS = 8

@dataclass
class RotPlan:
    """What the rotation E-step derives from θ once per pass (working units, λ folded in)."""

    params: RotParams
    rot: Rotations
    hard: bool
    dtype: np.dtype
    workers: int
    cache_spectra: bool
    with_moments: bool
    lam: np.ndarray        # (Ch,)
    logA: np.ndarray       # (C, P, Q)
    log_rho: np.ndarray    # (R,)
    filters: np.ndarray    # (C·R, Ch, H, W//2+1): conj(rfft2(λ T_cr))
    face_sq: np.ndarray    # (C, R): Σ_ch λ ||T_cr||²
    lamB: np.ndarray       # (Ch, H, W)
    disc_b2: np.ndarray    # (P, Q): D ⋆ Σ λ B²
    log_const: float
    backend: str = "numpy"

    @property
    def grid_shape(self):
        return self.rot.grid_shape

    @property
    def image_shape(self):
        return self.rot.image_shape


def make_rot_plan(params, *, hard=False, dtype=np.float64, workers=1, cache_spectra=True, with_moments=True):
    """Prepare one pass of the rotation E-step from θ (`RotParams`, working units)."""
    dtype = np.dtype(dtype)
    C, Ch, h, _ = params.faces.shape
    H, W = params.image_shape
    rot = Rotations((H, W), (h, h), params.angles)
    s2 = params.noise_std ** 2
    lam = 1.0 / (2.0 * s2)
    T = rot.templates(params.faces)  # (C, R, Ch, h, h)
    Tw = T * lam[None, None, :, None, None]
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    R = rot.n_angles
    filters = np.conj(sfft.rfft2(Tw.reshape(C * R, Ch, h, h), s=(H, W), axes=(-2, -1), workers=workers))
    with np.errstate(divide="ignore"):
        logA = np.log(params.prior)
        log_rho = np.log(params.angle_prior)
    B = params.background
    return RotPlan(
        params=params, rot=rot, hard=bool(hard), dtype=dtype, workers=int(workers),
        cache_spectra=bool(cache_spectra), with_moments=bool(with_moments), lam=lam, logA=logA, log_rho=log_rho,
        filters=filters.astype(cdtype, copy=False), face_sq=np.einsum("crdij,crdij->cr", Tw, T),
        lamB=B * lam[:, None, None], disc_b2=rot.window_sums(np.sum(lam[:, None, None] * B * B, axis=0)),
        log_const=float(gaussian_log_norm(H * W, s2)),
    )


# ----------------------------------------------------------------------------- one batch of images

def _weights(w, n):
    """A per-image weight (n,) float64: all ones for None."""
    if w is None:
        return np.ones(n)
    w = np.ascontiguousarray(w, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"per-image weights must have one value per image ({n}), got shape {w.shape}")
    return w


def _batch_logits(plan, xhat, x64, idx, w=None):
    """Logits and losses of a batch over its angles `idx` (n, m), each image's loss weighted by w (n,).

    ``lg = log A(c, d) + log ρ_r - w_k·L_k(c, r, d)`` (w None: all ones, the note's model). Returns a
    namespace: lg and loss (n, C, m, P, Q), base (n,), and each (face, angle)'s largest logit umax
    (n, C, m) with its first corner uarg (flat over P·Q).
    """
    n, Ch = x64.shape[:2]
    C = plan.logA.shape[0]
    R = plan.rot.n_angles
    m = idx.shape[1]
    P, Q = plan.grid_shape
    H, W = plan.image_shape
    w = _weights(w, n)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    fil = plan.filters.reshape(C, R, Ch, H, -1)
    xb = plan.rot.window_sums(np.einsum("kdhw,dhw->khw", x64, plan.lamB), plan.workers)  # (n, P, Q)
    xbt = 2.0 * xb - plan.disc_b2
    face_sq = np.ascontiguousarray(plan.face_sq[:, idx].transpose(1, 0, 2))  # (n, C, m)
    log_rho = np.ascontiguousarray(plan.log_rho[idx])  # (n, m)
    loss = np.empty((n, C, m, P, Q))
    if _nb is not None:
        y = np.empty((n, C, m) + fil.shape[-2:], dtype=np.result_type(xhat.dtype, fil.dtype))
        _nb.product(xhat, fil, idx, y)
        corr = kernels.correlate_fft(xhat, y.reshape(n, C * m, H, -1), (P, Q), (H, W), workers=plan.workers,
                                     product=lambda a, b: b)
        del y
        lg = np.empty_like(loss)
        umax = np.empty((n, C, m))
        uarg = np.empty((n, C, m), dtype=np.int64)
        _nb.logits(corr, face_sq.reshape(n, C * m), xbt.reshape(n, P * Q),
                   np.ascontiguousarray(plan.logA.reshape(C, P * Q)), log_rho, w, m, loss.reshape(n, C * m, P * Q),
                   lg.reshape(n, C * m, P * Q), umax.reshape(n, C * m), uarg.reshape(n, C * m))
    else:
        if m == R and np.array_equal(idx, np.broadcast_to(np.arange(R), idx.shape)):
            y = xhat[:, None, None, 0] * fil[None, :, :, 0]
            for ch in range(1, Ch):
                y += xhat[:, None, None, ch] * fil[None, :, :, ch]
        else:
            y = xhat[:, None, None, 0] * fil[:, idx, 0].transpose(1, 0, 2, 3, 4)
            for ch in range(1, Ch):
                y += xhat[:, None, None, ch] * fil[:, idx, ch].transpose(1, 0, 2, 3, 4)
        loss[...] = kernels.correlate_fft(xhat, y.reshape(n, C * m, H, -1), (P, Q), (H, W), workers=plan.workers,
                                          product=lambda a, b: b).reshape(n, C, m, P, Q)
        loss *= -2.0
        loss += xbt[:, None, None]
        loss += face_sq[..., None, None]
        lg = (plan.logA[None, :, None] + log_rho[:, None, :, None, None]) - w[:, None, None, None, None] * loss
        flat = lg.reshape(n, C, m, P * Q)
        uarg = np.argmax(flat, axis=3)
        umax = np.take_along_axis(flat, uarg[..., None], axis=3)[..., 0]
    resid = x64 - plan.params.background
    # the background's share of the loss, weighted as the rest: w_k·||x_k - B||² (brightness: x' = (x - b)/a,
    # w = a², so base is log p of the frame with every face's loss relative to it, `rotbright`)
    base = plan.log_const - w * np.einsum("kd,d->k", np.einsum("kdij,kdij->kd", resid, resid), plan.lam)
    return SimpleNamespace(lg=lg, loss=loss, base=base, umax=umax, uarg=uarg, w=w)


def _image_max(umax, uarg, PQ):
    """Each image's largest logit and its first flat index over (face, angle, corner), from the units'."""
    n = umax.shape[0]
    rows = np.arange(n)
    flat = umax.reshape(n, -1)
    best = np.argmax(flat, axis=1)
    return flat[rows, best], best * PQ + uarg.reshape(n, -1)[rows, best]


def chunk_pass(chunk, plan, centres, *, full=True, width=2, per_image=True, output=None, with_moments=None,
               weights=None, sum_weights=None, on_posterior=None):
    """The rotation E-step on one chunk and its sufficient statistics.

    Parameters
    ----------
    chunk : Chunk
    plan : RotPlan
    centres : int array (n,)
        Each image's angle window, -1 for all angles: its centre's index
        (half-width `width`), or ``centre + R·(width - half)`` for a narrower
        window (the codes this function returns).
    full : bool
        Score every angle and choose new windows (a full sweep); else each
        image scores only its own set.
    width : int
        Half-width of a window, in grid steps.
    output : {None, "q", "log_joint"}
        Also return the chunk's posterior or log joint, (n, C, R, P, Q), as
        (stats, new_centres, array). These passes score every angle and keep no windows.
    with_moments : bool, optional
        Compute SX and SXX; None: as the plan says.
    weights : array (n,), optional
        A weight on each image's whole loss: its logits are
        ``log A + log ρ - w_k·L_k`` (None: all ones, the note's model).
    sum_weights : array (n,), optional
        A weight on each image's share of the face and coverage sums (S_F and
        XC; N is not weighted). None: all ones.
    on_posterior : callable, optional
        ``on_posterior(rows, idx, post) -> sum weights (n,) or None``, called per batch before its sums
        (rows: the batch's images in the chunk; idx (n, m) their angles; post: ``q`` (soft, else None),
        ``qd`` (n, P, Q), ``el`` (n,) the unweighted ``E_q[L]``, ``hard`` (c, angle index, i, j) or
        None); what it returns replaces `sum_weights` for the batch (`emface.engine.rotbright`'s ECM
        update of each image's brightness, whose sums take the updated gains and offsets).

    Returns
    -------
    Stats (classes are (face, angle) pairs: N (C·R, P, Q), S_F (C·R, Ch, h, h)),
    new centres (n,)
    """
    x = standardized(chunk, plan.dtype, use_numba=False)
    xhat = chunk_spectra(chunk, plan, x)
    x64 = x.astype(np.float64, copy=False)
    n, Ch, H, W = x.shape
    C = plan.logA.shape[0]
    R = plan.rot.n_angles
    P, Q = plan.grid_shape
    h = plan.rot.face_shape[0]
    w_all = _weights(weights, n)
    sw_all = None if sum_weights is None else _weights(sum_weights, n)
    centres = np.asarray(centres, dtype=np.int64).copy()
    if full or output is not None:
        centres_in = centres
        centres = np.full(n, -1, dtype=np.int64)
    acc = SimpleNamespace(N=np.zeros((C * R, P, Q)), S_F=np.zeros((C * R, Ch, h, h)), S_F_hat=None,
                          XC=np.zeros((Ch, H, W)))
    pi = SimpleNamespace(ll=np.empty(n), arg=np.zeros((n, 3), dtype=np.int64), r=np.empty(n, dtype=np.int64),
                         maxp=np.empty(n), ent=np.empty(n), cprob=np.empty((n, C)), near=np.empty((n, 8)),
                         chi2=np.empty(n))
    new_centres = centres.copy()
    out = None if output is None else np.full((n, C, R, P, Q), -np.inf if output == "log_joint" else 0.0)
    Wr = W // 2 + 1
    groups = [(None, -1, np.flatnonzero(centres < 0))] + list(_window_groups(centres, R, width))
    for _, half, group in groups:
        if group.size == 0:
            continue
        m = R if half < 0 else _windows(np.zeros(1, dtype=np.int64), R, half).shape[1]
        per = C * m * (16 * H * Wr + 8 * P * W + 8 * P * Q * 3) + 8 * Ch * H * W * 4
        step = max(1, BATCH_BYTES // per)
        for a in range(0, group.size, step):
            g = group[a:a + step]
            if half < 0:
                idx = np.broadcast_to(np.arange(R), (g.size, R))
            else:
                idx = _windows(centres[g] % R, R, half)
            bl = _batch_logits(plan, xhat[g], x64[g], idx, w_all[g])
            if output == "log_joint":
                out[g] = bl.lg + bl.base[:, None, None, None, None]
            choose = centres_in[g] if (full and output is None) else None
            cen = _batch_posterior(plan, acc, pi, g, bl, idx, x64[g], xhat[g], output, out, choose, width,
                                   None if sw_all is None else sw_all[g], on_posterior)
            new_centres[g] = centres[g] if cen is None else cen
    with_m = plan.with_moments if with_moments is None else with_moments
    SX, SXX = kernels.moments(x64) if with_m else (None, None)
    stats = Stats(n_images=n, N=acc.N, S_F=acc.S_F, XC=acc.XC, loglik=float(np.sum(pi.ll)),
                  entropy_sum=float(np.sum(pi.ent)), S_F_hat=acc.S_F_hat, SX=SX, SXX=SXX)
    if per_image:
        stats.labels = pi.arg[:, 0].copy()
        stats.positions = pi.arg[:, 1:].copy()
        stats.angle_index = pi.r
        stats.image_loglik = pi.ll
        stats.max_prob = pi.maxp
        stats.entropy = pi.ent
        stats.class_prob = pi.cprob
        stats.near = pi.near
        stats.chi2 = pi.chi2
        stats.empty_prob = np.zeros(n)
    if output is not None:
        return stats, new_centres, out
    return stats, new_centres


def _soft_posterior(bl, choose, width):
    """Soft posterior of a batch, q (n, C, m, P, Q) written over the logits, restricted to new windows when
    `choose` (the old centres) is given. Returns q, top (log-sum-exp), arg, maxp, the per-angle marginal
    (n, m), ``E_q[L]`` (n,), the marginal over angles (n, C, P, Q), the count of entries above
    `Q_THRESHOLD` per (face, angle) (n, C·m), and the new centres (or None)."""
    lg, loss = bl.lg, bl.loss
    n, C, m, P, Q = lg.shape
    mx, arg = _image_max(bl.umax, bl.uarg, P * Q)
    flat = lg.reshape(n, C, m, P * Q)
    usum = None
    if _nb is not None:
        usum = np.empty((n, C * m))
        _nb.exp_units(lg.reshape(n, C * m, P * Q), mx, usum)
        ang = usum.reshape(n, C, m).sum(axis=1)
    else:
        flat -= mx[:, None, None, None]
        np.exp(flat, out=flat)
        ang = flat.sum(axis=(1, 3))  # (n, m)
    cen = None
    allowed = np.ones((n, m), dtype=bool)
    if choose is not None:
        with np.errstate(divide="ignore"):
            la = np.log(ang) + mx[:, None]
        cen, allowed = _choose_sets(la, choose, width, False)
        ang = ang * allowed
    z = ang.sum(axis=1)
    weight = allowed / z[:, None]
    if _nb is not None:
        el_b = np.empty((n, C, _BLOCKS))
        qcd = np.empty((n, C, P * Q))
        cnt = np.empty((n, C * m, _BLOCKS), dtype=np.int64)
        _nb.normalise(flat, usum, weight, loss.reshape(n, C, m, P * Q), Q_THRESHOLD, _BLOCKS, el_b, qcd, cnt)
        el = el_b.sum(axis=(1, 2))
        nnz = cnt.sum(axis=2)
        qcd = qcd.reshape(n, C, P, Q)
    else:
        flat *= weight[:, None, :, None]
        with np.errstate(invalid="ignore"):
            el = np.einsum("ij,ij->i", flat.reshape(n, -1), np.where(flat > 0, loss.reshape(flat.shape), 0.0)
                           .reshape(n, -1))
        qcd = lg.sum(axis=2)
        nnz = np.count_nonzero(flat > Q_THRESHOLD, axis=3).reshape(n, C * m)
    return lg, mx + np.log(z), arg, 1.0 / z, ang / z[:, None], el, qcd, nnz, cen


def _batch_posterior(plan, acc, pi, g, bl, idx, x64, xhat, output, out, choose, width, sw=None, on_posterior=None):
    """The posterior of a batch, its per-image summaries and its sums; returns the new windows (or None)."""
    lg, loss, base, w = bl.lg, bl.loss, bl.base, bl.w
    n, C, m, P, Q = lg.shape
    rows = np.arange(n)
    if plan.hard:
        top, arg = _image_max(bl.umax, bl.uarg, P * Q)
        cen = None
        if choose is not None:
            cen, _ = _choose_sets(bl.umax.max(axis=1), choose, width, True)
        maxp, ent = np.ones(n), np.zeros(n)
        c, rem = np.divmod(arg, m * P * Q)
        j, d = np.divmod(rem, P * Q)
        i, jj = np.divmod(d, Q)
        cprob = np.zeros((n, C))
        cprob[rows, c] = 1.0
        el = loss.reshape(n, -1)[rows, arg]
        q = None
    else:
        q, top, arg, maxp, qr, el, qcd, nnz, cen = _soft_posterior(bl, choose, width)
        c, rem = np.divmod(arg, m * P * Q)
        j, d = np.divmod(rem, P * Q)
        i, jj = np.divmod(d, Q)
        cprob = qcd.sum(axis=(2, 3))
        with np.errstate(invalid="ignore"):
            logA = np.where(np.isfinite(plan.logA), plan.logA, 0.0)
            logr = np.where(np.isfinite(plan.log_rho), plan.log_rho, 0.0)[idx]
        prior_part = np.einsum("kcpq,cpq->k", qcd, logA) + np.einsum("kj,kj->k", qr, logr)
        ent = np.maximum(top - (prior_part - w * el), 0.0)  # H(q) = log Z - E_q[logit]
    pi.arg[g, 0], pi.arg[g, 1], pi.arg[g, 2] = c, i, jj
    pi.r[g] = idx[rows, j]
    pi.ll[g] = top + base
    pi.maxp[g] = maxp
    pi.ent[g] = ent
    pi.cprob[g] = cprob
    pi.near[g] = w[:, None] * _near(loss, arg)
    pi.chi2[g] = 2.0 * ((plan.log_const - base) + w * el)
    if output == "q":
        qq = q if q is not None else _one_hot(lg.shape, arg)
        for k in range(m):
            out[g, :, idx[:, k]] = qq[:, :, k]
    if output != "log_joint":
        qd = None if plan.hard else qcd.sum(axis=1)
        if on_posterior is not None:
            upd = on_posterior(g, idx, SimpleNamespace(q=q, qd=qd, el=el,
                                                       hard=(c, idx[rows, j], i, jj) if plan.hard else None))
            sw = sw if upd is None else upd
        if plan.hard:
            _hard_sums(plan, acc, x64, c, idx[rows, j], i, jj, sw)
        else:
            _batch_sums(plan, acc, x64, xhat, q, idx, qd, nnz, sw)
    return cen


def _near(loss, arg):
    """`kernels.neighbour_gains` of the batch's losses (n, C, m, P, Q) about each image's arg-max (flat)."""
    n, C, m, P, Q = loss.shape
    if _nb is None:
        return kernels.neighbour_gains(loss.reshape(n, C * m, P, Q), arg)
    out = np.empty((n, len(NEAR_OFFSETS)))
    _nb.near_gains(loss.reshape(n, C * m, P * Q), np.ascontiguousarray(arg, dtype=np.int64), Q, NEAR_OFFSETS, out)
    return out


def _one_hot(shape, arg):
    q = np.zeros(shape)
    q.reshape(shape[0], -1)[np.arange(shape[0]), arg] = 1.0
    return q


# ----------------------------------------------------------------------------- M-step and objectives

def _templates_flat(rot, faces):
    C, Ch, h, _ = faces.shape
    return rot.templates(faces).reshape(C * rot.n_angles, Ch, h, h)


def rot_expected_sse(stats, params, rot=None, S_F=None, cover=None):
    """``E_q Σ_k ||X_k - μ_(c,r,d)||²`` per channel (Ch,): `mstep.expected_sse` with the templates as faces
    and the disc's coverage."""
    C = params.n_faces
    R = params.angles.size
    rot = rot or Rotations(params.image_shape, params.face_shape, params.angles)
    if cover is None:  # the disc's coverage (a_k²-weighted with per-image brightness)
        cover = weighted_normalisers(stats, params.n_channels, rot)[1]
    return expected_sse(stats, _templates_flat(rot, params.faces), params.background, S_F=S_F, cover=cover)


def rot_params_from(stats, previous, *, prior_smoothing=0.0, noise_floor=1e-12, noise="shared"):
    """The M-step with rotations: A(c, d) and ρ_r (the factored prior's marginals, each with α pseudo-counts),
    F_c from the normal equations, B and s² as without rotations but with the disc's coverage.

    Returns (RotParams, MStepInfo).
    """
    if stats.SX is None or stats.SXX is None:
        raise ValueError("the M-step needs SX and SXX: run the pass with with_moments=True")
    C, Ch, h, _ = previous.faces.shape
    R = previous.angles.size
    rot = Rotations(previous.image_shape, (h, h), previous.angles)
    P, Q = rot.grid_shape
    K = float(stats.n_images)
    H, W = previous.image_shape
    alpha = float(prior_smoothing)
    info = MStepInfo()
    N4 = np.maximum(stats.N, 0.0).reshape(C, R, P, Q)
    A, _ = prior_from_counts(N4.sum(axis=1), K, alpha)
    rho, _ = prior_from_counts(N4.sum(axis=(0, 2, 3)), K, alpha)
    S = face_sums(stats)  # (C·R, Ch, h, h)
    # N_(c,r), the disc's coverage and K; a_k²-weighted with per-image brightness (one gain per image:
    # every channel's weights are the same, `emface.engine.rotbright`)
    Nw, cover, Kw = weighted_normalisers(stats, Ch, rot)
    F, empty = rot.solve_faces(S.reshape(C, R, Ch, h, h), Nw[:, 0].reshape(C, R), previous.faces)
    info.empty_faces = empty
    B = _background_from(stats, cover, Kw, previous, info)
    new = RotParams(faces=F, background=B, noise_std=previous.noise_std, prior=A, angles=previous.angles.copy(),
                    angle_prior=rho)
    sse = rot_expected_sse(stats, new, rot, S_F=S, cover=cover)
    new.noise_std = np.sqrt(_noise_from(sse, K, H, W, noise, noise_floor, info))
    return new, info


def rot_objective(stats, params, prior_smoothing=0.0):
    """The objective the rotation EM increases: the (restricted) log-likelihood or MAP joint, plus
    ``α (Σ log A + Σ log ρ)``."""
    return stats.loglik + _smoothing_term(float(prior_smoothing), params.prior, params.angle_prior)


def rot_free_energy(stats, params, prior_smoothing=0.0):
    """``E_q[log p(X, c, r, d | θ)] + H(q)`` of the posteriors summed in `stats`, under any θ."""
    C = params.n_faces
    R = params.angles.size
    P, Q = params.grid_shape
    K = float(stats.n_images)
    H, W = params.image_shape
    s2 = params.noise_std ** 2
    N4 = stats.N.reshape(C, R, P, Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(params.prior)[:, None] + np.log(params.angle_prior)[None, :, None, None]
        prior_term = _expected_log(N4, logp)
    sse = rot_expected_sse(stats, params)
    gauss = _gaussian_term(sse, s2, K * H * W)
    return prior_term + gauss + stats.entropy_sum + _smoothing_term(float(prior_smoothing), params.prior,
                                                                    params.angle_prior)
