"""Odd but valid input works: integer and bool stacks, one image, constant images,
extreme scales, read-only, non-contiguous and memory-mapped arrays."""

import numpy as np
import pytest

from conftest import contrast_problem
from emface import FaceEM

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")


@pytest.fixture
def problem(rng):
    theta, X, pos = contrast_problem(rng, 60, 18, 22, 6, 7, s=20.0)
    return theta, X, pos


def _fit(X, **kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("n_init", 1)
    return FaceEM((6, 7), **kw).fit(X)


def test_uint8_int_and_float32_stacks_give_the_float64_positions(problem):
    theta, X, pos = problem
    X8 = np.clip(np.round(X), 0, 255).astype(np.uint8)
    ref = _fit(X8.astype(np.float64))
    for Xt in (X8, X8.astype(np.int64), X8.astype(np.int16), X8.astype(np.float32)):
        est = _fit(Xt)
        assert np.array_equal(est.predict(Xt), ref.predict(X8.astype(np.float64)))
        assert np.allclose(est.face_, ref.face_, rtol=1e-6, atol=1e-6)
    assert np.array_equal(ref.predict(X8.astype(float)), pos)


def test_bool_stack(rng):
    K, H, W, h, w = 40, 12, 14, 4, 5
    F = rng.random((h, w)) > 0.5
    X = np.zeros((K, H, W), dtype=bool)
    pos = np.stack([rng.integers(0, H - h + 1, K), rng.integers(0, W - w + 1, K)], 1)
    for k, (i, j) in enumerate(pos):
        X[k, i:i + h, j:j + w] = F
    est = FaceEM((h, w), random_state=0).fit(X)
    assert np.isfinite(est.face_).all() and est.noise_std_ > 0
    assert est.predict(X).shape == (K, 2)


def test_a_single_image(rng):
    X = rng.normal(size=(1, 9, 11))
    with pytest.warns(UserWarning, match="12 background pixel.* covered by a face in every image"):
        est = FaceEM((3, 4), random_state=0).fit(X)
    assert est.predict(X).shape == (1, 2)
    assert np.isfinite(est.lower_bound_)
    assert est.prior_.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("value", [0.0, 7.0, -3e5])
def test_constant_images_floor_s_and_stay_finite(value):
    X = np.full((10, 8, 9), value)
    est = FaceEM((3, 3), random_state=0).fit(X)
    assert 0 < est.noise_std_ < 1e-3 * max(abs(value), 1.0)
    assert np.isfinite(est.noise_std_) and np.isfinite(est.lower_bound_)
    assert np.isfinite(est.lower_bounds_).all()
    assert np.allclose(est.face_, value)
    # background pixels the face covers in every image have no evidence: they
    # keep their starting value (and a warning says so); the rest is the value
    pos = est.predict(X)
    seen = np.ones((8, 9), dtype=bool)
    for i, j in pos:
        seen[i:i + 3, j:j + 3] = False
    assert np.isfinite(est.background_).all()
    if seen.any():
        assert np.allclose(est.background_[seen], value)
    q = est.predict_proba(X)
    assert np.isfinite(q).all() and np.allclose(q.reshape(10, -1).sum(1), 1.0)


@pytest.mark.parametrize("scale,offset", [(1e8, 0.0), (1e-8, 0.0), (1.0, 1e8), (1e-8, 5e-6), (3e6, 1e9)])
def test_extreme_values(problem, scale, offset):
    theta, X, pos = problem
    ref = _fit(X)
    est = _fit(scale * X + offset)
    assert np.array_equal(est.predict(scale * X + offset), ref.predict(X))
    assert np.allclose(est.face_, scale * ref.face_ + offset, rtol=1e-6, atol=1e-6 * scale)
    assert est.noise_std_ == pytest.approx(scale * ref.noise_std_, rel=1e-6)


def test_read_only_and_non_contiguous(problem):
    theta, X, pos = problem
    ref = _fit(X)
    ro = X.copy()
    ro.setflags(write=False)
    assert np.array_equal(_fit(ro).face_, ref.face_)
    wide = np.zeros((60, 18, 44))
    wide[:, :, ::2] = X
    view = wide[:, :, ::2]
    assert not view.flags.c_contiguous
    assert np.allclose(_fit(view).face_, ref.face_, rtol=1e-12, atol=1e-9)
    fortran = np.asfortranarray(X)
    assert np.allclose(_fit(fortran).face_, ref.face_, rtol=1e-12, atol=1e-9)


def test_memory_mapped_npy(problem, tmp_path):
    theta, X, pos = problem
    path = tmp_path / "stack.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    ref = _fit(X)
    est = _fit(mm)
    assert np.array_equal(est.face_, ref.face_)
    assert np.array_equal(est.predict(mm), pos)


def test_python_lists(problem):
    theta, X, pos = problem
    est = _fit(X[:5].tolist())
    assert est.face_.shape == (6, 7)
