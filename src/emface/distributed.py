"""Fitting on a Dask cluster: the engine's statistics computed where the data live.

`DaskExecutor` has the interface of `emface.executor.LocalExecutor`, so the EM
driver runs unchanged. For a dask array chunked along images, every block
becomes an `emface.engine.Chunk` held in a worker's memory (persisted), so
its image spectra are computed once and reused by every iteration. Each pass:

1. the plan derived from θ is broadcast to the workers;
2. every block's sufficient statistics are computed on the worker that holds it;
3. they are summed by a tree reduction; the driver gets one `Stats`.

Requires the ``distributed`` extra: ``pip install 'emface[distributed]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator

import numpy as np

from .engine import Chunk, ChunkCache, chunk_stats, costs, make_plan, stats_from_positions
from .executor import BaseExecutor, EngineConfig, LocalExecutor, single_threaded_blas
from .engine.records import StatsSum
from .sources import ArraySource, Moments, WorkingUnits, as_chunk_array, spectrum_bytes_per_image

__all__ = ["DaskExecutor", "get_client", "is_dask", "make_executor"]

#: a numpy stack sent to a cluster is cut into dask blocks of about this many bytes of images
_BLOCK_BYTES = 64 * 2**20


def is_dask(X):
    """Whether X is a dask collection (without importing dask)."""
    return type(X).__module__.startswith("dask.")


def make_executor(X, face_shape, config, *, scheduler=None, max_memory=None, n_faces=1, moments=None,
                  chunk_size=None):
    """The executor of a pass over X: a `DaskExecutor` on a cluster, else a `LocalExecutor` here.

    A cluster is used for a dask array when a client is active, or for any
    stack when `scheduler` (an address or a `distributed.Client`) is given; a
    client made here for an address is closed with the executor. A dask array
    without a cluster is computed here, chunk by chunk.

    Parameters
    ----------
    X : array-like (K, H, W) or (K, H, W, Ch)
    face_shape : (h, w)
    config : EngineConfig
    scheduler : str or distributed.Client, optional
    max_memory : int or str, optional
        Bound on the cached spectra.
    n_faces : int
    moments : (offset, scale), optional
        The map to working units (a fitted model's); None: measured from X.
    chunk_size : int, optional
        Images per chunk here (incremental EM caps it at a block's worth).
    """
    if is_dask(X) or scheduler is not None:
        client = get_client(scheduler)
        owned = isinstance(scheduler, str)  # made here for an address: closed after the pass
        if client is not None:
            if not is_dask(X):
                import dask.array as da

                n = costs.chunk_size(tuple(X.shape[1:3]), face_shape, config.dtype.itemsize,
                                     target_bytes=_BLOCK_BYTES)
                X = da.from_array(X, chunks=(n,) + (-1,) * (X.ndim - 1))
            return DaskExecutor(X, face_shape, config=config, client=client, max_memory=max_memory,
                                moments=moments, owns_client=owned)
    source = ArraySource(X, face_shape, compute_dtype=config.dtype, max_memory=max_memory, moments=moments,
                         n_faces=int(n_faces), chunk_size=chunk_size)
    return LocalExecutor(source, config)


def get_client(scheduler=None):
    """The active `distributed.Client`, one connected to `scheduler` (an address or a Client), or None.

    A client made here for an address belongs to the caller, who closes it.
    """
    try:
        from distributed import Client, default_client
    except ImportError:  # pragma: no cover - optional
        if scheduler is not None:
            raise ImportError("scheduler= needs the distributed extra: pip install 'emface[distributed]'") from None
        return None
    if scheduler is not None:
        if isinstance(scheduler, Client):
            return scheduler
        return Client(scheduler)
    try:
        return default_client()
    except ValueError:
        return None


# ----------------------------------------------------------------------------- worker-side tasks

def _threads_here():
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except Exception:  # not on a worker (e.g. a local scheduler)
        return 1


def _make_chunk(block, offset, inv_scale, keep_spectra):
    return Chunk(as_chunk_array(block), float(offset), float(inv_scale), ChunkCache(keep_spectra=keep_spectra))


def _on_worker(plan):
    n = _threads_here()
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    return dataclasses.replace(plan, workers=n) if plan is not None else None


def _stats_task(chunk, plan, per_image):
    plan = _on_worker(plan)
    with single_threaded_blas():
        return chunk_stats(chunk, plan, per_image=per_image)


def _collect_task(chunk, plan, output):
    plan = _on_worker(plan)
    with single_threaded_blas():
        return chunk_stats(chunk, plan, output=output)


def _positions_task(chunk, positions, labels, face_shape, n_faces, backend, with_moments):
    _on_worker(None)
    return stats_from_positions(chunk, positions, labels, face_shape, n_faces, backend=backend,
                                workers=_threads_here(), with_moments=with_moments)


def _moments_task(block, first_index, check_finite):
    return Moments.of(np.asarray(block), first_index=first_index, check_finite=check_finite)


def _refuse_brightness(params):
    if params.gains is not None:
        raise ValueError("per-image brightness runs on this machine only, not on a Dask cluster: use "
                         "brightness='fixed' there, or a local array")


# ----------------------------------------------------------------------------- the executor

class DaskSource(WorkingUnits):
    """A dask array's blocks, summarised on the workers; the map to working units."""

    def __init__(self, X, face_shape, client, *, moments=None, check_finite=True):
        if X.ndim not in (3, 4):
            raise ValueError(f"X must be a 3-D or 4-D dask array (K, H, W) or (K, H, W, Ch), got {X.ndim}-D")
        if any(len(c) > 1 for c in X.chunks[1:]):
            X = X.rechunk({i: -1 for i in range(1, X.ndim)})
        self.data = X
        self.client = client
        self.n_images = int(X.shape[0])
        self.image_shape = (int(X.shape[1]), int(X.shape[2]))
        self.n_channels = int(X.shape[3]) if X.ndim == 4 else 1
        self.face_shape = tuple(face_shape)
        edges = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(int)
        self.bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        self.blocks = list(X.to_delayed().ravel())
        self._check_finite = check_finite
        self._set_map(moments, check_finite)

    def _moments(self, check_finite=False):
        import dask

        tasks = [dask.delayed(_moments_task)(b, a, check_finite) for b, (a, _) in zip(self.blocks, self.bounds)]
        parts = self.client.gather(self.client.compute(tasks))
        m = Moments()
        for p in parts:
            m = m + p
        return self._adopt(m)


class DaskExecutor(BaseExecutor):
    """Sums the engine's statistics over a dask array's blocks on a Dask cluster.

    Parameters
    ----------
    X : dask.array.Array (K, H, W) or (K, H, W, Ch)
        Chunked along images (other axes are merged into one block).
    face_shape : (h, w)
    config : EngineConfig
    client : distributed.Client, optional
        Defaults to the active client.
    max_memory : int or str, optional
        Bound on the spectra each worker caches.
    moments : (offset, scale), optional
        The map to working units (from a fitted model).
    owns_client : bool
        Close `client` in `close` (it was made for this fit from an address).
    """

    def __init__(self, X, face_shape, *, config=None, client=None, max_memory=None, moments=None,
                 owns_client=False):
        self.client = client or get_client()
        self._owns_client = bool(owns_client)
        if self.client is None:
            raise ValueError("DaskExecutor needs a distributed.Client: start one, or pass scheduler=ADDRESS")
        self.config = config or EngineConfig()
        self.source = DaskSource(X, face_shape, self.client, moments=moments)
        self.n_images = self.source.n_images
        self.image_shape = self.source.image_shape
        src = self.source
        n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        per_image = spectrum_bytes_per_image(self.image_shape, self.config.dtype, src.n_channels)
        budget = costs.parse_memory(max_memory)
        if budget is None:
            K, (H, W) = self.n_images, self.image_shape
            raw = K * H * W * src.n_channels * max(np.dtype(X.dtype).itemsize, 1)
            budget = max(raw // n_workers, 512 * 2**20)
        else:
            budget = int(0.6 * budget)
        n_cached = (budget * n_workers) // per_image
        import dask

        tasks = [dask.delayed(_make_chunk)(blk, src.offset, 1.0 / src.scale, b <= n_cached)
                 for blk, (a, b) in zip(src.blocks, src.bounds)]
        # the chunks (and the spectra they will cache) stay in the workers' memory,
        # and every later task on a chunk runs where it lives
        from distributed import wait

        self._chunks = self.client.compute(tasks)
        wait(self._chunks)
        holders = self.client.who_has(self._chunks)
        self._where = [list(holders[f.key])[:1] for f in self._chunks]
        self.cache_spectra = n_cached > 0

    def running(self):
        return contextlib.nullcontext()

    def close(self):
        """Release the persisted chunks on the workers (and close a client made for this executor)."""
        for f in self._chunks:
            f.release()
        self._chunks = []
        if self._owns_client:
            self.client.close()
            self._owns_client = False

    @property
    def bounds(self):
        return self.source.bounds

    def _plan(self, params, hard):
        return make_plan(params, hard=hard, dtype=self.config.dtype, backend=self.config.backend,
                         route=self.config.route, workers=1, cache_spectra=self.cache_spectra,
                         with_moments=self._moments is None)

    def _tree_sum(self, futures):
        while len(futures) > 1:
            nxt = [self.client.submit(operator.add, futures[i], futures[i + 1], pure=False)
                   if i + 1 < len(futures) else futures[i] for i in range(0, len(futures), 2)]
            futures = nxt
        return self._fill_moments(futures[0].result())

    def pass_stats(self, params, *, hard=False, per_image=True, chunks=None, fit_steps=0):
        """One E-step over all blocks, computed on the workers and tree-summed.

        Dask fits by batch EM: `chunks` (incremental EM's blocks) is not supported, nor per-image
        brightness (`fit_steps` is there for the local executor's signature).
        """
        if chunks is not None:
            raise ValueError("the Dask executor runs batch EM only: use algorithm='batch'")
        _refuse_brightness(params)
        plan = self.client.scatter(self._plan(params, hard), broadcast=True, hash=False)
        futures = [self._submit(_stats_task, i, plan, per_image) for i in range(len(self._chunks))]
        return self._tree_sum(futures)

    def _submit(self, fn, i, *args):
        """Run fn(chunk_i, *args) on the worker that holds chunk i."""
        return self.client.submit(fn, self._chunks[i], *args, pure=False, workers=self._where[i] or None,
                                  allow_other_workers=not self._where[i])

    def collect(self, params, *, hard=False, output="q", fit_steps=0):
        _refuse_brightness(params)
        plan = self.client.scatter(self._plan(params, hard), broadcast=True, hash=False)
        futures = [self._submit(_collect_task, i, plan, output) for i in range(len(self._chunks))]
        parts = self.client.gather(futures)
        total = StatsSum()
        for s, _ in parts:
            total.add(s)
        return self._fill_moments(total.result()), np.concatenate([o for _, o in parts])

    def stats_from_positions(self, positions, labels=None, *, n_faces=1, face_shape=None):
        positions = np.asarray(positions)
        labels = np.zeros(len(positions), dtype=np.int64) if labels is None else np.asarray(labels)
        face_shape = face_shape or self.source.face_shape
        futures = [self._submit(_positions_task, i, positions[a:b], labels[a:b], face_shape, n_faces,
                                self.config.backend, self._moments is None)
                   for i, (a, b) in enumerate(self.source.bounds)]
        return self._tree_sum(futures)
