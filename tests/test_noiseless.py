"""On noiseless data EM recovers q, F and B exactly."""

import numpy as np
import pytest

from conftest import contrast_problem, sample_images
from emface import FaceEM
from emface.engine import params_from
from emface.executor import EngineConfig, LocalExecutor
from emface.engine.records import Params
from emface.sources import ArraySource


def _noiseless(rng, K=40, H=16, W=19, h=6, w=7):
    theta, _, _ = contrast_problem(rng, 1, H, W, h, w, s=1.0)
    X, _, pos = sample_images(rng, theta, K, noise=False)
    return theta, X, pos


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_exact_posterior_and_parameters_from_the_truth(rng, backend):
    theta, X, pos = _noiseless(rng)
    src = ArraySource(X, theta.face_shape, standardize=False)
    ex = LocalExecutor(src, EngineConfig(backend=backend))
    th = Params(theta.faces, theta.background, 1e-3, theta.prior)
    stats, q = ex.collect(th, output="q")
    K = len(X)
    # exactly one-hot at the true positions
    assert np.array_equal(q[np.arange(K), 0, pos[:, 0], pos[:, 1]], np.ones(K))
    assert q.sum() == K
    # s² is an expanded sum of squares, exact to the rounding of Σ||X||² (1e-16 relative):
    # here about (2e-6)², so a floor above that is where s lands
    floor = 1e-4
    new, info = params_from(stats, th, noise_floor=floor)
    assert np.abs(new.faces - theta.faces).max() < 1e-9
    assert np.abs(new.background - theta.background).max() < 1e-9
    assert new.noise_std == pytest.approx([floor]) and info.s_floored


def test_fit_recovers_noiseless_face_exactly(rng):
    theta, X, pos = _noiseless(rng)
    start = theta.faces[0, 0] + rng.normal(0, 5.0, theta.face_shape)
    est = FaceEM(theta.face_shape, face_init=start, background_init=theta.background[0] + 1.0,
                 noise_std_init=20.0, max_iter=200, random_state=0).fit(X)
    assert np.array_equal(est.predict(X), pos)
    assert np.abs(est.face_ - theta.faces[0, 0]).max() < 1e-6
    assert np.abs(est.background_ - theta.background[0]).max() < 1e-6
    # s sits on its floor, finite and positive
    assert 0 < est.noise_std_ < 1e-3 * X.std()
    assert np.isfinite(est.lower_bound_)
