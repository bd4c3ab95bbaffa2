"""On noiseless data EM recovers q, F and B exactly."""

import numpy as np
import pytest

from conftest import contrast_problem, sample_images
from emface import FaceEM
from emface.engine import params_from
from emface.executor import EngineConfig, LocalExecutor
from emface.model import Params
from emface.sources import ArraySource


def _noiseless(rng, K=40, H=16, W=19, h=6, w=7):
    theta, _, _ = contrast_problem(rng, 1, H, W, h, w, s=1.0)
    X, pos = sample_images(rng, theta, K, noise=False)
    return theta, X, pos


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_exact_posterior_and_parameters_from_the_truth(rng, backend):
    theta, X, pos = _noiseless(rng)
    src = ArraySource(X, theta.face.shape, standardize=False)
    ex = LocalExecutor(src, EngineConfig(backend=backend))
    th = Params(theta.face, theta.background, 1e-3, theta.prior)
    stats, q = ex.collect(th, output="q")
    K = len(X)
    # exactly one-hot at the true positions
    assert np.array_equal(q[np.arange(K), pos[:, 0], pos[:, 1]], np.ones(K))
    assert q.sum() == K
    new, info = params_from(stats, th, face_shape=theta.face.shape, noise_floor=1e-8)
    assert np.abs(new.face - theta.face).max() < 1e-9
    assert np.abs(new.background - theta.background).max() < 1e-9
    assert new.noise_std == pytest.approx(1e-8) and info.s_floored


def test_fit_recovers_noiseless_face_exactly(rng):
    theta, X, pos = _noiseless(rng)
    start = theta.face + rng.normal(0, 5.0, theta.face.shape)
    est = FaceEM(theta.face.shape, face_init=start, background_init=theta.background + 1.0,
                 noise_std_init=20.0, max_iter=200, random_state=0).fit(X)
    assert np.array_equal(est.predict(X), pos)
    assert np.abs(est.face_ - theta.face).max() < 1e-6
    assert np.abs(est.background_ - theta.background).max() < 1e-6
    # s sits on its floor, finite and positive
    assert 0 < est.noise_std_ < 1e-3 * X.std()
    assert np.isfinite(est.lower_bound_)
