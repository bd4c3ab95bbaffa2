"""Which route to take, and how many images per chunk: small cost models.

Kept apart from the kernels, as `scipy.signal.choose_conv_method` is kept
apart from the convolutions. The constants are rough per-operation costs
(nanoseconds on one core of a 2020s x86 CPU); only their ratios matter.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = [
    "choose_correlation_route",
    "use_partial_idft",
    "max_sparse_positions",
    "chunk_size",
    "parse_memory",
    "default_workers",
]

# per element of an FFT of n points, per log2(n); a real FFT is about half a complex one
_C_FFT = 1.2
# per complex multiply-add streamed from memory
_C_MUL = 1.5
# per real multiply-add inside a BLAS matrix product
_C_GEMM = 0.12
# per real multiply-add of a crop added into S_F and XC (two adds)
_C_CROP = 0.8


def _rfft2_cost(H, W):
    n = H * W
    return 0.5 * _C_FFT * n * math.log2(max(n, 2))


def use_partial_idft(P, H):
    """Whether the first P rows of an inverse FFT of length H are cheaper as a matrix product."""
    return P * 4 < math.log2(max(H, 2)) * 1.5


def _corr_fft_cost(H, W, h, w, cached):
    P, Q = H - h + 1, W - w + 1
    Wr = W // 2 + 1
    cost = _C_MUL * H * Wr
    if use_partial_idft(P, H):
        cost += 4 * _C_GEMM * P * H * Wr
    else:
        cost += _C_FFT * H * Wr * math.log2(max(H, 2))
    cost += 0.5 * _C_FFT * P * W * math.log2(max(W, 2))
    if not cached:
        # a forward transform, and the chunk standardized into a buffer first
        cost += _rfft2_cost(H, W) + 2.0 * H * W
    return cost


def _corr_direct_cost(H, W, h, w):
    P, Q = H - h + 1, W - w + 1
    return _C_GEMM * P * W * h * w + _C_MUL * P * w * Q + 0.5 * H * W


def choose_correlation_route(image_shape, face_shape, *, cached=True):
    """Pick ``"fft"`` or ``"direct"`` for the E-step correlation ``x ⋆ F``.

    Parameters
    ----------
    image_shape, face_shape : tuple
        (H, W) and (h, w).
    cached : bool
        Whether image spectra are cached (the FFT route then needs no forward FFT).

    Returns
    -------
    str
    """
    H, W = image_shape
    h, w = face_shape
    fft = _corr_fft_cost(H, W, h, w, cached)
    direct = _corr_direct_cost(H, W, h, w)
    return "direct" if direct < fft else "fft"


def max_sparse_positions(image_shape, face_shape, *, cached=True):
    """Largest number of non-negligible positions for which adding crops beats the FFT route.

    The dense route per image costs one forward FFT of q, a spectrum product,
    (the image's own spectrum when it is not cached) and a coverage pass; the
    sparse route costs 2·h·w multiply-adds per position.
    """
    H, W = image_shape
    h, w = face_shape
    dense = _rfft2_cost(H, W) + _C_MUL * H * (W // 2 + 1) + 3.0 * H * W
    if not cached:
        dense += _rfft2_cost(H, W)
    return max(1, int(dense / (_C_CROP * 2 * h * w)))


def parse_memory(value):
    """Bytes from an int or a string such as ``"2GB"``, ``"512 MiB"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ValueError(f"max_memory must be positive, got {value}")
        return int(value)
    if isinstance(value, float):
        if value <= 0:
            raise ValueError(f"max_memory must be positive, got {value}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"max_memory must be a number of bytes or a string like '2GB', got {value!r}")
    s = value.strip().upper().replace(" ", "")
    units = [("TIB", 2**40), ("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10),
             ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)]
    for u, mult in units:
        if s.endswith(u):
            num = s[: -len(u)]
            break
    else:
        num, mult = s, 1
    try:
        v = float(num)
    except ValueError:
        raise ValueError(f"max_memory must be a number of bytes or a string like '2GB', got {value!r}") from None
    if v <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(v * mult)


def chunk_size(image_shape, face_shape, itemsize, *, target_bytes=16 * 2**20, n_images=None):
    """Images per chunk so that the chunk's working buffers stay near `target_bytes`.

    Per image the engine holds the logits/posterior (P·Q float64), a spectrum
    product and its partial inverse (about 2·H·(W/2+1) complex), and the
    correlation.
    """
    H, W = image_shape
    h, w = face_shape
    P, Q = H - h + 1, W - w + 1
    per_image = 8 * P * Q * 2 + 2 * itemsize * 2 * H * (W // 2 + 1) + itemsize * H * W
    n = max(1, int(target_bytes // per_image))
    if n_images is not None:
        n = min(n, n_images)
    return n


def default_workers(n_jobs=None):
    """Threads to use: all cores by default, as `os.sched_getaffinity` reports them."""
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        ncpu = os.cpu_count() or 1
    if n_jobs is None or n_jobs == -1:
        return ncpu
    if n_jobs < 0:
        return max(1, ncpu + 1 + n_jobs)
    return int(n_jobs)
