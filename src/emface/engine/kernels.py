"""The chunk kernels against the array API: numpy and torch share them.

Every function takes arrays of one namespace (numpy, or torch on any device)
and returns arrays of that namespace, found with `array_api_compat` as
scikit-learn's ``get_namespace`` does. The CPU's fast path, `_numba_kernels`,
fuses the same steps into one sweep per image; each of its kernels is named
after its twin here, and both call the small formulas of `_formulas` (the
loss, the flat decode, the neighbour offsets, the entropy, the window totals),
so a formula is written once. The tests hold the two routes to each other and
to the brute-force model to 1e-10.

Layout (MODEL.md): a chunk ``x`` is (n, Ch, H, W) in working units; faces are
(C, Ch, h, w); the poses are those of a pose object (`poses.Translations`: a
P×Q grid of top-left corners), which also gives the window sums and the
coverage. The channel weights ``lam`` are ``1 / (2 s_ch²)`` (all equal for one
shared s): the E-step works with the λ-weighted sums

    L_k(c, d) = Σ_ch λ_ch [ ||F_c,ch||² - 2 (x_k,ch ⋆ F_c,ch)(d) + box(2 x_k,ch B_ch - B_ch²)(d) ]

so that the logits are ``log A(c, d) - L_k(c, d)`` and the channels are summed
before each inverse FFT (one inverse FFT per image and face, whatever Ch is).
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import scipy.fft as sfft

from ._formulas import (NEAR_OFFSETS, class_free, decode, expanded_loss, expected_chi2, in_grid, softmax_entropy,
                        window_total)

__all__ = [
    "get_namespace",
    "spectra",
    "face_filters",
    "partial_idft_matrix",
    "spectral_product",
    "correlate_fft",
    "correlate_direct",
    "summed_area",
    "box_sums",
    "coverage",
    "logits",
    "neighbour_gains",
    "NEAR_OFFSETS",
    "posterior",
    "expected_residual",
    "moments",
    "crops",
    "frequency_face_sums",
    "frequency_face_sums_at",
    "accumulate",
]


def get_namespace(*arrays):
    """The array namespace of the arguments (numpy, or torch through array_api_compat)."""
    return array_api_compat.array_namespace(*arrays)


def _is_numpy(xp):
    return array_api_compat.is_numpy_namespace(xp)


def _device(x):
    return array_api_compat.device(x)


# ----------------------------------------------------------------------------- FFTs

def _rfft2(xp, x, s=None, workers=1):
    if _is_numpy(xp):  # scipy's pocketfft, with threads
        return sfft.rfft2(x, s=s, axes=(-2, -1), workers=workers)
    return xp.fft.rfftn(x, s=s, axes=(-2, -1))


def _ifft(xp, y, axis, workers=1):
    if _is_numpy(xp):
        return sfft.ifft(y, axis=axis, workers=workers, overwrite_x=True)
    return xp.fft.ifft(y, axis=axis)


def _irfft(xp, z, n, axis, workers=1):
    if _is_numpy(xp):
        return sfft.irfft(z, n=n, axis=axis, workers=workers)
    return xp.fft.irfft(z, n=n, axis=axis)


def spectra(x, workers=1):
    """Real 2-D spectra of a chunk (n, Ch, H, W): ``rfft2`` over the last two axes."""
    return _rfft2(get_namespace(x), x, workers=workers)


def face_filters(faces_w, image_shape, dtype=np.complex128):
    """``conj(rfft2(λ_ch F_c,ch zero-padded to H×W))``, shape (C, Ch, H, W//2+1): the E-step's filters.

    `faces_w` are the λ-weighted faces, a numpy array (C, Ch, h, w).
    """
    return np.conj(sfft.rfft2(faces_w, s=image_shape, axes=(-2, -1))).astype(dtype, copy=False)


def partial_idft_matrix(P, H, dtype=np.complex128):
    """The first P rows of the inverse DFT of length H (with its 1/H), shape (P, H).

    ``D @ Y`` equals ``ifft(Y, axis=-2)[..., :P, :]``; cheaper than a full
    inverse FFT when only a few output rows are needed (a face that spans nearly
    the full image height).
    """
    p = np.arange(P)[:, None]
    r = np.arange(H)[None, :]
    return (np.exp(2j * np.pi * p * r / H) / H).astype(dtype)


def spectral_product(xhat, filters):
    """``Σ_ch xhat[:, None, ch] · filters[None, :, ch]``: the channel-summed product, (n, C, H, W//2+1)."""
    y = xhat[:, None, 0, ...] * filters[None, :, 0, ...]
    for ch in range(1, xhat.shape[1]):
        y = y + xhat[:, None, ch, ...] * filters[None, :, ch, ...]
    return y


def correlate_fft(xhat, filters, grid_shape, image_shape, *, idft_rows=None, workers=1, product=None):
    """λ-weighted valid cross-correlations ``Σ_ch λ_ch x_ch ⋆ F_c,ch`` from spectra.

    A circular correlation of size H×W agrees with the valid one on its first
    P×Q entries, so no padding is needed. The channels are summed in the
    frequency domain, and only the P rows and Q columns that are kept are
    transformed back.

    Parameters
    ----------
    xhat : complex array (n, Ch, H, W//2+1)
        Spectra of the images.
    filters : complex array (C, Ch, H, W//2+1)
        From `face_filters`.
    grid_shape, image_shape : tuple
        (P, Q) and (H, W).
    idft_rows : complex array (P, H), optional
        From `partial_idft_matrix`; used instead of an FFT along the rows.
    product : callable(xhat, filters) -> array, optional
        A faster route to `spectral_product` (the fused CPU path's twin), held
        to this one by the tests.

    Returns
    -------
    array (n, C, P, Q), real, of the spectra's precision.
    """
    xp = get_namespace(xhat, filters)
    P, Q = grid_shape
    H, W = image_shape
    y = (spectral_product if product is None else product)(xhat, filters)
    if idft_rows is not None:
        z = xp.matmul(idft_rows, y)
    else:
        z = _ifft(xp, y, -2, workers)[..., :P, :]
    return _irfft(xp, z, W, -1, workers)[..., :Q]


def correlate_direct(x, faces_w, grid_shape):
    """λ-weighted valid cross-correlations by matrix products (no FFT).

    For each grid row i and channel, ``Y = Fᵀ @ x[:, ch, i:i+h, :]`` is one
    batched GEMM with every face stacked, shape (C·w, h) @ (h, W); each
    correlation is then the sum of its w shifted diagonals. Cost about
    n·P·W·h·w·C·Ch multiply-adds, which beats the FFT when P is small (a face
    that spans the image height).

    Parameters
    ----------
    x : array (n, Ch, H, W)
    faces_w : array (C, Ch, h, w), the λ-weighted faces
    grid_shape : (P, Q)

    Returns
    -------
    array (n, C, P, Q) of float64.
    """
    xp = get_namespace(x, faces_w)
    n, Ch = x.shape[:2]
    C, _, h, w = faces_w.shape
    P, Q = grid_shape
    out = xp.zeros((n, C, P, Q), dtype=xp.float64, device=_device(x))
    for ch in range(Ch):
        # (C·w, h): every face's columns, transposed
        ft = xp.reshape(xp.permute_dims(faces_w[:, ch, ...], (0, 2, 1)), (C * w, h))
        ft = xp.astype(ft, x.dtype)
        for i in range(P):
            y = xp.astype(xp.matmul(ft, x[:, ch, i:i + h, :]), xp.float64)  # (n, C·w, W)
            for c in range(C):
                acc = out[:, c, i, :]
                for b in range(w):
                    acc = acc + y[:, c * w + b, b:b + Q]
                out[:, c, i, :] = acc
    return out


# ----------------------------------------------------------------------------- window sums

def summed_area(z):
    """Summed-area table in float64 with a zero first row and column: (..., H+1, W+1)."""
    xp = get_namespace(z)
    if _is_numpy(xp):  # the same, without the shim's copies for include_initial
        s = np.zeros(z.shape[:-2] + (z.shape[-2] + 1, z.shape[-1] + 1))
        np.cumsum(z, axis=-2, dtype=np.float64, out=s[..., 1:, 1:])
        np.cumsum(s[..., 1:, 1:], axis=-1, out=s[..., 1:, 1:])
        return s
    s = xp.cumulative_sum(z, axis=z.ndim - 2, dtype=xp.float64, include_initial=True)
    return xp.cumulative_sum(s, axis=z.ndim - 1, include_initial=True)


def box_sums(z, window):
    """Sums of ``z`` (..., H, W) over every h×w `window` at the valid positions, via a summed-area table.

    Returns an array (..., P, Q) of float64 over the pose grid (`poses.grid_shape`).
    """
    h, w = window
    s = summed_area(z)
    return window_total(s[..., h:, w:], s[..., :-h, w:], s[..., h:, :-w], s[..., :-h, :-w])


def coverage(q, window):
    """Full convolution of q with an h×w box: the probability the face covers each pixel.

    It is the box sum of q zero-padded by h-1 rows and w-1 columns on each side.

    Parameters
    ----------
    q : array (..., P, Q)
    window : tuple (h, w)

    Returns
    -------
    array (..., P+h-1, Q+w-1) of float64.
    """
    xp = get_namespace(q)
    h, w = window
    P, Q = q.shape[-2:]
    padded = xp.zeros(tuple(q.shape[:-2]) + (P + 2 * (h - 1), Q + 2 * (w - 1)), dtype=xp.float64,
                      device=_device(q))
    padded[..., h - 1:h - 1 + P, w - 1:w - 1 + Q] = xp.astype(q, xp.float64)
    return box_sums(padded, window)


# ----------------------------------------------------------------------------- E-step

def logits(corr, x, background, lam, face_sq, box_b2, log_prior, log_const, pose):
    """Logits ``log A(c, d) - L_k(c, d)`` and each image's ``log p`` of the background alone.

    ``L_k(c, d) = Σ_ch λ_ch [||F_c||² - 2 (x_k ⋆ F_c)(d) + 2 box(x_k B)(d) - box(B²)(d)]``;
    the correlation term comes λ-weighted from `correlate_fft` or `correlate_direct`.

    Parameters
    ----------
    corr : array (n, C, P, Q)
    x : array (n, Ch, H, W), working units
    background : array (Ch, H, W) float64
    lam : array (Ch,) float64, ``1 / (2 s_ch²)``
    face_sq : array (C,), ``Σ_ch λ_ch ||F_c,ch||²``
    box_b2 : array (P, Q), ``box(Σ_ch λ_ch B_ch²)``
    log_prior : array (C, P, Q)
    log_const : float, ``-HW/2 Σ_ch log(2π s_ch²)``
    pose : pose object (`poses.Translations`), whose `window_sums` give ``box``

    Returns
    -------
    logits : array (n, C, P, Q) float64
    base : array (n,) float64
        ``log_const - Σ_ch λ_ch ||x_k,ch - B_ch||²``: adding it to the logits
        gives ``log p(x_k, c, d | θ)``.
    loss : array (n, C, P, Q) float64
        L itself, defined where log A is -inf too.
    """
    xp = get_namespace(corr, x)
    x64 = xp.astype(x, xp.float64)
    lamc = xp.reshape(lam, (-1, 1, 1))
    xb = pose.window_sums(xp.sum(x64 * (lamc * background), axis=1))  # (n, P, Q)
    L = expanded_loss(xp.reshape(face_sq, (-1, 1, 1)), xp.astype(corr, xp.float64),
                      class_free(xb, box_b2)[:, None, ...])
    lg = log_prior - L
    resid = x64 - background
    rss = xp.sum(xp.sum(resid * resid, axis=(2, 3)) * lam, axis=1)
    return lg, log_const - rss, L


def neighbour_gains(loss, argmax, offsets=NEAR_OFFSETS):
    """``L(c*, d*) - L(c*, d* + δ)`` for each δ of `offsets` (the pose's `neighbours`): (n, m), -inf off the grid.

    The log-likelihood gain, prior left out, of moving each image's face to a
    neighbouring corner; -inf for every move where the arg-max is "no face"
    (index C·P·Q).
    """
    xp = get_namespace(loss)
    n, C, P, Q = loss.shape
    flat = xp.reshape(loss, (n, -1))
    empty = argmax >= C * P * Q  # "no face" chosen: no face to move
    argmax = xp.where(empty, xp.zeros_like(argmax), argmax)
    c, i, j = decode(argmax, P, Q)
    top = xp.take_along_axis(flat, argmax[:, None], axis=1)[:, 0]
    cols = []
    for di, dj in np.asarray(offsets).tolist():
        ii, jj = i + di, j + dj
        ok = in_grid(ii, jj, P, Q)
        idx = c * (P * Q) + xp.clip(ii, 0, P - 1) * Q + xp.clip(jj, 0, Q - 1)
        val = top - xp.take_along_axis(flat, idx[:, None], axis=1)[:, 0]
        cols.append(xp.where(ok & ~empty, val, xp.full_like(val, -xp.inf)))
    return xp.stack(cols, axis=1)


def posterior(lg, hard, log_empty=-math.inf):
    """The posterior over (face, position) from logits (n, C, P, Q), in the log domain.

    With a "no face" class (`log_empty` = log π_∅ > -inf) it is one more
    entry of the softmax (or the argmax), at flat index C·P·Q: its logit is
    log π_∅, since the logits of the faces have the common ``-Σ λ ||x - B||²``
    factored out and the "no face" mean image is B itself.

    Returns
    -------
    q : array (n, C, P, Q)
        Soft: ``softmax`` over (c, d) with the maximum subtracted. Hard: one-hot at the argmax.
    top : array (n,)
        Soft: ``logsumexp`` of the logits. Hard: their maximum.
    argmax : int array (n,)
        Flat index over (C, P, Q) of the most probable (face, position); C·P·Q for "no face".
    max_prob, entropy : arrays (n,)
    class_prob : array (n, C)
        Posterior of each face, positions summed out.
    empty_prob : array (n,)
        Posterior of "no face" (zeros without that class).
    """
    xp = get_namespace(lg)
    n, C = lg.shape[:2]
    flat = xp.reshape(lg, (n, -1))
    M = flat.shape[1]
    with_empty = log_empty > -math.inf
    if with_empty:
        flat = xp.concat([flat, xp.full((n, 1), float(log_empty), dtype=flat.dtype, device=_device(lg))], axis=1)
    arg = xp.argmax(flat, axis=1)
    mx = xp.take_along_axis(flat, arg[:, None], axis=1)[:, 0]
    if hard:
        idx = xp.arange(flat.shape[1], device=_device(lg))
        q = xp.astype(idx[None, :] == arg[:, None], xp.float64)
        top = mx
        maxp = xp.ones(n, dtype=xp.float64, device=_device(lg))
        ent = xp.zeros(n, dtype=xp.float64, device=_device(lg))
    else:
        d = flat - mx[:, None]
        e = xp.exp(d)
        z = xp.sum(e, axis=1)
        q = e / z[:, None]
        log_z = xp.log(z)
        top = mx + log_z
        safe = xp.where(q > 0, d, xp.zeros_like(d))  # 0·log 0 = 0, also where log A = -inf
        ent = softmax_entropy(log_z, xp.sum(q * safe, axis=1))
        maxp = xp.take_along_axis(q, arg[:, None], axis=1)[:, 0]
    if with_empty:
        q_empty = q[:, M]
        q = q[:, :M]
    else:
        q_empty = xp.zeros(n, dtype=xp.float64, device=_device(lg))
    cls = xp.sum(xp.reshape(q, (n, C, -1)), axis=2)
    return xp.reshape(q, lg.shape), top, arg, maxp, ent, cls, q_empty


def expected_residual(q, loss, base, log_const):
    """``E_q[Σ_ch ||x_k,ch - μ_ch||² / s_ch²]`` of each image, (n,): its misfit's chi-square.

    ``2 (Σ_ch λ_ch ||x_k,ch - B_ch||² + Σ_(c,d) q_k(c, d) L_k(c, d))`` with λ = 1/(2 s²):
    the "no face" class adds ``q(∅)·0`` (its mean image is B). `base` and
    `log_const` are those of `logits` (``log_const - base`` is the first sum).

    Parameters
    ----------
    q : array (n, C, P, Q), the posterior of the faces (soft or one-hot)
    loss : array (n, C, P, Q), L from `logits`
    base : array (n,)
    log_const : float
    """
    xp = get_namespace(q, loss)
    n = q.shape[0]
    el = xp.sum(xp.reshape(q * loss, (n, -1)), axis=1)
    return expected_chi2(log_const - base, el)


# ----------------------------------------------------------------------------- M-step sums

def moments(x):
    """``Σ_k x_k`` (Ch, H, W) and ``Σ_k ||x_k,ch||²`` (Ch,), float64."""
    xp = get_namespace(x)
    x64 = xp.astype(x, xp.float64)
    return xp.sum(x64, axis=0), xp.sum(x64 * x64, axis=(0, 2, 3))


def crops(x, positions, window):
    """The h×w windows of each image at the given top-left corners, shape (n, Ch, h, w).

    Parameters
    ----------
    x : array (n, Ch, H, W)
    positions : int array (n, 2)
    window : (h, w)
    """
    xp = get_namespace(x)
    n, Ch, H, W = x.shape
    h, w = window
    dev = _device(x)
    a = xp.arange(h, device=dev)
    b = xp.arange(w, device=dev)
    offs = xp.reshape(a[:, None] * W + b[None, :], (1, 1, h * w))
    start = xp.reshape(positions[:, 0] * W + positions[:, 1], (n, 1, 1))
    idx = xp.broadcast_to(start + offs, (n, Ch, h * w))
    flat = xp.reshape(x, (n, Ch, H * W))
    return xp.reshape(xp.take_along_axis(flat, idx, axis=2), (n, Ch, h, w))


def _sum_over_images(a, b):
    """``Σ_k a[k, None, :] * b[k, :, None]`` for (n, Ch, ...) and (n, C, ...): shape (C, Ch, ...), complex128."""
    xp = get_namespace(a, b)
    if _is_numpy(xp):
        return np.einsum("kd...,kc...->cd...", a, b, dtype=np.complex128)
    a = xp.astype(a, xp.complex128)
    b = xp.astype(b, xp.complex128)
    return xp.sum(a[:, None, ...] * b[:, :, None, ...], axis=0)


def frequency_face_sums(xhat, q, image_shape, *, workers=1):
    """``S_F_hat[c, ch] = Σ_k rfft2(x_k,ch) · conj(rfft2(q_k(c)))``: S_F in the frequency domain.

    One inverse FFT per face and channel (in the M-step) then gives
    ``Σ_k x_k ⋆ q_k(c)`` for the whole data set.

    Parameters
    ----------
    xhat : complex array (n, Ch, H, W//2+1)
    q : array (n, C, P, Q)
    image_shape : (H, W)

    Returns
    -------
    complex128 array (C, Ch, H, W//2+1)
    """
    xp = get_namespace(xhat, q)
    real = xp.float32 if xhat.dtype == xp.complex64 else xp.float64
    qhat = _rfft2(xp, xp.astype(q, real), s=image_shape, workers=workers)  # (n, C, H, W//2+1)
    return _sum_over_images(xhat, xp.conj(qhat))


def frequency_face_sums_at(xhat, q, image_shape, kk, cc, *, workers=1):
    """`frequency_face_sums` over the listed (image, face) pairs only (numpy): the others add nothing.

    ``S_F_hat[c, ch] = Σ_(k : (k, c) listed) rfft2(x_k,ch) · conj(rfft2(q_k(c)))``; one
    forward FFT per listed pair (the fused route lists the faces an image's
    posterior reaches, `estep.Q_THRESHOLD`), in one batched call.

    Parameters
    ----------
    xhat : complex array (n, Ch, H, W//2+1)
    q : array (n, C, P, Q)
    image_shape : (H, W)
    kk, cc : int arrays (m,)
        The pairs' images and faces.

    Returns
    -------
    complex128 array (C, Ch, H, W//2+1)
    """
    n, C = q.shape[:2]
    real = np.float32 if xhat.dtype == np.complex64 else np.float64
    out = np.zeros((C,) + xhat.shape[1:], dtype=np.complex128)
    if kk.size == 0:
        return out
    qhat = sfft.rfft2(q[kk, cc].astype(real, copy=False), s=image_shape, axes=(-2, -1), workers=workers)
    np.conjugate(qhat, out=qhat)
    for c in np.unique(cc):
        sel = np.flatnonzero(cc == c)
        out[c] = np.einsum("kd...,k...->d...", xhat[kk[sel]], qhat[sel], dtype=np.complex128)
    return out


def accumulate(x, q, pose, *, xhat=None, positions=None, labels=None, workers=1):
    """M-step sums of a chunk under a posterior q.

    Parameters
    ----------
    x : array (n, Ch, H, W), working units
    q : array (n, C, P, Q)
    pose : pose object (`poses.Translations`): the face's shape and the coverage
    positions, labels : int arrays (n, 2) and (n,), optional
        When q is one-hot (hard EM), where: S_F is then a sum of crops per face
        and no FFT is needed.
    xhat : complex array (n, Ch, H, W//2+1), optional
        The images' spectra when they are at hand, for S_F in the frequency domain.

    Returns
    -------
    N (C, P, Q), S_F (C, Ch, h, w), S_F_hat (C, Ch, H, W//2+1) complex or None, XC (Ch, H, W)
    """
    xp = get_namespace(x, q)
    n, Ch, H, W = x.shape
    C = q.shape[1]
    h, w = window = pose.face_shape
    x64 = xp.astype(x, xp.float64)
    N = xp.sum(xp.astype(q, xp.float64), axis=0)
    cov = pose.coverage(xp.sum(q, axis=1))  # (n, H, W)
    XC = xp.sum(x64 * cov[:, None, ...], axis=0)
    if positions is not None:
        cr = xp.reshape(crops(x64, positions, window), (n, Ch * h * w))
        onehot = xp.astype(labels[:, None] == xp.arange(C, device=_device(x))[None, :], xp.float64)
        S_F = xp.reshape(xp.matmul(xp.permute_dims(onehot, (1, 0)), cr), (C, Ch, h, w))
        return N, S_F, None, XC
    if xhat is None:
        xhat = spectra(x, workers)
    S_F_hat = frequency_face_sums(xhat, q, (H, W), workers=workers)
    S_F = xp.zeros((C, Ch, h, w), dtype=xp.float64, device=_device(x))
    return N, S_F, S_F_hat, XC
