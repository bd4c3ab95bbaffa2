"""Vectorised numpy/scipy kernels, one chunk of images at a time.

Every function here works on a chunk ``x`` of shape (n, H, W) that is already
in working units (centred and scaled by the caller). They are the portable
reference route of the engine and the template of the GPU kernels; the fused
CPU route in `_numba_kernels` computes the same quantities in fewer passes.

Notation (MODEL.md): images H×W, face h×w, grid P×Q with P = H-h+1, Q = W-w+1.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

__all__ = [
    "spectra",
    "face_spectrum",
    "correlate_fft",
    "correlate_direct",
    "box_sums",
    "coverage",
    "logits_from_parts",
    "posterior",
    "accumulate_from_q",
    "partial_idft_matrix",
    "crops",
]


def spectra(x, workers=1):
    """Real 2-D spectra of a chunk, ``rfft2(x)`` over the last two axes."""
    return sfft.rfft2(x, axes=(-2, -1), workers=workers)


def face_spectrum(face, image_shape, dtype=np.complex128):
    """``conj(rfft2(F zero-padded to H×W))``: the correlation filter of the E-step."""
    return np.conj(sfft.rfft2(face, s=image_shape)).astype(dtype, copy=False)


def partial_idft_matrix(P, H, dtype=np.complex128):
    """The first P rows of the inverse DFT of length H (with its 1/H), shape (P, H).

    ``D @ Y`` equals ``ifft(Y, axis=0)[:P]``; cheaper than a full inverse FFT
    when only a few output rows are needed (a face that spans nearly the full
    image height).
    """
    p = np.arange(P)[:, None]
    r = np.arange(H)[None, :]
    return (np.exp(2j * np.pi * p * r / H) / H).astype(dtype)


def correlate_fft(xhat, fhat_conj, grid_shape, image_shape, *, idft_rows=None, workers=1):
    """Valid cross-correlation ``x ⋆ F`` from cached spectra.

    A circular correlation of size H×W agrees with the valid one on its first
    P×Q entries, so no padding is needed. Only the P rows and Q columns that
    are kept are transformed back.

    Parameters
    ----------
    xhat : complex ndarray (n, H, W//2+1)
        Spectra of the images.
    fhat_conj : complex ndarray (H, W//2+1)
        From `face_spectrum`.
    grid_shape, image_shape : tuple
        (P, Q) and (H, W).
    idft_rows : complex ndarray (P, H), optional
        From `partial_idft_matrix`; used instead of an FFT along the first axis.

    Returns
    -------
    ndarray (n, P, Q), real, of the spectra's precision.
    """
    P, Q = grid_shape
    H, W = image_shape
    y = xhat * fhat_conj
    if idft_rows is not None:
        z = np.matmul(idft_rows, y)
    else:
        z = sfft.ifft(y, axis=-2, workers=workers, overwrite_x=True)[..., :P, :]
    return sfft.irfft(z, n=W, axis=-1, workers=workers)[..., :Q]


def correlate_direct(x, face, grid_shape):
    """Valid cross-correlation ``x ⋆ F`` by matrix products (no FFT).

    For each grid row i, ``Y = Fᵀ @ x[:, i:i+h, :]`` is one batched GEMM of
    shape (w, h) @ (h, W); the correlation is then the sum of its w shifted
    diagonals. Cost ~ n·P·W·h·w multiply-adds, which beats the FFT when P is
    small (a face that spans the image height).
    """
    n = x.shape[0]
    P, Q = grid_shape
    h, w = face.shape
    ft = np.ascontiguousarray(face.T, dtype=x.dtype)
    out = np.zeros((n, P, Q), dtype=np.float64)
    for i in range(P):
        y = np.matmul(ft, x[:, i : i + h, :])  # (n, w, W)
        acc = out[:, i, :]
        for b in range(w):
            acc += y[:, b, b : b + Q]
    return out


def _sat(z):
    """Summed-area table in float64 with a zero first row and column."""
    lead = z.shape[:-2]
    H, W = z.shape[-2:]
    s = np.zeros(lead + (H + 1, W + 1), dtype=np.float64)
    np.cumsum(z, axis=-2, dtype=np.float64, out=s[..., 1:, 1:])
    np.cumsum(s[..., 1:, 1:], axis=-1, out=s[..., 1:, 1:])
    return s


def box_sums(z, window):
    """Sums of ``z`` over every h×w window (valid positions), via a summed-area table.

    Parameters
    ----------
    z : ndarray (..., H, W)
    window : tuple (h, w)

    Returns
    -------
    ndarray (..., H-h+1, W-w+1), float64.
    """
    h, w = window
    s = _sat(z)
    return s[..., h:, w:] - s[..., :-h, w:] - s[..., h:, :-w] + s[..., :-h, :-w]


def coverage(q, window):
    """Full convolution of q with a h×w box: the probability the face covers each pixel.

    Parameters
    ----------
    q : ndarray (..., P, Q)
    window : tuple (h, w)

    Returns
    -------
    ndarray (..., P+h-1, Q+w-1), float64.
    """
    h, w = window
    P, Q = q.shape[-2:]
    H, W = P + h - 1, Q + w - 1
    s = _sat(q)
    rows = np.arange(H)
    cols = np.arange(W)
    r_hi = np.minimum(rows, P - 1) + 1
    r_lo = np.maximum(rows - h + 1, 0)
    c_hi = np.minimum(cols, Q - 1) + 1
    c_lo = np.maximum(cols - w + 1, 0)
    return (
        s[..., r_hi[:, None], c_hi[None, :]]
        - s[..., r_lo[:, None], c_hi[None, :]]
        - s[..., r_hi[:, None], c_lo[None, :]]
        + s[..., r_lo[:, None], c_lo[None, :]]
    )


def logits_from_parts(corr, x, background, face_sq, box_b2, log_prior, inv2s2):
    """Logits ``log A(d) - L_k(d) / (2 s²)`` and the per-image residual ``||x_k - B||²``.

    ``L_k(d) = ||F||² - 2 (x_k ⋆ F)(d) + box(2 x_k B - B²)(d)``, computed as
    ``||F||² - 2 corr + 2 box(x_k B) - box(B²)``.
    """
    xb = box_sums(x * background, (x.shape[-2] - corr.shape[-2] + 1, x.shape[-1] - corr.shape[-1] + 1))
    L = face_sq - 2.0 * corr + 2.0 * xb - box_b2
    with np.errstate(invalid="ignore"):
        logits = log_prior - L * inv2s2
    resid = x.astype(np.float64, copy=False) - background
    rss = np.einsum("nij,nij->n", resid, resid)
    return logits, rss


def posterior(logits, hard):
    """Posterior over positions from logits (n, P, Q), in the log domain.

    Returns
    -------
    q : ndarray (n, P, Q)
        Soft: ``softmax`` with the maximum subtracted. Hard: one-hot at the argmax.
    top : ndarray (n,)
        Soft: ``logsumexp`` of the logits. Hard: their maximum.
    argmax : ndarray (n,) of int
        Flat index of the most probable position.
    max_prob, entropy : ndarray (n,)
    """
    n = logits.shape[0]
    flat = logits.reshape(n, -1)
    arg = np.argmax(flat, axis=1)
    mx = flat[np.arange(n), arg]
    if hard:
        q = np.zeros_like(flat)
        q[np.arange(n), arg] = 1.0
        return q.reshape(logits.shape), mx, arg, np.ones(n), np.zeros(n)
    e = np.exp(flat - mx[:, None])
    z = e.sum(axis=1)
    q = e / z[:, None]
    lse = mx + np.log(z)
    pos = q > 0
    with np.errstate(invalid="ignore"):
        ent = lse - np.where(pos, q * np.where(pos, flat, 0.0), 0.0).sum(axis=1)
    return q.reshape(logits.shape), lse, arg, q[np.arange(n), arg], np.maximum(ent, 0.0)


def crops(x, positions, window):
    """The h×w windows of each image at the given top-left corners, shape (n, h, w)."""
    h, w = window
    views = np.lib.stride_tricks.sliding_window_view(x, (h, w), axis=(-2, -1))
    return views[np.arange(x.shape[0]), positions[:, 0], positions[:, 1]]


def accumulate_from_q(x, q, window, *, positions=None, xhat=None, workers=1):
    """M-step statistics of a chunk under a given posterior q.

    Parameters
    ----------
    x : ndarray (n, H, W), working units.
    q : ndarray (n, P, Q)
    window : (h, w)
    positions : int ndarray (n, 2), optional
        When q is one-hot (hard EM), its positions: S_F is then a sum of crops
        and no FFT is needed.
    xhat : complex ndarray (n, H, W//2+1), optional
        Cached spectra, used for S_F in the frequency domain.

    Returns
    -------
    N (P, Q), S_F (h, w), S_F_hat (H, W//2+1) complex or None, XC (H, W)
    """
    h, w = window
    H, W = x.shape[-2:]
    N = q.sum(axis=0, dtype=np.float64)
    cov = coverage(q, window)
    XC = np.einsum("nij,nij->ij", x.astype(np.float64, copy=False), cov)
    if positions is not None:
        S_F = crops(x, positions, window).sum(axis=0, dtype=np.float64)
        return N, S_F, None, XC
    if xhat is None:
        xhat = spectra(x, workers)
    qhat = sfft.rfft2(q.astype(x.dtype, copy=False), s=(H, W), axes=(-2, -1), workers=workers)
    S_F_hat = (xhat * np.conj(qhat)).sum(axis=0, dtype=np.complex128)
    return N, np.zeros((h, w)), S_F_hat, XC
