"""Stacks bigger than memory, and scaling on a Dask cluster (issue 8). Run by hand:

    python benchmarks/scale.py memory [N]      # K=40,000 of 64x64 float32, 8x8 face: peak RSS vs data
                                               # (a default fit, or max_iter=N)
    python benchmarks/scale.py zarr [DIR]      # K=200,000 of 100x80 float32 in zarr (6.4 GB): max_memory=1GB
    python benchmarks/scale.py cluster [DIR]   # the same store on a LocalCluster of 1, then 2 workers

Each measurement runs in a child process so that its peak RSS is its own. The
zarr store is written once (uncompressed, 1,000 images a chunk) to DIR
(default /tmp/emface-bench.zarr) and reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _common import peak_rss_gb, synthetic_block  # noqa: E402

DEFAULT_STORE = "/tmp/emface-bench.zarr"
ZK, ZH, ZW, ZH_F, ZW_F = 200_000, 100, 80, 40, 30


def memory_child(max_iter=None):
    from emface import FaceEM
    from emface.datasets import photo
    from emface.sources import ArraySource

    K, H, W, h, w = 40_000, 64, 64, 8, 8
    rng = np.random.default_rng(0)
    face = photo("astronaut", (h, w))
    bg = photo("camera", (H, W))
    X = np.empty((K, H, W), dtype=np.float32)
    for a in range(0, K, 5000):
        X[a:a + 5000] = synthetic_block(rng, 5000, face, bg, face.std())
    base = peak_rss_gb()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {} if max_iter is None else dict(max_iter=max_iter)
        est = FaceEM((h, w), random_state=0, **kw).fit(X)
    dt = time.perf_counter() - t
    peak = peak_rss_gb()
    data = X.nbytes / 1e9
    # the default plan of the spectrum cache for this stack (a source that reads nothing)
    cache = ArraySource(X, (h, w), moments=(0.0, 1.0), check_finite=False).planned_cache_bytes / 1e9
    print(json.dumps(dict(what="memory", K=K, data_gb=round(data, 3), peak_rss_gb=round(peak, 3),
                          ratio=round(peak / data, 2), rss_before_fit_gb=round(base, 3),
                          spectra_cached_gb=round(cache, 3), fit_s=round(dt, 1), n_iter=est.n_iter_, posterior_if_held_gb=round(K * 57 * 57 * 8 / 1e9, 2))))


def make_store(path):
    import zarr

    if os.path.exists(path):
        return
    from emface.datasets import photo

    rng = np.random.default_rng(0)
    face = photo("astronaut", (ZH_F, ZW_F))
    bg = photo("camera", (ZH, ZW))
    z = zarr.create_array(path, shape=(ZK, ZH, ZW), chunks=(1000, ZH, ZW), dtype="float32", compressors=None)
    t = time.perf_counter()
    for a in range(0, ZK, 1000):
        z[a:a + 1000] = synthetic_block(rng, 1000, face, bg, face.std())
    print(f"wrote {path}: {ZK} images of {ZH}x{ZW} float32 ({ZK * ZH * ZW * 4 / 1e9:.1f} GB) "
          f"in {time.perf_counter() - t:.0f} s", flush=True)


class _Timer:
    def __init__(self):
        self.times = []
        self.last = None

    def __call__(self, info):
        if "block" in info:  # incremental EM also reports every block: time whole passes only
            return
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def _timed_fit(X, iters):
    """Fit `iters` iterations with max_memory=1GB; seconds per iteration and in all."""
    from emface import FaceEM

    timer = _Timer()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FaceEM((ZH_F, ZW_F), random_state=0, n_init=1, max_iter=iters, tol=0.0, max_memory="1GB",
               callback=timer).fit(X)
    return dict(s_per_iter=[round(x, 1) for x in timer.times], fit_s=round(time.perf_counter() - t, 1))


def zarr_child(path, iters=3):
    import zarr

    times = _timed_fit(zarr.open_array(path, mode="r"), iters)
    print(json.dumps(dict(what="zarr", K=ZK, store_gb=round(ZK * ZH * ZW * 4 / 1e9, 1), max_memory="1GB",
                          peak_rss_gb=round(peak_rss_gb(), 3), **times)))


def cluster_child(path, n_workers, iters=3):
    import dask.array as da
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=50, memory_limit="6GB")
    client = Client(cluster)
    try:
        times = _timed_fit(da.from_zarr(path), iters)
        print(json.dumps(dict(what="cluster", workers=n_workers, **times)))
    finally:
        client.close()
        cluster.close()


def _child(*args):
    subprocess.run([sys.executable, __file__, *args], check=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "memory"
    store = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_STORE
    if what == "memory":
        _child("_memory", *sys.argv[2:3])
    elif what == "zarr":
        make_store(store)
        _child("_zarr", store)
    elif what == "cluster":
        make_store(store)
        _child("_cluster", store, "1")
        _child("_cluster", store, "2")
    elif what == "_memory":
        memory_child(int(sys.argv[2]) if len(sys.argv) > 2 else None)
    elif what == "_zarr":
        zarr_child(store)
    elif what == "_cluster":
        cluster_child(store, int(sys.argv[3]))
    else:
        sys.exit(__doc__)
