"""A chunk: a block of raw images, its map to working units, and what it keeps between passes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import kernels

__all__ = ["Chunk", "ChunkCache", "standardized", "chunk_spectra", "block_moments"]


@dataclass
class ChunkCache:
    """What one chunk keeps between iterations: its images' norms, and their spectra when the budget allows.

    `spectra` is an array of the namespace that computed it (numpy, or torch
    on a device); `key` says which (device and precision), so a change of
    backend recomputes them.
    """

    keep_spectra: bool = True
    spectra: object = None
    key: tuple | None = None
    sq: np.ndarray | None = None  # (n, Ch): each image's ||x'_ch||², in working units
    #: `sparse_faces`: ((h, w, offset, inv_scale), (n,) the largest norm of an image's h×w windows)
    window_norms: tuple | None = None
    #: `sparse_faces.FaceBounds` of the last pass with several faces: what bounds the next pass's logits
    faces: object = None

    @property
    def nbytes(self):
        """Bytes of cached spectra (what the memory budget bounds; the norms are 8 bytes per image and channel)."""
        if self.spectra is None:
            return 0
        nb = getattr(self.spectra, "nbytes", None)
        if nb is None:  # a torch tensor
            nb = self.spectra.element_size() * self.spectra.numel()
        return int(nb)


@dataclass
class Chunk:
    """A block of raw images (n, H, W, Ch), as stored, with its map to working units ``(x - offset) * inv_scale``."""

    data: np.ndarray
    offset: float = 0.0
    inv_scale: float = 1.0
    cache: ChunkCache = field(default_factory=ChunkCache)

    @property
    def n(self):
        return self.data.shape[0]


def block_moments(x):
    """Per image of a block (n, ...) of float64, float32 or uint8: [count of non-finite values, sum, min,
    max, Σ (x - m)², Σ (x - m)³] with m the block's mean, as an (n, 6) array (two fused passes)."""
    from . import _numba_kernels as nk

    out = np.empty((len(x), 6))
    nk.pick("block_moments", x.size, 2)(x, out)
    return out


def standardized(chunk, dtype, *, use_numba=True):
    """The chunk in working units, as a new (n, Ch, H, W) array of `dtype` (channels first, for the FFTs)."""
    x = chunk.data
    dtype = np.dtype(dtype)
    n, H, W, Ch = x.shape
    if use_numba and x.dtype != np.bool_:
        from . import _numba_kernels as nk

        out = np.empty((n, Ch, H, W), dtype=dtype)
        nk.pick("standardize", x.size, 2)(x, float(chunk.offset), float(chunk.inv_scale), out)
        return out
    out = np.moveaxis(np.asarray(x, dtype=dtype), -1, 1)
    if chunk.offset != 0.0 or chunk.inv_scale != 1.0:
        out = (out - dtype.type(chunk.offset)) * dtype.type(chunk.inv_scale)
    return np.array(out, copy=True, order="C")


def _raw_spectra(chunk, workers):
    """Spectra of the standardized chunk computed from the raw images, (n, Ch, H, W//2+1).

    ``rfft2((x - o)·s) = s·rfft2(x)`` but for the zero frequency, which loses
    ``o·s·H·W``: no standardized copy of the chunk is made.
    """
    x = chunk.data
    n, H, W, Ch = x.shape
    sp = kernels.spectra(x[..., 0] if Ch == 1 else np.moveaxis(x, -1, 1), workers)
    sp = sp[:, None] if Ch == 1 else sp
    if chunk.inv_scale != 1.0:
        sp *= chunk.inv_scale
    sp[..., 0, 0] -= chunk.offset * chunk.inv_scale * H * W
    return np.ascontiguousarray(sp)


def chunk_spectra(chunk, plan, xs=None):
    """The chunk's image spectra in the plan's precision (numpy), from its cache when kept."""
    c = chunk.cache
    key = ("cpu", plan.dtype.name)
    if c.spectra is not None and c.key == key:
        return c.spectra
    if xs is None and chunk.data.dtype == plan.dtype:
        sp = _raw_spectra(chunk, plan.workers)
    else:
        if xs is None:
            xs = standardized(chunk, plan.dtype, use_numba=plan.backend == "numba")
        sp = kernels.spectra(xs.astype(plan.dtype, copy=False), plan.workers)
    if plan.cache_spectra and c.keep_spectra:
        c.spectra, c.key = sp, key
    return sp
