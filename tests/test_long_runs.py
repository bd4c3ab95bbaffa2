"""Long runs are never lost: atomic checkpoints, resuming, and Ctrl-C during fit."""

import os

import numpy as np
import pytest

from conftest import contrast_problem
from emface import FaceEM
from emface.persistence import load_model

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")


@pytest.fixture
def X(rng):
    theta, X, pos = contrast_problem(rng, 50, 16, 18, 6, 7, s=60.0)
    return X


def _settings(**kw):
    base = dict(init="random", n_init=1, max_iter=12, tol=0.0, random_state=4)
    base.update(kw)
    return base


class Stop:
    """A callback that presses Ctrl-C at a given iteration."""

    def __init__(self, at):
        self.at = at

    def __call__(self, info):
        if info["iter"] == self.at:
            raise KeyboardInterrupt


def test_checkpoint_is_written_atomically_and_loads(tmp_path, X):
    path = tmp_path / "ckpt.npz"
    est = FaceEM((6, 7), checkpoint=path, checkpoint_every=3, **_settings()).fit(X)
    params, extra = load_model(path)
    assert extra["kind"] == "checkpoint"
    assert extra["n_iter"] == 12  # the last multiple of 3
    assert np.allclose(params.faces[0, 0], est.face_)
    assert len(extra["history"]) == 13
    # no temporary files are left behind
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_interrupt_keeps_the_best_so_far_and_reraises(X):
    est = FaceEM((6, 7), callback=Stop(5), **_settings())
    with pytest.raises(KeyboardInterrupt):
        est.fit(X)
    assert est.converged_ is False
    assert est.n_iter_ == 5
    assert len(est.lower_bounds_) == 5
    assert np.isfinite(est.face_).all() and est.noise_std_ > 0
    full = FaceEM((6, 7), **_settings(max_iter=5)).fit(X)
    assert np.allclose(est.face_, full.face_, rtol=1e-12, atol=1e-12)
    assert est.predict(X).shape == (50, 2)


def test_resume_from_a_checkpoint_continues_the_same_run(tmp_path, X):
    path = tmp_path / "run.npz"
    whole = FaceEM((6, 7), **_settings()).fit(X)
    est = FaceEM((6, 7), checkpoint=path, checkpoint_every=1, callback=Stop(7), **_settings())
    with pytest.raises(KeyboardInterrupt):
        est.fit(X)
    resumed = FaceEM.resume(path)
    assert resumed.n_iter_ == 7  # checkpoints are written before callbacks run
    resumed.fit(X)
    assert resumed.n_iter_ == 12
    assert np.allclose(resumed.face_, whole.face_, rtol=1e-9, atol=1e-9)
    assert np.allclose(resumed.lower_bounds_, whole.lower_bounds_, rtol=1e-10)


def test_warm_start_after_an_interrupt_continues(X):
    whole = FaceEM((6, 7), **_settings()).fit(X)
    est = FaceEM((6, 7), callback=Stop(4), **_settings())
    with pytest.raises(KeyboardInterrupt):
        est.fit(X)
    est.set_params(warm_start=True, callback=None)
    est.fit(X)
    assert est.n_iter_ == 12
    assert np.allclose(est.face_, whole.face_, rtol=1e-9, atol=1e-9)


def test_checkpoint_into_a_missing_folder_fails_before_fitting(tmp_path, X):
    with pytest.raises(ValueError, match="cannot write the checkpoint .*: the folder .* does not exist"):
        FaceEM((6, 7), checkpoint=tmp_path / "nope" / "c.npz", **_settings()).fit(X)


def test_resume_with_several_faces_continues_the_same_run(tmp_path):
    """A checkpoint of a C = 2 fit resumes to the uninterrupted fit."""
    from emface.datasets import make_faces

    X, _ = make_faces(200, (26, 30), (9, 8), n_faces=2, noise=0.8, random_state=2)
    kw = dict(n_faces=2, random_state=0, n_init=1, tol=0.0, max_iter=12, init="random", shift_escape=False,
              split_merge=False, accelerate=False)
    whole = FaceEM((9, 8), **kw).fit(X)
    path = tmp_path / "run.npz"
    est = FaceEM((9, 8), checkpoint=path, checkpoint_every=1, callback=Stop(7), **kw)
    with pytest.raises(KeyboardInterrupt):
        est.fit(X)
    resumed = FaceEM.resume(path)
    resumed.fit(X)
    assert resumed.n_iter_ == 12
    assert np.allclose(resumed.faces_, whole.faces_, rtol=1e-9, atol=1e-9)
    assert np.allclose(resumed.lower_bounds_, whole.lower_bounds_, rtol=1e-10)
