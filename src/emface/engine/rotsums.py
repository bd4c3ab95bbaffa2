"""The M-step sums of a batch of the rotation E-step (`rotstep`): N, S_F (crops or spectra, per unit) and XC.

A *unit* is one (image, face, angle) of a batch. Each unit with at most
`MAX_CROPS` entries above `Q_THRESHOLD` adds its crops (``h²`` multiply-adds
an entry), a unit with more adds in the frequency domain (one FFT); an image
whose units all add crops adds its entries' discs to XC, the others their
coverage by FFT. Fused Numba loops (`_rot_numba`) or the numpy route, which
computes the same (tests hold them together to 1e-12).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp

try:  # the fused loops (numba is a dependency; numpy below computes the same)
    from . import _rot_numba as _nb
except ImportError:  # pragma: no cover
    _nb = None

#: posterior entries at or below this add nothing measurable to the sums (see `stats.Q_THRESHOLD`)
Q_THRESHOLD = 1e-24
#: (image, face-angle) units whose posterior has at most this many entries above Q_THRESHOLD sum crops
#: (h² multiply-adds each), the others sum in the frequency domain (an FFT each)
MAX_CROPS = 48


def _gather_windows(x64, k, i, j, h):
    """The h×h windows of images k at corners (i, j), (e, Ch·h·h), without copying whole images."""
    n, Ch, H, W = x64.shape
    offs = (np.arange(h)[:, None] * W + np.arange(h)[None, :]).ravel()
    flat = x64.reshape(n, Ch, H * W)
    return flat[k[:, None, None], np.arange(Ch)[None, :, None], (i * W + j)[:, None, None] + offs[None, None, :]]


def _scatter_rows(target, rows, values, weights=None):
    """``target[rows[e]] += weights[e] · values[e]`` as one sparse product (target (M, ...), values (e, ...))."""
    e = len(rows)
    w = np.ones(e) if weights is None else weights
    S = sp.csr_matrix((w, (rows, np.arange(e))), shape=(target.shape[0], e))
    flat = target.reshape(target.shape[0], -1)
    flat += S @ values.reshape(e, -1)


def _crop_entries(q, nnz):
    """The entries above `Q_THRESHOLD` of the units summed by crops (at most `MAX_CROPS` of them each):
    images k, units u, corners (flat) d and values, in (k, u, d) order. q (n, E, P·Q); nnz (n, E)."""
    units = np.argwhere((nnz > 0) & (nnz <= MAX_CROPS))
    if _nb is not None:
        counts = nnz[units[:, 0], units[:, 1]]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        d = np.empty(int(starts[-1]), dtype=np.int64)
        v = np.empty(int(starts[-1]))
        _nb.entries(q, units, starts, Q_THRESHOLD, d, v)
        return np.repeat(units[:, 0], counts), np.repeat(units[:, 1], counts), d, v
    keep = np.zeros(nnz.shape, dtype=bool)
    keep[units[:, 0], units[:, 1]] = True
    k, u, d = np.nonzero((q > Q_THRESHOLD) & keep[:, :, None])
    return k, u, d, q[k, u, d]


def _batch_sums(plan, acc, x64, xhat, q, idx, qd, nnz, sw=None):
    """Add a batch's M-step sums under q (n, C, m, P, Q) over angles idx (n, m): N, and S_F, S_F_hat and XC
    with each image's share weighted by sw (n,; None: ones).

    Each (image, class) unit with at most `MAX_CROPS` entries above
    `Q_THRESHOLD` (nnz (n, C·m)) adds its crops to S_F, those with more add
    in the frequency domain, those with none add nothing measurable. XC: an
    image whose units all add crops adds its entries' discs (``q·D∘x`` on
    each window), the others ``x ∘ (qd ⊛ D)`` by FFT, with qd (n, P, Q) the
    posterior over corners.
    """
    n, C, m, P, Q = q.shape
    R = plan.rot.n_angles
    h = plan.rot.face_shape[0]
    H, W = plan.image_shape
    cls = (np.arange(C)[None, :, None] * R + idx[:, None, :]).reshape(n, C * m)  # (face, angle) class per unit
    qf = q.reshape(n, C * m, P * Q)
    if m == R:
        acc.N += qf.sum(axis=0).reshape(acc.N.shape)
    else:
        _scatter_rows(acc.N, cls.ravel(), qf.reshape(n * C * m, P * Q))
    spectral = nnz > MAX_CROPS
    by_fft = np.flatnonzero(spectral.any(axis=1))
    if by_fft.size:
        cov = plan.rot.coverage(qd[by_fft], plan.workers)  # (e, H, W)
        if sw is not None:
            cov *= sw[by_fft, None, None]
        acc.XC += np.einsum("kdhw,khw->dhw", x64[by_fft], cov)
    k, u, d, v = _crop_entries(qf, nnz)
    if k.size:
        i, j = np.divmod(d, Q)
        if sw is not None:
            v = v * sw[k]
        disc = ~spectral.any(axis=1)[k]
        D = plan.rot.mask.astype(np.float64)
        if _nb is not None:
            _nb.crop_sums(x64, k, cls[k, u], i, j, v, acc.S_F)
            _nb.cover_sums(x64, k[disc], i[disc], j[disc], v[disc], D, acc.XC)
        else:
            _scatter_rows(acc.S_F, cls[k, u], _gather_windows(x64, k, i, j, h), v)
            for e in np.flatnonzero(disc):
                acc.XC[:, i[e]:i[e] + h, j[e]:j[e] + h] += (v[e] * D) * x64[k[e], :, i[e]:i[e] + h, j[e]:j[e] + h]
    kd, ud = np.nonzero(spectral)
    if kd.size:
        qs = qf[kd, ud].reshape(-1, P, Q)
        if sw is not None:
            qs = qs * sw[kd, None, None]
        qh = np.conj(sfft.rfft2(qs, s=(H, W), axes=(-2, -1), workers=plan.workers))  # (e, H, Wr)
        if acc.S_F_hat is None:
            acc.S_F_hat = np.zeros((C * R, x64.shape[1], H, qh.shape[-1]), dtype=np.complex128)
        prod = xhat[kd].astype(np.complex128) * qh[:, None]  # (e, Ch, H, Wr)
        _scatter_rows(acc.S_F_hat, cls[kd, ud], prod)


def _hard_sums(plan, acc, x64, c, r, i, j, sw=None):
    """The sums of one-hot posteriors at (face c, angle r, corner (i, j)): counts, crops and disc coverages
    (crops and coverages weighted by sw (n,), None: ones)."""
    n = len(c)
    R = plan.rot.n_angles
    h = plan.rot.face_shape[0]
    cls = c * R + r
    v = np.ones(n) if sw is None else np.asarray(sw, dtype=np.float64)
    np.add.at(acc.N, (cls, i, j), 1.0)
    if _nb is not None:
        _nb.crop_sums(x64, np.arange(n), cls, i, j, v, acc.S_F)
    else:
        _scatter_rows(acc.S_F, cls, _gather_windows(x64, np.arange(n), i, j, h), v)
    D = plan.rot.mask
    for k in range(n):  # a disc pasted per image: h² values each
        acc.XC[:, i[k]:i[k] + h, j[k]:j[k] + h] += x64[k, :, i[k]:i[k] + h, j[k]:j[k] + h] * (D * v[k])
