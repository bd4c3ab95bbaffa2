"""Faces an image's posterior cannot reach: their correlations, logits and exponentials are skipped.

With several faces an image's posterior usually sits on one of them: the
logits of the others lie hundreds of nats below the best. Their correlations
-- a spectral product and an inverse FFT per image and face, most of an
E-step's time at C = 8 -- and their C·P·Q exponentials buy probabilities
below `estep.Q_THRESHOLD` (1e-24), the level at which the M-step's sums
already leave entries out. A chunk remembers from its last pass, made under
θ_o, each face's best ``g_kc = max_d -L_k(c, d)`` (the logit without log A)
and the ``-L`` of its best (face, corner) (c°, d°). Under the next θ_n
(MODEL.md: ``-L(c, d) = -||F_c||²_λ + ||B_window(d)||²_λ + 2<x'_window(d), λ(F_c - B_window(d))>``)

    -L_n(c, d) + L_o(c, d) = -Δ||F_c||²_λ + Δbox(λB²)(d) + 2<x'_window(d), Δ(λF_c) - Δ(λB)_window(d)>,

and Cauchy-Schwarz bounds the last term by ``2·X_k·(||Δ(λF_c)|| + β)``, with
``X_k = max_d ||x'_window(d)||`` (the image's, computed once) and
``β = max_d ||Δ(λB)_window(d)||``. So every logit of face c is at most

    UB_kc = max_d log A_n(c, ·) + g_kc - Δ||F_c||²_λ + max_d Δbox(λB²) + 2·X_k·(||Δ(λF_c)|| + β),

and the best logit is at least its value at (c°, d°),

    LB_k = log A_n(c°, d°) + g°_k - Δ||F_c°||²_λ + min_d Δbox(λB²) - 2·X_k·(||Δ(λF_c°)|| + β).

A face with ``UB_kc < LB_k - MARGIN`` is skipped for image k: its logits are
-inf, its q exactly 0. MARGIN is ``-log Q_THRESHOLD`` (55.3 nats) plus the
rounding of the expanded logits of both passes (at most `ERR_MAX` nats each,
else nothing is skipped), so every q set to 0 was at most Q_THRESHOLD: all
of them together weigh less than C·P·Q·1e-24 of an image, below float64's
rounding of the log-likelihood, of N and of the sums (the bound changes by
that relative amount at most). Hard EM needs only the arg-max: there the
margin is `MARGIN_HARD`, the rounding alone, and nothing changes, bit for bit.
A skipped face's g_kc is carried forward as its bound, so the bound loosens
until the face is computed again. The first pass of a chunk, or a pass after
the parameters jumped (over-relaxation, a new run), computes every face: a
loose bound skips nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .poses import Translations

__all__ = ["MARGIN", "MARGIN_HARD", "ERR_MAX", "FaceBounds", "skip_mask", "remember", "window_norms"]

#: the largest rounding (nats) of an image's expanded logits (``rel_eps·(max ||F||²_λ + ||x'||²_λ + ||B||²_λ)``,
#: as `_numba_kernels.fused_pass` estimates it) at which its faces may be skipped
ERR_MAX = 1.0
#: nats below the best logit's lower bound under which a face's logits are skipped (soft EM): its every q
#: is then at most 1e-24 (`estep.Q_THRESHOLD`, -log = 55.3 nats), the expanded logits of the two passes
#: being each within ERR_MAX nats of the exact ones
MARGIN = 24.0 * math.log(10.0) + 4.0 * ERR_MAX + 1.0
#: the same for hard EM, whose posterior is the arg-max alone: a face whose logits are all this far below
#: the best's lower bound cannot hold the arg-max (the rounding of both passes is within 4·ERR_MAX)
MARGIN_HARD = 10.0


@dataclass
class _Reference:
    """What the bounds need of the θ of a pass: λF (C, Ch, h, w), λB (Ch, H, W), Σ λ||F_c||², box(λB²)."""

    faces_w: np.ndarray
    lam_b: np.ndarray
    face_sq: np.ndarray
    box_b2: np.ndarray


@dataclass
class FaceBounds:
    """A chunk's memory of its last pass: the θ it was made under and, per image, what bounds the next.

    gain : (n, C) -- ``max_d -L(c, d)`` of each face (for a face skipped then, an upper bound)
    best : (n,) -- the flat (face, corner) of the best logit over the faces
    best_gain : (n,) -- its ``-L``
    err : (n,) -- the rounding estimate of that pass's expanded logits (nats)
    """

    ref: _Reference
    gain: np.ndarray
    best: np.ndarray
    best_gain: np.ndarray
    err: np.ndarray
    units: tuple = ()  # the chunk's (offset, inv_scale): its gains hold for images in these units only


def _reference(plan):
    ref = plan.sparse_cache.get("ref")
    if ref is None:
        lam = plan.lam[:, None, None]
        ref = plan.sparse_cache["ref"] = _Reference(plan.faces_w, plan.params.background * lam, plan.face_sq,
                                                    plan.box_b2)
    return ref


def applies(plan, C):
    """Whether the faces of this plan's E-step may be skipped: the fused CPU route, FFT correlations, C > 1."""
    return (C > 1 and plan.backend == "numba" and plan.route == "fft" and isinstance(plan.pose, Translations))


def window_norms(chunk, face_shape, workers=1):
    """``X_k = max_d ||x'_k,window(d)||`` over every h×w window of each image (n,), kept by the chunk.

    Rounded up by ``1e-12·||x'_k||²`` under the root for the summed-area table's own rounding.
    """
    from . import _numba_kernels as nk

    key = (tuple(face_shape), float(chunk.offset), float(chunk.inv_scale))
    c = chunk.cache
    if c.window_norms is not None and c.window_norms[0] == key:
        return c.window_norms[1]
    n, H, W, Ch = chunk.data.shape
    out = np.empty(n)
    nk.pick("window_norms", n * H * W * Ch, min(n, workers))(chunk.data, float(chunk.offset),
                                                             float(chunk.inv_scale), *face_shape, out)
    total = c.sq.sum(axis=1) if c.sq is not None and c.sq.shape[0] == n else out * (H * W)
    X = np.sqrt(np.maximum(out, 0.0) + 1e-12 * total)
    c.window_norms = (key, X)
    return X


def _terms(plan, ref):
    """The θ_o -> θ_n changes the bounds use, once per (plan, reference): see the module's formulas."""
    key = id(ref)
    hit = plan.sparse_cache.get(key)
    if hit is not None and hit[0] is ref:
        return hit[1]
    C = plan.face_sq.shape[0]
    dF2 = plan.face_sq - ref.face_sq
    dbox = plan.box_b2 - ref.box_b2
    nF = np.sqrt(np.sum((plan.faces_w - ref.faces_w) ** 2, axis=(1, 2, 3)))
    dB2 = np.sum((plan.params.background * plan.lam[:, None, None] - ref.lam_b) ** 2, axis=0)
    beta = math.sqrt(max(float(np.max(plan.pose.window_sums(dB2))), 0.0))
    with np.errstate(invalid="ignore"):
        max_logA = plan.logA.reshape(C, -1).max(axis=1)
    t = (dF2, float(dbox.max()), float(dbox.min()), nF, beta, max_logA)
    plan.sparse_cache[key] = (ref, t)
    return t


def _errors(plan, sq, rel_eps):
    """Each image's rounding estimate of its expanded logits (nats), as `fused_pass` makes it."""
    return rel_eps * (float(np.max(plan.face_sq, initial=0.0)) + sq @ plan.lam + plan.bg_sq)


def skip_mask(chunk, plan, rel_eps):
    """(n, C) uint8: 1 where face c's logits for image k are bounded below exp underflow; None when none is.

    Also the bounds' carried gains for the pass (`remember` needs them).
    """
    state = chunk.cache.faces
    n = chunk.n
    C = plan.face_sq.shape[0]
    if (state is None or state.units != _units(chunk) or state.gain.shape != (n, C)
            or state.ref.faces_w.shape != plan.faces_w.shape
            or state.ref.box_b2.shape != plan.box_b2.shape or chunk.cache.sq is None
            or chunk.cache.sq.shape[0] != n):
        return None, None
    X = window_norms(chunk, plan.face_shape, plan.workers)
    dF2, up, down, nF, beta, max_logA = _terms(plan, state.ref)
    carried = state.gain + (-dF2[None, :] + up + 2.0 * X[:, None] * (nF[None, :] + beta))
    P, Q = plan.grid_shape
    cb = state.best // (P * Q)
    lb = (plan.logA.reshape(-1)[state.best] + state.best_gain - dF2[cb] + down - 2.0 * X * (nF[cb] + beta))
    ub = max_logA[None, :] + carried
    with np.errstate(invalid="ignore"):
        skip = ub < (lb - (MARGIN_HARD if plan.hard else MARGIN))[:, None]  # NaN anywhere: not skipped
    skip[np.arange(n), cb] = False
    err = _errors(plan, chunk.cache.sq, rel_eps)
    skip[~((err <= ERR_MAX) & (state.err <= ERR_MAX))] = False
    if not skip.any():
        return None, carried
    return skip.view(np.uint8), carried


def remember(chunk, plan, rel_eps, gain, best, best_gain):
    """Keep the pass's bounds in the chunk's cache for the next one (`gain` holds the carried ones where skipped)."""
    chunk.cache.faces = FaceBounds(_reference(plan), gain, best, best_gain, _errors(plan, chunk.cache.sq, rel_eps),
                                   _units(chunk))


def _units(chunk):
    return (float(chunk.offset), float(chunk.inv_scale))
