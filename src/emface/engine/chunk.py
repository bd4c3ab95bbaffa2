"""A chunk: a block of raw images, its map to working units, and what it keeps between passes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import kernels

__all__ = ["Chunk", "ChunkCache", "standardized", "chunk_spectra"]


@dataclass
class ChunkCache:
    """What one chunk keeps between iterations: its image spectra, when the budget allows.

    `spectra` is an array of the namespace that computed it (numpy, or torch
    on a device); `key` says which (device and precision), so a change of
    backend recomputes them.
    """

    keep_spectra: bool = True
    spectra: object = None
    key: tuple | None = None

    @property
    def nbytes(self):
        if self.spectra is None:
            return 0
        nb = getattr(self.spectra, "nbytes", None)
        if nb is None:  # a torch tensor
            nb = self.spectra.element_size() * self.spectra.numel()
        return int(nb)


@dataclass
class Chunk:
    """A block of raw images (n, Ch, H, W) with its map to working units ``(x - offset) * inv_scale``."""

    data: np.ndarray
    offset: float = 0.0
    inv_scale: float = 1.0
    cache: ChunkCache = field(default_factory=ChunkCache)

    @property
    def n(self):
        return self.data.shape[0]


def standardized(chunk, dtype, *, use_numba=True):
    """The chunk in working units, as a new (n, Ch, H, W) array of `dtype`."""
    x = chunk.data
    dtype = np.dtype(dtype)
    if use_numba and x.dtype != np.bool_:
        from . import _numba_kernels as nk

        out = np.empty(x.shape, dtype=dtype)
        nk.pick("standardize", x.size, 2)(x, float(chunk.offset), float(chunk.inv_scale), out)
        return out
    out = np.asarray(x, dtype=dtype)
    if chunk.offset != 0.0 or chunk.inv_scale != 1.0:
        out = (out - dtype.type(chunk.offset)) * dtype.type(chunk.inv_scale)
    elif out is x:
        out = out.copy()
    return out


def chunk_spectra(chunk, plan, xs=None):
    """The chunk's image spectra in the plan's precision (numpy), from its cache when kept."""
    c = chunk.cache
    key = ("cpu", plan.dtype.name)
    if c.spectra is not None and c.key == key:
        return c.spectra
    if xs is None:
        xs = standardized(chunk, plan.dtype, use_numba=plan.backend == "numba")
    sp = kernels.spectra(xs.astype(plan.dtype, copy=False), plan.workers)
    if plan.cache_spectra and c.keep_spectra:
        c.spectra, c.key = sp, key
    return sp
