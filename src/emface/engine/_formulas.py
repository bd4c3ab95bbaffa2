"""The model's small formulas, each written once, for every backend.

Each function here is plain Python on scalars or arrays: the array-API kernels
(`kernels`, numpy and torch) call it on whole arrays, the fused CPU kernels
compile it (``numba.njit(inline="always")`` in `_numba_kernels`) and call it on
scalars, and the M-step and the face-size search call it on numpy arrays. So a
formula cannot differ between backends: there is one copy.

Numba's on-disk cache of a kernel does not notice a change in a function it
inlines from here (it keys on the kernel's own file); `_numba_base` drops the
kernels' caches when any of their source files changed.

Notation (MODEL.md): λ_ch = 1 / (2 s_ch²); the corners of the face form a grid
of P×Q (`poses.Translations`); the flat index of (face c, corner (i, j)) is
``(c·P + i)·Q + j``; ``box(z)(d)`` is the sum of z over the face's window at d.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "LOG_2PI",
    "NEAR_OFFSETS",
    "gaussian_log_norm",
    "gaussian_profile",
    "window_total",
    "class_free",
    "expanded_loss",
    "loss_term",
    "decode",
    "in_grid",
    "softmax_entropy",
    "expected_chi2",
]

LOG_2PI = math.log(2.0 * math.pi)

#: the eight neighbouring corners (di, dj), in the order of `Stats.near`: rows then columns, centre left out
NEAR_OFFSETS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)], dtype=np.int64)
NEAR_OFFSETS.flags.writeable = False


def gaussian_log_norm(n_pixels, s2):
    """``-n/2 Σ_ch log(2π s_ch²)``: the log normaliser of `n_pixels` pixels of Gaussian noise per channel.

    `s2` is the (Ch,) array of the channels' variances.
    """
    return -0.5 * n_pixels * np.sum(LOG_2PI + np.log(s2))


def gaussian_profile(n_pixels, s2):
    """The Gaussian log-likelihood of `n_pixels` pixels per channel at the noise's own M-step.

    With ``s² = SSE / n`` the residual term is ``-n/2`` per channel, so the
    log-likelihood is ``gaussian_log_norm(n, s²) - n·Ch/2``.
    """
    return gaussian_log_norm(n_pixels, s2) - 0.5 * n_pixels * s2.shape[0]


def window_total(s11, s01, s10, s00):
    """The sum over a rectangle from the four corners of its summed-area table (inclusion-exclusion).

    ``s11 = S[i1, j1]``, ``s01 = S[i0, j1]``, ``s10 = S[i1, j0]``, ``s00 = S[i0, j0]``
    for rows i0 ≤ r < i1 and columns j0 ≤ c < j1; scalars, or shifted views of S.
    """
    return s11 - s01 - s10 + s00


def class_free(xb, bb):
    """``2·box(Σ_ch λ_ch x_ch B_ch) - box(Σ_ch λ_ch B_ch²)``: the part of the loss that no face changes."""
    return 2.0 * xb - bb


def expanded_loss(f2, corr, xb2):
    """The loss ``L(c, d) = Σ_ch λ_ch ||F_c||² - 2 (x ⋆ λF_c)(d) + class_free(d)``, expanded (MODEL.md).

    ``L(c, d) = Σ_ch λ_ch Σ_window ((x - F_c)² - (x - B)²)``: the logits are
    ``log A(c, d) - L(c, d)``, up to the frame ``log_const - Σ_ch λ_ch ||x - B||²``.
    """
    return f2 - 2.0 * corr + xb2


def loss_term(lam, v, f, b):
    """One value's share of L, summed directly: ``λ ((v - f)² - (v - b)²)`` for image value v, face f, background b.

    The direct form of `expanded_loss`, with no large terms that cancel: the
    fused kernels use it where 1/(2s²) magnifies the expanded form's rounding.
    """
    d1 = v - f
    d0 = v - b
    return lam * (d1 * d1 - d0 * d0)


def decode(t, P, Q):
    """The flat index ``t = (c·P + i)·Q + j`` of (face, corner) split into (c, i, j); ints or int arrays."""
    c = t // (P * Q)
    r = t - c * (P * Q)
    i = r // Q
    return c, i, r - i * Q


def in_grid(i, j, P, Q):
    """Whether corner (i, j) lies on the P×Q grid; ints or int arrays."""
    return (i >= 0) & (i < P) & (j >= 0) & (j < Q)


def softmax_entropy(log_z, mean_shifted):
    """The entropy of a softmax, ``log z - E_q[l - max]``, with ``z = Σ exp(l - max)``; clipped at 0 from rounding."""
    e = log_z - mean_shifted
    return e * (e > 0)


def expected_chi2(frame_rss, mean_loss):
    """``E_q Σ_ch ||x_ch - μ_ch||² / s_ch²`` from ``Σ_ch λ_ch ||x_ch - B_ch||²`` and ``E_q[L]``.

    Every mean image is B outside the face's window, so the expected residual
    is the background's plus the expected loss (0 for "no face"); λ = 1/(2s²)
    makes it twice the λ-weighted sum.
    """
    return 2.0 * (frame_rss + mean_loss)
