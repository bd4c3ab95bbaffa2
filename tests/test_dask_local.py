"""A dask array with no cluster running streams its slices through the local engine."""

import numpy as np
import pytest

from conftest import optional
from emface import FaceEM
from emface.datasets import make_faces

da = optional("dask.array")
distributed = optional("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")


def test_dask_array_without_a_cluster_streams_locally():
    with pytest.raises(ValueError):
        distributed.default_client()  # no client in this process: the local path is taken
    X, _ = make_faces(200, (30, 36), (12, 10), noise=0.8, random_state=3)
    ref = FaceEM((12, 10), random_state=0, n_init=1).fit(X)
    got = FaceEM((12, 10), random_state=0, n_init=1).fit(da.from_array(X, chunks=(50, -1, -1)))
    assert np.abs(got.face_ - ref.face_).max() <= 1e-10 * np.abs(ref.face_).max()
    assert np.array_equal(got.predict(X), ref.predict(X))
