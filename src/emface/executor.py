"""Run one pass of the engine over a source, on this machine.

An executor maps `emface.engine.chunk_stats` over a source's chunks and sums
the results: `LocalExecutor` here, chunk after chunk (the kernels run their
own threads inside each chunk), `emface.distributed.DaskExecutor` on a Dask
cluster. The EM driver and the moves only talk to executors, so the same
loop runs on either.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .engine import chunk_stats, make_plan, resolve_backend, stats_from_positions, stats_from_q
from .engine.records import StatsSum
from .sources import ArraySource, read_runs, sample_runs

__all__ = ["EngineConfig", "BaseExecutor", "LocalExecutor", "single_threaded_blas", "subsample_executor"]

#: a subsample's raw images weigh at most this much in memory, and its chunks this much each
SUBSAMPLE_BYTES = 256 * 2**20
SUBSAMPLE_CHUNK_BYTES = 64 * 2**20


def _check_torch_device(device):
    try:
        import torch
    except ImportError:
        raise ImportError("the torch backend needs PyTorch: pip install 'emface[gpu]'") from None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but torch sees no CUDA GPU on this machine")


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def single_threaded_blas():
    """BLAS on one thread while the engine runs its own threads.

    OpenBLAS workers spin after each call; beside Numba's and pocketfft's
    threads on the same cores they cost more than they give (measured: a
    1xQ-grid pass went from 0.17 s to 0.05 s on 2 cores).
    """
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


@dataclass
class EngineConfig:
    """How the engine computes (not what it computes).

    Attributes
    ----------
    dtype : numpy dtype
        float64 (default) or float32 for the correlations; sums stay float64.
    backend : {"auto", "numba", "numpy", "torch"}
    route : {None, "fft", "direct"}
        Correlation route; None lets the cost model choose.
    workers : int
        Threads (FFT workers and fused-kernel threads).
    device : str
        ``"cpu"``, or a torch device such as ``"cuda"`` (implies the torch backend).
    """

    dtype: object = np.float64
    backend: str | None = None
    route: str | None = None
    workers: int = 1
    device: str = "cpu"

    def __post_init__(self):
        self.dtype = np.dtype(self.dtype)
        if self.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, got {self.dtype}")
        self.device = str(self.device)
        if self.device != "cpu" and self.backend in (None, "auto"):
            self.backend = "torch"
        if self.device != "cpu" and self.backend != "torch":
            raise ValueError(f"device={self.device!r} runs through PyTorch: backend must be 'auto' or 'torch', "
                             f"got {self.backend!r}")
        self.backend = resolve_backend(self.backend)
        if self.backend == "torch":
            _check_torch_device(self.device)


def subsample_executor(data, face_shape, moments, config, n_max, rng, *, n_faces=1):
    """An in-memory `LocalExecutor` over up to `n_max` images of `data`, read in runs; and their indices.

    The subsample keeps the whole stack's map to working units (`moments`), so
    parameters move between the two unchanged. Its chunks are large (its
    passes are window sums, with no FFT buffers), so a pass is a few calls.
    """
    shape = tuple(int(v) for v in data.shape)
    per_image = int(np.prod(shape[1:])) * np.dtype(data.dtype).itemsize
    idx = sample_runs(shape[0], n_max, rng, bytes_per_image=per_image, max_bytes=SUBSAMPLE_BYTES)
    X = data if len(idx) == shape[0] and isinstance(data, np.ndarray) else read_runs(data, idx)
    src = ArraySource(X, face_shape, compute_dtype=config.dtype, moments=moments, check_finite=False,
                      n_faces=n_faces, chunk_size=max(1, SUBSAMPLE_CHUNK_BYTES // max(per_image, 1)))
    ex = LocalExecutor(src, config)
    ex.image_index = np.asarray(idx)
    return ex, idx


class BaseExecutor:
    """What every executor shares: the stack's constant sums, and in-memory subsamples for the moves.

    The sums ``Σ_k X_k`` and ``Σ_k ||X_k||²`` do not change between passes:
    the first full pass computes them and later passes reuse them.
    Subclasses set `source`, `config`, `n_images` and `image_shape`.
    """

    _moments = None

    def remember_moments(self, SX, SXX):
        """Keep ``Σ_k X_k`` and ``Σ_k ||X_k||²`` of the whole stack (summed elsewhere, e.g. by incremental EM)."""
        if self._moments is None:
            self._moments = (SX, SXX)

    #: the rows of the whole stack's per-image brightness that this executor's images are (a subsample's)
    image_index = None

    def _brightness(self, params, a, b):
        """Images a..b's (gains, offsets) from θ, or None for the note's model (no per-image brightness)."""
        if params.gains is None:
            return None
        if self.image_index is None and len(params.gains) != self.n_images:
            raise ValueError(f"θ holds the brightness of {len(params.gains)} images; this pass has {self.n_images}")
        rows = slice(a, b) if self.image_index is None else self.image_index[a:b]
        return params.gains[rows], params.offsets[rows]

    def _fill_moments(self, total, full=True):
        if total.SX is not None:
            # with brightness SX and SXX are weighted by each pass's (a, b): not the stack's constants
            if full and self._moments is None and total.gains is None:
                self._moments = (total.SX, total.SXX)
        elif full and self._moments is not None:
            total.SX, total.SXX = self._moments
        return total

    def subsample(self, n_max, rng, *, n_faces=1):
        """(executor, indices) over up to `n_max` images, held here in memory in large chunks."""
        src = self.source
        return subsample_executor(src.data, src.face_shape, (src.offset, src.scale), self.config, n_max, rng,
                                  n_faces=n_faces)


class LocalExecutor(BaseExecutor):
    """Sums the engine's statistics over a source's chunks, in this process.

    Parameters
    ----------
    source : emface.sources.ArraySource
    config : EngineConfig
    """

    def __init__(self, source, config=None):
        self.source = source
        self.config = config or EngineConfig()
        self.n_images = source.n_images
        self.image_shape = source.image_shape
        if self.config.backend == "numba":
            import numba

            numba.set_num_threads(max(1, min(self.config.workers, numba.config.NUMBA_NUM_THREADS)))

    def running(self):
        """Context for a whole fit: BLAS on one thread beside the engine's own threads."""
        return single_threaded_blas()

    def close(self):
        """Nothing to release here (the caches go with the source)."""

    @property
    def n_chunks(self):
        return len(self.source.bounds)

    @property
    def bounds(self):
        return self.source.bounds

    def _plan(self, params, hard, with_moments):
        cached = self.source.cache_budget > 0
        return make_plan(params, hard=hard, dtype=self.config.dtype, backend=self.config.backend,
                         route=self.config.route, workers=self.config.workers, cache_spectra=cached,
                         device=self.config.device, with_moments=with_moments)

    def pass_stats(self, params, *, hard=False, per_image=True, chunks=None, with_moments=None, fit_steps=0):
        """One E-step over all images (or the chunks numbered `chunks`): the summed `Stats` of θ.

        `params` are in working units. A pass over a subset of chunks carries
        the subset's own SX and SXX while the whole source's are not yet known,
        or when `with_moments` is True (incremental EM's first sweep, whose
        M-steps fit the blocks seen so far). With per-image brightness
        (``params.gains``), `fit_steps` alternations of the E-step and the
        (a, b) update come first (new images).
        """
        ids = range(self.n_chunks) if chunks is None else chunks
        full = chunks is None
        if with_moments is None:
            with_moments = self._moments is None
        plan = self._plan(params, hard, with_moments=bool(with_moments))
        total = StatsSum()
        with single_threaded_blas():
            for i in ids:
                a, b = self.source.bounds[i]
                total.add(chunk_stats(self.source.chunk(i), plan, per_image=per_image,
                                      brightness=self._brightness(params, a, b), fit_steps=fit_steps))
        return self._fill_moments(total.result(), full)

    def collect(self, params, *, hard=False, output="q", fit_steps=0):
        """Like `pass_stats`, but also gather the posterior or log joint of every image.

        Returns
        -------
        Stats, ndarray (K, C, P, Q)
        """
        plan = self._plan(params, hard, with_moments=self._moments is None)
        P, Q = plan.grid_shape
        full = np.empty((self.n_images, plan.n_faces, P, Q))
        total = StatsSum()
        with single_threaded_blas():
            for i, (a, b) in enumerate(self.source.bounds):
                s, out = chunk_stats(self.source.chunk(i), plan, output=output,
                                     brightness=self._brightness(params, a, b), fit_steps=fit_steps)
                full[a:b] = out
                total.add(s)
        return self._fill_moments(total.result(), True), full

    def stats_from_q(self, q_of_chunk, face_shape=None):
        """M-step statistics under a posterior given per chunk.

        Parameters
        ----------
        q_of_chunk : callable (a, b) -> ndarray (b - a, C, P, Q)
        """
        total = StatsSum()
        face_shape = face_shape or self.source.face_shape
        for i, (a, b) in enumerate(self.source.bounds):
            total.add(stats_from_q(self.source.chunk(i), q_of_chunk(a, b), face_shape, backend=self.config.backend,
                                   workers=self.config.workers, with_moments=self._moments is None))
        return self._fill_moments(total.result(), True)

    def stats_from_positions(self, positions, labels=None, *, n_faces=1, face_shape=None):
        """M-step statistics when image k shows face ``labels[k]`` at ``positions[k]``: crops, no FFT."""
        positions = np.asarray(positions)
        labels = np.zeros(len(positions), dtype=np.int64) if labels is None else np.asarray(labels)
        face_shape = face_shape or self.source.face_shape
        total = StatsSum()
        for i, (a, b) in enumerate(self.source.bounds):
            total.add(stats_from_positions(self.source.chunk(i), positions[a:b], labels[a:b], face_shape, n_faces,
                                           backend=self.config.backend, workers=self.config.workers,
                                           with_moments=self._moments is None))
        return self._fill_moments(total.result(), True)
