"""Which route to take, and how many images per chunk: small cost models.

Kept apart from the kernels, as `scipy.signal.choose_conv_method` is kept
apart from the convolutions. The constants are rough per-operation costs
(nanoseconds on one core of a 2020s x86 CPU); only their ratios matter.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .poses import grid_shape

__all__ = [
    "choose_correlation_route",
    "use_partial_idft",
    "max_sparse_positions",
    "chunk_size",
    "parse_memory",
    "default_workers",
    "default_cache_budget",
    "DEFAULT_CACHE_BYTES", "CACHE_SHARE_OF_DATA",
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


def _corr_fft_cost(H, W, h, w, cached, n_faces=1, n_channels=1):
    P = grid_shape((H, W), (h, w))[0]
    Wr = W // 2 + 1
    C, Ch = n_faces, n_channels
    cost = _C_MUL * H * Wr * C * Ch
    if use_partial_idft(P, H):
        cost += 4 * _C_GEMM * P * H * Wr * C
    else:
        cost += _C_FFT * H * Wr * math.log2(max(H, 2)) * C
    cost += 0.5 * _C_FFT * P * W * math.log2(max(W, 2)) * C
    if not cached:
        # a forward transform per channel, and the chunk standardized into a buffer first
        cost += (_rfft2_cost(H, W) + 2.0 * H * W) * Ch
    return cost


def _corr_direct_cost(H, W, h, w, n_faces=1, n_channels=1):
    P, Q = grid_shape((H, W), (h, w))
    C, Ch = n_faces, n_channels
    return (_C_GEMM * P * W * h * w * C + _C_MUL * P * w * Q * C + 0.5 * H * W) * Ch


def choose_correlation_route(image_shape, face_shape, *, cached=True, n_faces=1, n_channels=1):
    """Pick ``"fft"`` or ``"direct"`` for the E-step correlations ``x ⋆ F_c``.

    Parameters
    ----------
    image_shape, face_shape : tuple
        (H, W) and (h, w).
    cached : bool
        Whether image spectra are cached (the FFT route then needs no forward FFT).
    n_faces, n_channels : int
        C and Ch: the FFT route sums channels before one inverse per face; the
        direct route correlates every face with every channel.

    Returns
    -------
    str
    """
    H, W = image_shape
    h, w = face_shape
    fft = _corr_fft_cost(H, W, h, w, cached, n_faces, n_channels)
    direct = _corr_direct_cost(H, W, h, w, n_faces, n_channels)
    return "direct" if direct < fft else "fft"


def max_sparse_positions(image_shape, face_shape, *, cached=True, n_faces=1, n_channels=1):
    """Largest number of non-negligible (face, position) pairs for which adding crops beats the FFT route.

    The dense route per image costs one forward FFT of q per face, a spectrum
    product per face and channel, (the image's own spectra when they are not
    cached) and a coverage pass; the sparse route costs 2·h·w·Ch multiply-adds
    per pair.
    """
    H, W = image_shape
    h, w = face_shape
    C, Ch = n_faces, n_channels
    dense = C * _rfft2_cost(H, W) + _C_MUL * H * (W // 2 + 1) * C * Ch + 3.0 * H * W * Ch
    if not cached:
        dense += Ch * _rfft2_cost(H, W)
    return max(1, int(dense / (_C_CROP * 2 * h * w * Ch)))


#: the largest memory bound taken (1 EiB): a larger one bounds nothing more
MAX_MEMORY_CAP = 2**60


def parse_memory(value):
    """Bytes from an int or a string such as ``"2GB"``, ``"512 MiB"``; None stays None.

    Sizes must be finite and positive; those above `MAX_MEMORY_CAP` (1 EiB)
    are taken as that cap.
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"max_memory must be a number of bytes or a string like '2GB', got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ValueError(f"max_memory must be positive, got {value}")
        return min(int(value), MAX_MEMORY_CAP)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"max_memory must be a finite number of bytes, got {value!r}")
        if value <= 0:
            raise ValueError(f"max_memory must be positive, got {value}")
        return max(1, min(int(value), MAX_MEMORY_CAP))
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
    if not math.isfinite(v) or not math.isfinite(v * mult):
        raise ValueError(f"max_memory must be a finite size such as '2GB', got {value!r}")
    if v <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return max(1, min(int(v * mult), MAX_MEMORY_CAP))


def chunk_size(image_shape, face_shape, itemsize, *, target_bytes=16 * 2**20, n_images=None, n_faces=1,
               n_channels=1):
    """Images per chunk so that the chunk's working buffers stay near `target_bytes`.

    Per image and face the engine holds the logits/posterior (P·Q float64),
    a spectrum product and its partial inverse (about 2·H·(W/2+1) complex) and
    the correlation; per channel, the standardized image.
    """
    H, W = image_shape
    h, w = face_shape
    P, Q = grid_shape((H, W), (h, w))
    per_image = (n_faces * (8 * P * Q * 2 + 2 * itemsize * 2 * H * (W // 2 + 1))
                 + n_channels * itemsize * H * W)
    n = max(1, int(target_bytes // per_image))
    if n_images is not None:
        n = min(n, n_images)
    return n


#: without max_memory, a stack whose spectra all fit in this much caches them all (2,000 colour images of
#: 128x128 do); a larger one caches up to `CACHE_SHARE_OF_DATA` of the data's size, or up to what is left
#: of this much beside the data when that is more (a uint8 stack is small beside its spectra)
DEFAULT_CACHE_BYTES = 2**30
#: a large stack's default cache, as a share of its data: with the data itself, the engine's fixed
#: buffers and the kernels' compilation in a first run (about 0.15 of the data at 40,000 images of
#: 64x64 float32), the peak stays within 2.5 times the data
CACHE_SHARE_OF_DATA = 0.8


def default_cache_budget(data_bytes, spectra_bytes, available=None):
    """Bytes of image spectra to cache when no ``max_memory`` is given.

    Every spectrum while they all fit in `DEFAULT_CACHE_BYTES`; beyond, as many
    as `CACHE_SHARE_OF_DATA` of the data's size, or as many as fit beside the
    data in `DEFAULT_CACHE_BYTES` when that is more. A large stack's cached
    spectra so weigh less than the data: in float64 a spectrum weighs about
    8/itemsize times its image, so caching them all would triple the memory
    of a large float32 stack. Never more than half the `available` memory.

    Parameters
    ----------
    data_bytes : int
        The stack's bytes as stored (K·H·W·Ch·itemsize).
    spectra_bytes : int
        The bytes of every image's spectra in the compute precision.
    available : int, optional
        Bytes of memory available now.

    Returns
    -------
    int
    """
    data_bytes, spectra_bytes = int(data_bytes), int(spectra_bytes)
    if spectra_bytes <= DEFAULT_CACHE_BYTES:
        budget = spectra_bytes
    else:
        budget = max(int(CACHE_SHARE_OF_DATA * data_bytes), DEFAULT_CACHE_BYTES - data_bytes)
    if available is not None:
        budget = min(budget, int(available) // 2)
    return max(0, budget)


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
