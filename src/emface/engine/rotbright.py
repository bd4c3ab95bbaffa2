"""Per-image brightness with in-plane rotations (MODEL.md, "Brightness that changes from frame to frame"
and "In-plane rotations").

Image k is ``X_k = a_k·μ_(c,r,d) + b_k + N(0, s²)``, one gain and one offset per
image (all channels share them: ``brightness="per_image"``). With
``x'_k = (x_k - b_k)/a_k``,

    ||x_k - a_k μ - b_k||² = a_k² ||x'_k - μ||²,

so the E-step given (a, b) is `rotstep.chunk_pass` on the images x' with each
image's loss weighted by ``w_k = a_k²`` (its logits, log-likelihood, sparse
angle windows and per-image summaries come out as they should).

**The (a, b) update** (ECM, Meng and Rubin 1993), per image, right after its
E-step and with the θ that produced q_k: the 2×2 normal equations of
``min E_q Σ_ch λ_ch ||x - a μ - b||²`` (`brightness._normal_solve`) in the
posterior averages

    E_q<x', μ>  = Σλ x'B + (E_q||T_cr||² - E_q (D⋆λB²)(d) - E_q L')/2
    E_q||μ||²   = Σλ B²  +  E_q||T_cr||² - E_q (D⋆λB²)(d)
    E_q Σμ      = Σλ B   +  E_q ΣλT_cr   - E_q (D⋆λB)(d)

(μ is B outside the disc at d and the turned face T_cr inside it; L' is the
pass's loss of x' relative to the background, so ``E_q L'`` is what it
already sums), mapped to x by ``<x, μ> = a<x', μ> + b Σμ``. Only the
posterior's marginals over (c, r) and over d, and ``E_q L'``, are needed.

**The sums** are then added with the *new* (a, b) (`brightness`'s module
docstring): ``S_F = Σ_k a_k Σ q_k (x_k - b_k)|_d`` and so on, normalised by
``NW = Σ_k a_k² q_k`` and ``KW = Σ_k a_k²``. They are linear in the images:
with the old (a⁰, b⁰) the pass sums x', so each image's share is weighted by
``u_k = a_k a⁰_k`` (`chunk_pass`'s ``on_posterior``) plus
``v_k = a_k (b⁰_k - b_k)`` times its posterior mass (per (c, r) for S_F, the
coverage for XC). The bound never decreases: E-step, (a, b) update and
M-step each raise the free energy, sparse angle windows included.

**Identifiability.** The M-step fixes mean(a) = 1 by scaling F and B
(`brightness.normalize` with zero offsets: exact). Unlike translations, the
offsets' mean is not fixed: shifting F, B by c and every b_k by -c·a_k is not
an exact reparametrisation here (a turned constant face is not constant on the
disc's rim, where the interpolation reads zeros outside the window), so it
would change the likelihood. The offsets are meaningful relative to each other.
"""

from __future__ import annotations

from types import SimpleNamespace

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from .brightness import _normal_solve
from .chunk import Chunk, standardized
from . import rotstep

__all__ = ["bright_terms", "chunk_pass"]


def bright_terms(plan):
    """What θ gives the (a, b) update once per pass: per (face, angle) ``||T||²`` and ``ΣT`` (C, R),
    the disc sums ``D⋆λB²`` and ``D⋆λB`` (P, Q), and ``ΣλB²``, ``ΣλB``, ``Σλ·H·W`` (λ folded in)."""
    p = plan.params
    lam = plan.lam
    T = plan.rot.templates(p.faces)  # (C, R, Ch, h, h)
    H, W = plan.image_shape
    return SimpleNamespace(
        FF=plan.face_sq, SF=np.einsum("d,crdij->cr", lam, T), disc_b2=plan.disc_b2,
        disc_lb=plan.rot.window_sums(plan.lamB.sum(axis=0)),
        BBsum=float(np.sum(plan.lamB * p.background)), LBsum=float(np.sum(plan.lamB)),
        M1=float(lam.sum() * H * W))


class _Update:
    """`chunk_pass`'s ``on_posterior``: each batch's (a, b) update and the weights of its sums."""

    def __init__(self, plan, terms, xp, a0, b0, sums=True):
        n = len(a0)
        C = plan.params.n_faces
        R = plan.rot.n_angles
        P, Q = plan.grid_shape
        self.plan, self.t = plan, terms
        self.a0, self.b0 = a0, b0
        self.a, self.b = a0.copy(), b0.copy()
        self.gain = np.zeros(n)
        self.xBp = np.einsum("kdij,dij->k", xp, plan.lamB)  # Σλ x'B
        self.xp_sum = np.einsum("kdij,d->k", xp, plan.lam)  # Σλ x'
        self.sums = sums
        self.NW = np.zeros((C * R, P, Q))
        self.corr_cr = np.zeros(C * R)  # Σ_k v_k q_k(c, r)
        self.corr_d = np.zeros((P, Q))  # Σ_k v_k q_k(d)

    def __call__(self, g, idx, post):
        t = self.t
        R = self.plan.rot.n_angles
        n, m = idx.shape
        a0, b0 = self.a0[g], self.b0[g]
        if post.hard is None:
            q = post.q
            C = q.shape[1]
            qcr = q.sum(axis=(3, 4))  # (n, C, m)
            qd = post.qd
            FF = t.FF[:, idx].transpose(1, 0, 2)  # (n, C, m)
            SF = t.SF[:, idx].transpose(1, 0, 2)
            EFF, ESF = np.einsum("kcj,kcj->k", qcr, FF), np.einsum("kcj,kcj->k", qcr, SF)
            Eb2, Elb = np.einsum("kpq,pq->k", qd, t.disc_b2), np.einsum("kpq,pq->k", qd, t.disc_lb)
        else:
            c, r, i, j = post.hard
            EFF, ESF = t.FF[c, r], t.SF[c, r]
            Eb2, Elb = t.disc_b2[i, j], t.disc_lb[i, j]
        el = post.el  # E_q L' of x' (unweighted)
        Mxm_p = self.xBp[g] + 0.5 * (EFF - Eb2 - el)
        Mmm = t.BBsum + EFF - Eb2
        Mm = t.LBsum + ESF - Elb
        Mxm = a0 * Mxm_p + b0 * Mm
        Mx = a0 * self.xp_sum[g] + b0 * t.M1
        col = lambda v: np.asarray(v, dtype=np.float64).reshape(n, 1)
        a, b, gain = _normal_solve(col(Mxm), col(Mmm), col(Mm), col(Mx), np.array([t.M1]), col(a0), col(b0))
        a, b = a[:, 0], b[:, 0]
        self.a[g], self.b[g], self.gain[g] = a, b, gain
        if not self.sums:
            return None
        v = a * (b0 - b)
        a2 = a * a
        if post.hard is None:
            cls = (np.arange(C)[None, :, None] * R + idx[:, None, :]).reshape(-1)  # (n·C·m,)
            qf = q.reshape(n * C * m, -1)
            S = sp.csr_matrix((np.repeat(a2, C * m), (cls, np.arange(cls.size))), shape=(self.NW.shape[0], cls.size))
            self.NW.reshape(self.NW.shape[0], -1)[...] += S @ qf
            np.add.at(self.corr_cr, cls, (v[:, None, None] * qcr).reshape(-1))
            self.corr_d += np.einsum("k,kpq->pq", v, qd)
        else:
            cls = c * R + r
            np.add.at(self.NW, (cls, i, j), a2)
            np.add.at(self.corr_cr, cls, v)
            np.add.at(self.corr_d, (i, j), v)
        return a * a0


def _primed(x, a, b):
    """x' = (x - b)/a per image, as a chunk of raw images (n, H, W, Ch) in working units."""
    xp = (x - b[:, None, None, None]) / a[:, None, None, None]
    return xp, Chunk(np.ascontiguousarray(np.moveaxis(xp, 1, -1)))


def chunk_pass(chunk, plan, centres, gains, offsets, *, full=True, width=2, per_image=True, output=None,
               fit_steps=0, terms=None):
    """`rotstep.chunk_pass` with a gain and an offset per image: the E-step given (a, b), their ECM update
    and the sums weighted by the new (a, b) (see the module docstring).

    Parameters
    ----------
    chunk : Chunk
    plan : rotstep.RotPlan
    centres : int array (n,)
        Each image's angle window (-1: all angles).
    gains, offsets : ndarray (n, 1) or (n,)
        Each image's (a, b), working units.
    full, width, per_image, output
        As `rotstep.chunk_pass`.
    fit_steps : int
        Alternations of a full E-step and the (a, b) update first (new images, from a = 1, b = 0).
    terms : SimpleNamespace, optional
        `bright_terms(plan)` (computed here when not given).

    Returns
    -------
    Stats (with SX, SXX, NW, KW, the updated ``gains`` and ``offsets`` (n, 1) and ``ecm_gain``),
    new centres (n,), and with `output` the array of `rotstep.chunk_pass`.
    """
    x = standardized(chunk, np.float64, use_numba=False)
    n, Ch, H, W = x.shape
    a = np.array(gains, dtype=np.float64).reshape(n, -1)
    b = np.array(offsets, dtype=np.float64).reshape(n, -1)
    if a.shape[1] != 1:
        raise ValueError(f"rotations fit one gain and one offset per image, got gains of shape {a.shape}")
    a, b = a[:, 0].copy(), b[:, 0].copy()
    terms = bright_terms(plan) if terms is None else terms
    every = np.full(n, -1, dtype=np.int64)
    for _ in range(int(fit_steps)):
        xp, sub = _primed(x, a, b)
        upd = _Update(plan, terms, xp, a, b, sums=False)
        rotstep.chunk_pass(sub, plan, every, full=True, width=width, per_image=False, with_moments=False,
                           weights=a * a, on_posterior=upd)
        a, b = upd.a, upd.b
    xp, sub = _primed(x, a, b)
    upd = _Update(plan, terms, xp, a, b)
    res = rotstep.chunk_pass(sub, plan, centres, full=full, width=width, per_image=per_image, output=output,
                             with_moments=False, weights=a * a, on_posterior=upd)
    stats = res[0]
    a1, b1 = upd.a, upd.b
    C, R = plan.params.n_faces, plan.rot.n_angles
    h = plan.rot.face_shape[0]
    S_F = stats.S_F + upd.corr_cr[:, None, None, None] * np.ones((1, Ch, h, h))
    XC = stats.XC + plan.rot.coverage(upd.corr_d, plan.workers)[None]
    r = x - b1[:, None, None, None]
    sq = np.einsum("kdij,kdij->kd", r, r)
    stats = replace(stats, S_F=S_F, XC=XC, SX=np.einsum("k,kdij->dij", a1, r), SXX=sq.sum(axis=0),
                    NW=np.repeat(upd.NW[:, None], Ch, axis=1), KW=np.full(Ch, float(np.sum(a1 * a1))),
                    ecm_gain=float(upd.gain.sum()),
                    gains=a1[:, None], offsets=b1[:, None])
    return (stats,) + tuple(res[1:])
