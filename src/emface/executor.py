"""Run one pass of the engine over a source, on this machine.

An executor maps `emface.engine.chunk_stats` over a source's chunks and sums
the results. The EM driver only talks to executors, so the same loop runs on
threads here or on a Dask cluster (`emface.distributed.DaskExecutor`).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .engine import chunk_stats, make_plan, resolve_backend, stats_from_positions, stats_from_q
from .engine import costs

__all__ = ["EngineConfig", "LocalExecutor", "single_threaded_blas"]


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
    backend : {"auto", "numba", "numpy"}
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
        self.backend = resolve_backend(self.backend)
        if self.backend == "torch":
            _check_torch_device(self.device)


class LocalExecutor:
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

    def _plan(self, params, hard):
        cached = self.source.cache_budget > 0
        return make_plan(params, hard=hard, dtype=self.config.dtype, backend=self.config.backend,
                         route=self.config.route, workers=self.config.workers, cache_spectra=cached,
                         device=self.config.device)

    def pass_stats(self, params, *, hard=False, per_image=True):
        """One E-step over all images: the summed `Stats` of θ = `params` (working units)."""
        plan = self._plan(params, hard)
        total = None
        with single_threaded_blas():
            for chunk in self.source.chunks():
                s = chunk_stats(chunk, plan, per_image=per_image)
                total = s if total is None else total + s
        return total

    def collect(self, params, *, hard=False, output="q"):
        """Like `pass_stats`, but also gather the posterior or log joint of every image.

        Returns
        -------
        Stats, ndarray (K, P, Q)
        """
        plan = self._plan(params, hard)
        P, Q = plan.grid_shape
        full = np.empty((self.n_images, P, Q))
        total = None
        with single_threaded_blas():
            for (a, b), chunk in zip(self.source.bounds, self.source.chunks()):
                s, out = chunk_stats(chunk, plan, output=output)
                full[a:b] = out
                total = s if total is None else total + s
        return total, full

    def gather_log_joint(self, params, positions, offsets):
        """log p(x_k, d | θ) at ``d = positions[k] + offset`` for each offset.

        Returns
        -------
        ndarray (K, len(offsets)); -inf where a position falls off the grid.
        """
        positions = np.asarray(positions)
        offsets = np.asarray(offsets).reshape(-1, 2)
        plan = self._plan(params, False)
        P, Q = plan.grid_shape
        out = np.full((self.n_images, len(offsets)), -np.inf)
        with single_threaded_blas():
            for (a, b), chunk in zip(self.source.bounds, self.source.chunks()):
                _, lj = chunk_stats(chunk, plan, output="log_joint", per_image=False)
                out[a:b] = _gather(lj, positions[a:b], offsets, P, Q)
        return out

    def stats_from_q(self, q_of_chunk):
        """M-step statistics under a posterior given per chunk.

        Parameters
        ----------
        q_of_chunk : callable (a, b) -> ndarray (b - a, P, Q)
        """
        total = None
        h, w = self.source.face_shape
        for (a, b), chunk in zip(self.source.bounds, self.source.chunks()):
            s = stats_from_q(chunk, q_of_chunk(a, b), (h, w), backend=self.config.backend,
                             workers=self.config.workers)
            total = s if total is None else total + s
        return total

    def stats_from_positions(self, positions):
        """M-step statistics when every image's face is at the given (row, col): crops, no FFT."""
        positions = np.asarray(positions)
        h, w = self.source.face_shape
        total = None
        for (a, b), chunk in zip(self.source.bounds, self.source.chunks()):
            s = stats_from_positions(chunk, positions[a:b], (h, w), backend=self.config.backend,
                                     workers=self.config.workers)
            total = s if total is None else total + s
        return total


def _gather(lj, positions, offsets, P, Q):
    n = lj.shape[0]
    out = np.full((n, len(offsets)), -np.inf)
    for t, (di, dj) in enumerate(offsets):
        r = positions[:, 0] + di
        c = positions[:, 1] + dj
        ok = (r >= 0) & (r < P) & (c >= 0) & (c < Q)
        out[ok, t] = lj[np.flatnonzero(ok), r[ok], c[ok]]
    return out
