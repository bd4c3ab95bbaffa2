"""Chunked access to image stacks, with the per-chunk caches the engine keeps.

A source turns an array-like of shape (K, H, W) or (K, H, W, Ch) -- an
in-memory array, a memory-mapped ``.npy``, a zarr array, an HDF5 dataset, a
memory-mapped (or else read) TIFF, a lazily decoded video -- into a sequence
of `emface.engine.Chunk` objects, each (n, H, W, Ch) raw as the kernels read
it (a view, for an in-memory grey stack). It also fixes the affine map
to working units (centre and scale), so that the engine's expanded sums of
squares stay well conditioned whatever the data's range: the model is
equivariant, and the estimator maps the parameters back.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .engine import Chunk, ChunkCache, block_moments, costs

__all__ = ["ArraySource", "Moments", "WorkingUnits", "available_memory", "sample_runs", "read_runs", "working_map"]

# raw dtypes the fused kernels read directly; others are converted per chunk
_DIRECT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.uint8))


def available_memory():
    """Bytes of physical memory currently available (best effort)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 * 2**30


def as_chunk_array(x):
    """A block of images (n, H, W) or (n, H, W, Ch) as the kernels read it.

    Returns a C-contiguous (n, H, W, Ch) array of float64, float32 or uint8:
    the images as they are stored, channels last (a view when they already
    are one: a grey block gains a channel axis of length 1 for free).
    """
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.view(np.uint8)
    if x.dtype not in _DIRECT_DTYPES:
        x = x.astype(np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def sample_runs(n_images, n, rng, *, bytes_per_image=0, max_bytes=None):
    """Sorted indices of up to `n` of `n_images` images, in runs of consecutive images from random places.

    Runs read fast from chunked and sequential files (zarr, HDF5, TIFF,
    video). With `max_bytes`, fewer images are taken so that they weigh at most
    that much at `bytes_per_image` each. All images when they are few enough.
    """
    if max_bytes is not None and bytes_per_image > 0:
        n = min(n, max(1, int(max_bytes // bytes_per_image)))
    K = int(n_images)
    if n >= K:
        return np.arange(K)
    run = max(1, n // 10)
    starts = np.sort(rng.choice(K - run + 1, size=max(1, n // run), replace=False))
    # overlapping runs would repeat images: keep them apart
    keep = np.concatenate([[True], np.diff(starts) >= run])
    return np.concatenate([np.arange(a, a + run) for a in starts[keep]])


def read_runs(data, idx):
    """``data[idx]`` for sorted indices, reading each run of consecutive images with one slice."""
    idx = np.asarray(idx)
    if len(idx) == 0:
        return np.asarray(data[0:0])
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    return np.concatenate([np.asarray(data[int(r[0]):int(r[-1]) + 1]) for r in np.split(idx, breaks)])


def spectrum_bytes_per_image(image_shape, compute_dtype, n_channels=1):
    H, W = image_shape
    return n_channels * H * (W // 2 + 1) * 2 * np.dtype(compute_dtype).itemsize


#: values whose largest magnitude lies outside [2**-200, 2**200] are summarised scaled by a power
#: of two (exactly), so that their squares and cubes, summed, neither overflow nor underflow
_SHIFT_ABOVE = 2.0 ** 200
_SHIFT_BELOW = 2.0 ** -200


@dataclass
class Moments:
    """Count, mean, central moments and range of pixel values; combine with ``+``.

    One pass over the data, block by block (Chan et al.'s pairwise update), so
    a stack is read once and Dask workers can each summarise their blocks.
    `mean`, `m2` and `m3` are those of the values times ``2**-exp``: `exp` is
    0 unless the values are too large or too small (beyond ``2**±200``) to
    square and cube in float64, and then the exponent of the largest; `lo`
    and `hi` are in data units.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    exp: int = 0

    @classmethod
    def of(cls, x, *, first_index=0, check_finite=True):
        """The moments of one block of images (n, ...); NaN and inf raise ValueError.

        Two passes of a fused kernel over the block (the numpy route takes seven).
        """
        x = np.asarray(x)
        if x.size == 0:
            return cls()
        if x.dtype in _DIRECT_DTYPES and x.flags.c_contiguous:
            out = block_moments(x)
            bad = out[:, 0]
        else:
            x64 = x.astype(np.float64)
            bad = (~np.isfinite(x64)).reshape(len(x), -1).sum(axis=1) if x.dtype.kind == "f" else np.zeros(len(x))
            out = None
        if check_finite and bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"X must hold finite values only (NaN and inf are not supported), but image "
                f"{first_index + first} has {int(bad[first])} NaN or infinite pixel(s)"
            )
        if out is not None and not bad.any():
            lo, hi = float(out[:, 2].min()), float(out[:, 3].max())
            if not _needs_shift(lo, hi):
                return cls(int(x.size), float(out[:, 1].sum()) / x.size, float(out[:, 4].sum()),
                           float(out[:, 5].sum()), lo, hi)
        x64 = x.astype(np.float64)
        lo, hi = float(x64.min()), float(x64.max())
        exp = math.frexp(max(abs(lo), abs(hi)))[1] if _needs_shift(lo, hi) else 0
        if exp:
            x64 = np.ldexp(x64, -exp)
        mean = float(np.sum(x64)) / x.size
        d = x64 - mean
        d2 = d * d
        return cls(int(x.size), mean, float(d2.sum()), float(np.vdot(d2, d)), lo, hi, exp)

    def _at(self, exp):
        """The same moments with the values scaled by ``2**-exp`` (exp >= self.exp: may underflow to 0)."""
        k = exp - self.exp
        if k == 0:
            return self
        return Moments(self.n, math.ldexp(self.mean, -k), math.ldexp(self.m2, -2 * k), math.ldexp(self.m3, -3 * k),
                       self.lo, self.hi, exp)

    def __add__(self, o):
        if o.n == 0:
            return self
        if self.n == 0:
            return o
        if self.exp != o.exp:  # one unit for both: the larger values'
            e = max(self.exp, o.exp)
            return self._at(e) + o._at(e)
        n = self.n + o.n
        delta = o.mean - self.mean
        mean = self.mean + delta * o.n / n
        m2 = self.m2 + o.m2 + delta * delta * self.n * o.n / n
        m3 = (self.m3 + o.m3 + delta ** 3 * self.n * o.n * (self.n - o.n) / (n * n)
              + 3.0 * delta * (self.n * o.m2 - o.n * self.m2) / n)
        return Moments(n, mean, m2, m3, min(self.lo, o.lo), max(self.hi, o.hi), self.exp)


def _needs_shift(lo, hi):
    big = max(abs(lo), abs(hi))
    return math.isfinite(big) and (big > _SHIFT_ABOVE or 0.0 < big < _SHIFT_BELOW)


def working_map(values):
    """(offset, scale) of the map to working units for these values (an in-memory array), as a stack's.

    Computed without overflow or underflow at any scale; NaN and inf raise ValueError.
    """
    x = np.ascontiguousarray(values, dtype=np.float64).reshape(1, -1)
    return WorkingUnits()._adopt(Moments.of(x))


class WorkingUnits:
    """The affine map between data units and working units, and what it needs from the data.

    Subclasses set `offset`, `scale`, `data_range`, `data_std` and `orientation`
    through `_adopt`, and provide `_moments` to compute them on demand. One map
    serves every channel, so one shared s keeps its meaning.
    """

    image_shape = None
    n_channels = 1
    offset = 0.0
    scale = 1.0
    data_range = None
    data_std = None
    orientation = None

    def _set_map(self, moments, check_finite, standardize=True):
        """The map to working units: `moments` (offset, scale) as given, e.g. a model's, with float data
        still scanned for NaN and inf as fit's are; else from the data's own moments (`standardize`), or
        the identity."""
        self.data_range = None
        self.data_std = None
        self.orientation = None
        if moments is not None:
            self.offset, self.scale = float(moments[0]), float(moments[1])
            if check_finite and np.dtype(self.data.dtype).kind == "f":  # predict's images: checked as fit's
                self._moments(True)
        elif standardize:
            self.offset, self.scale = self._moments(check_finite)
        else:
            self.offset, self.scale = 0.0, 1.0
            if check_finite:
                self._moments(True)

    def _adopt(self, m):
        """Take the map and the data's summary from `Moments`; return (offset, scale).

        The moments come scaled by ``2**-m.exp`` where the data's values are
        too large or small to square in float64: the spread is taken there and
        scaled back, so that ``c·X`` maps to the same working units as X for
        any c from 1e-300 to 1e300.
        """
        if not np.isfinite(m.mean):
            raise ValueError(f"X must hold values whose sum fits in float64, got a sum of {m.mean * m.n!r} "
                             f"over {m.n} values (largest {m.hi!r})")
        mean = math.ldexp(m.mean, m.exp)
        std_e = math.sqrt(m.m2 / max(m.n, 1))  # in units of 2**m.exp
        std = math.ldexp(std_e, m.exp) if np.isfinite(std_e) else std_e
        if not np.isfinite(std_e) or std_e < 1e-300 or not 0.0 < std < math.inf:
            scale = max(abs(mean), 1.0)
        else:
            scale = std
        lo_w, hi_w = (m.lo - mean) / scale, (m.hi - mean) / scale
        if math.isfinite(m.lo) and math.isfinite(m.hi) and not (math.isfinite(lo_w) and math.isfinite(hi_w)):
            raise ValueError(f"X holds values from {m.lo!r} to {m.hi!r}: too wide a range to centre in float64")
        self.data_range = (m.lo, m.hi)
        self.data_std = std
        # the sign of the data's skewness: random starts drawn relative to it
        # make fits of X and of -X mirror each other exactly
        self.orientation = -1.0 if m.m3 < 0 else 1.0
        return mean, scale

    def working_range(self):
        """(min, max) of the data in working units (scanned once on demand)."""
        if self.data_range is None:
            self._moments(False)
        lo, hi = self.data_range
        return (lo - self.offset) / self.scale, (hi - self.offset) / self.scale

    def working_orientation(self):
        """+1 or -1: the sign of the data's skewness (see `emface.init.random_start`)."""
        if self.orientation is None:
            self._moments(False)
        return self.orientation

    def working_std(self):
        """Standard deviation of all pixels in working units."""
        if self.data_std is None:
            self._moments(False)
        return self.data_std / self.scale

    # ------------------------------------------------------------------ units
    def to_working(self, params):
        """Parameters in data units -> working units."""
        return params.affine(1.0 / self.scale, -self.offset / self.scale)

    def to_data(self, params):
        """Parameters in working units -> data units."""
        return params.affine(self.scale, self.offset)

    def loglik_to_data(self, value_per_image):
        """A per-image log density in working units -> data units (the Jacobian term)."""
        H, W = self.image_shape
        return value_per_image - H * W * self.n_channels * math.log(self.scale)

    def loglik_to_working(self, value_per_image):
        """The inverse of `loglik_to_data`."""
        H, W = self.image_shape
        return value_per_image + H * W * self.n_channels * math.log(self.scale)


class ArraySource(WorkingUnits):
    """Chunks of a (K, H, W) or (K, H, W, Ch) stack, with caches and the map to working units.

    Parameters
    ----------
    data : array-like (K, H, W) or (K, H, W, Ch)
        Anything that slices along the first axis into numpy arrays.
    face_shape : (h, w)
    compute_dtype : {np.float64, np.float32}
        Precision of the correlations (and so of the cached spectra).
    max_memory : int or None
        Bound in bytes on what the engine holds besides `data` itself (cached
        spectra and chunk buffers). None: `emface.engine.costs.default_cache_budget`
        (every spectrum while they fit in 1 GiB, else up to four fifths of the data's size),
        never more than half the available memory.
    chunk_size : int or None
        Images per chunk; None picks it from a memory target.
    standardize : bool
        Centre and scale to zero mean and unit spread (working units).
    moments : tuple (offset, scale), optional
        Use this map instead of computing it.
    check_finite : bool
        Scan the data for NaN and inf (raises ValueError).
    n_faces : int
        C, for the size of the chunks' working buffers.
    """

    def __init__(self, data, face_shape, *, compute_dtype=np.float64, max_memory=None,
                 chunk_size=None, standardize=True, moments=None, check_finite=True, n_faces=1):
        self.data = data
        self.n_images = int(data.shape[0])
        self.image_shape = tuple(int(v) for v in data.shape[1:3])
        self.n_channels = int(data.shape[3]) if len(data.shape) == 4 else 1
        self.face_shape = tuple(face_shape)
        self.compute_dtype = np.dtype(compute_dtype)
        self.raw_dtype = np.dtype(data.dtype)
        self.max_memory = costs.parse_memory(max_memory)
        H, W = self.image_shape
        itemsize = self.compute_dtype.itemsize
        target = 16 * 2**20
        if self.max_memory is not None:
            target = max(2**20, min(target, self.max_memory // 8))
        if chunk_size is None:
            chunk_size = costs.chunk_size(self.image_shape, self.face_shape, itemsize,
                                          target_bytes=target, n_images=self.n_images, n_faces=n_faces,
                                          n_channels=self.n_channels)
        self.chunk_size = max(1, int(chunk_size))
        self._bounds = [(a, min(a + self.chunk_size, self.n_images))
                        for a in range(0, self.n_images, self.chunk_size)]
        spec_bytes_per_image = spectrum_bytes_per_image(self.image_shape, self.compute_dtype, self.n_channels)
        if self.max_memory is None:
            raw_bytes = self.n_images * H * W * self.n_channels * max(self.raw_dtype.itemsize, 1)
            budget = costs.default_cache_budget(raw_bytes, self.n_images * spec_bytes_per_image,
                                                available_memory())
        else:
            budget = max(0, int(0.6 * self.max_memory) - 4 * target)
        self.cache_budget = budget
        n_cached = budget // spec_bytes_per_image if spec_bytes_per_image else 0
        self._caches = []
        for a, b in self._bounds:
            keep = b <= n_cached
            self._caches.append(ChunkCache(keep_spectra=keep))
        self._set_map(moments, check_finite, standardize)

    # ------------------------------------------------------------------ reading
    def _read(self, a, b):
        return as_chunk_array(self.data[a:b])

    def _moments(self, check_finite):
        m = Moments()
        for a, b in self._bounds:
            m = m + Moments.of(self._read(a, b), first_index=a, check_finite=check_finite)
        return self._adopt(m)

    def images(self, a, b):
        """Images a..b in working units: a float64 (b - a, Ch, H, W) array (channels first)."""
        x = np.moveaxis(self._read(a, b), -1, 1).astype(np.float64)
        return (x - self.offset) / self.scale

    # ------------------------------------------------------------------ chunks
    @property
    def bounds(self):
        return list(self._bounds)

    def chunk(self, i):
        a, b = self._bounds[i]
        return Chunk(self._read(a, b), self.offset, 1.0 / self.scale, self._caches[i])

    def chunks(self):
        """Yield every chunk in order (caches persist between passes)."""
        for i in range(len(self._bounds)):
            yield self.chunk(i)

    @property
    def cached_bytes(self):
        return sum(c.nbytes for c in self._caches)

    @property
    def planned_cache_bytes(self):
        """Bytes of spectra the cache will hold once every chunk has been seen (within `cache_budget`)."""
        per_image = spectrum_bytes_per_image(self.image_shape, self.compute_dtype, self.n_channels)
        return sum((b - a) * per_image for (a, b), c in zip(self._bounds, self._caches, strict=True)
                   if c.keep_spectra)

