"""Fitting on a Dask LocalCluster (2 worker processes on loopback) equals the numpy fit."""


import numpy as np
import pytest

from conftest import optional
from emface import FaceEM
from emface.datasets import make_faces

distributed = optional("distributed")
da = optional("dask.array")

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=50)
    c = Client(cluster)
    try:
        yield c
    finally:  # shut down cleanly even when a test fails
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def data():
    return make_faces(300, (30, 36), (12, 10), noise=0.8, random_state=3)


def _rel(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("hard,alpha", [(False, 0.0), (True, 30.0)])
def test_dask_fit_equals_numpy_fit(client, data, hard, alpha):
    X, truth = data
    kw = dict(hard=hard, prior_smoothing=alpha, random_state=0, n_init=2, tol=1e-6)
    ref = FaceEM((12, 10), **kw).fit(X)
    Xd = da.from_array(X, chunks=(70, -1, -1))
    got = FaceEM((12, 10), **kw).fit(Xd)
    assert _rel(got.face_, ref.face_) < 1e-10
    assert _rel(got.background_, ref.background_) < 1e-10
    assert _rel(got.prior_, ref.prior_) < 1e-10
    assert abs(got.noise_std_ - ref.noise_std_) / ref.noise_std_ < 1e-10
    assert _rel(got.lower_bounds_, ref.lower_bounds_) < 1e-10
    assert got.n_iter_ == ref.n_iter_
    assert np.array_equal(got.predict(Xd), ref.predict(X))
    assert np.mean((ref.predict(X) == truth.positions).all(axis=1)) > 0.99


def test_scheduler_address_with_numpy_input(client, data):
    X, truth = data
    ref = FaceEM((12, 10), random_state=1, n_init=1).fit(X)
    got = FaceEM((12, 10), random_state=1, n_init=1, scheduler=client.scheduler.address).fit(X)
    assert _rel(got.face_, ref.face_) < 1e-10
    assert np.array_equal(got.predict(X), ref.predict(X))


def test_spectra_stay_cached_on_the_workers(client, data):
    from emface.distributed import DaskExecutor
    from emface.executor import EngineConfig
    from emface.init import random_start
    from emface.model import FaceMixture

    X, _ = data
    ex = DaskExecutor(da.from_array(X, chunks=(100, -1, -1)), (12, 10), config=EngineConfig(), client=client)
    p = random_start(ex.source, FaceMixture((12, 10)), np.random.default_rng(0))
    ex.pass_stats(p)
    def spectra_id(c):
        return None if c.cache.spectra is None else id(c.cache.spectra)

    ids = client.gather([ex._submit(spectra_id, i) for i in range(len(ex._chunks))])
    assert None not in ids  # cached on the first pass
    ex.pass_stats(p)
    ids2 = client.gather([ex._submit(spectra_id, i) for i in range(len(ex._chunks))])
    assert ids == ids2  # the same arrays: not recomputed, not moved
    ex.close()


def test_several_colour_faces_on_the_cluster_equal_the_numpy_fit(client):
    """C = 2 faces in colour, hard EM with smoothing: the cluster's fit is the numpy fit."""
    X, truth = make_faces(240, (28, 32), (10, 9), n_faces=2, colour=True, noise=0.8, random_state=5)
    kw = dict(n_faces=2, hard=True, prior_smoothing=5.0, random_state=0, n_init=1, tol=1e-6)
    ref = FaceEM((10, 9), **kw).fit(X)
    got = FaceEM((10, 9), **kw).fit(da.from_array(X, chunks=(60, -1, -1, -1)))
    assert got.faces_.shape == (2, 10, 9, 3)
    assert _rel(got.faces_, ref.faces_) < 1e-10
    assert _rel(got.prior_, ref.prior_) < 1e-10
    assert _rel(got.lower_bounds_, ref.lower_bounds_) < 1e-10
    assert np.array_equal(got.predict_face(X), ref.predict_face(X))
