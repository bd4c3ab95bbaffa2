"""FaceEM's brightness option: "auto" chooses, the outputs, new images, files, and the refusals."""

import warnings

import numpy as np
import pytest

from emface import FaceEM
from emface.datasets import make_faces
from emface.errors import ModelFileError


def _stack(K=200, gain=0.3, offset=1.0, seed=0, shape=(40, 40), face=(16, 16), colour=False):
    """A photo-based stack, X_k = a_k·μ_k + b_k + noise, noise = the face's contrast."""
    X, truth = make_faces(K, shape, face, noise=0.0, colour=colour, random_state=seed)
    s = float(np.mean(truth.faces.std()))
    rng = np.random.default_rng(seed + 1)
    extra = (1,) * (X.ndim - 1)
    a = rng.uniform(1 - gain, 1 + gain, K)
    b = rng.uniform(-offset, offset, K) * s
    X = a.reshape((K,) + extra) * X + b.reshape((K,) + extra) + rng.normal(0.0, s, X.shape)
    return X, truth, a, b


def _fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FaceEM(kw.pop("face", (16, 16)), random_state=0, **kw).fit(X)


def _exact(est, truth):
    return float(np.mean(np.all(est.positions_ == truth.positions, axis=1)))


def test_auto_fits_brightness_that_changes():
    X, truth, a, b = _stack()
    est = _fit(X)
    assert est.brightness_ == "per_image" and est.brightness_test_["significant"]
    assert _exact(est, truth) >= 0.99
    assert np.corrcoef(est.face_.ravel(), truth.faces[0].ravel())[0, 1] >= 0.99
    # the fitted gains follow the true ones up to the model's scale (mean gain 1)
    assert np.corrcoef(est.gains_, a)[0, 1] > 0.98
    assert np.corrcoef(est.offsets_, b)[0, 1] > 0.9
    summary = est.posterior_summary()
    assert np.array_equal(summary.gain, est.gains_) and np.array_equal(summary.offset, est.offsets_)


def test_auto_keeps_the_notes_model_on_conforming_frames():
    X, truth, _, _ = _stack(gain=0.0, offset=0.0)
    auto = _fit(X)
    fixed = _fit(X, brightness="fixed")
    assert auto.brightness_ == "fixed" and not auto.brightness_test_["significant"]
    assert fixed.brightness_test_ is None and fixed.gains_ is None and auto.gains_ is None
    assert np.array_equal(auto.positions_, fixed.positions_)
    assert np.array_equal(auto.faces_, fixed.faces_) and auto.lower_bound_ == fixed.lower_bound_
    assert auto.posterior_summary().gain is None


def test_fixed_misses_what_per_image_finds():
    X, truth, _, _ = _stack(seed=3)
    assert _exact(_fit(X, brightness="per_image"), truth) > _exact(_fit(X, brightness="fixed"), truth)


def test_new_images_brightness_is_fitted_by_predict():
    X, truth, _, _ = _stack(K=260)
    est = _fit(X[:200], brightness="per_image")
    pos = est.predict(X[200:])
    assert np.mean(np.all(pos == truth.positions[200:], axis=1)) >= 0.95
    summ = est.posterior_summary(X[200:])
    assert summ.gain.shape == (60,) and np.all(summ.gain > 0)
    proba = est.predict_proba(X[200:])
    assert proba.shape[0] == 60 and np.allclose(proba.reshape(60, -1).sum(axis=1), 1.0)
    assert np.array_equal(np.argmax(proba.reshape(60, -1), axis=1) // proba.shape[2], pos[:, 0])
    assert np.all(np.isfinite(est.score_samples(X[200:])))
    # the training images judged as such keep their fitted gains in the E-step
    tr = est.posterior_summary(X[:200], as_training=True)
    assert np.array_equal(tr.positions, est.positions_)


def test_units_save_and_load(tmp_path):
    X, truth, _, _ = _stack(K=120)
    est = _fit(X, brightness="per_image", max_iter=20)
    scaled = _fit(3.0 * X + 50.0, brightness="per_image", max_iter=20)
    # gains are unitless; offsets follow the data's units: 3(aμ + b) + 50 = a(3μ + 50) + 3b + 50(1 - a)
    assert np.allclose(scaled.gains_, est.gains_, rtol=1e-6)
    want = 3.0 * est.offsets_ + 50.0 * (1.0 - est.gains_)
    assert np.allclose(scaled.offsets_, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    path = tmp_path / "m.npz"
    est.save(path)
    back = FaceEM.load(path)
    assert np.array_equal(back.gains_, est.gains_) and np.array_equal(back.offsets_, est.offsets_)
    assert back.brightness_ == "per_image"
    assert np.array_equal(back.predict(X[:20]), est.predict(X[:20]))


def test_colour_per_channel():
    X, truth, _, _ = _stack(K=120, colour=True)
    est = _fit(X, brightness="per_channel", max_iter=30)
    assert est.gains_.shape == (120, 3) and est.offsets_.shape == (120, 3)
    assert est.posterior_summary().gain.shape == (120, 3)
    assert _exact(est, truth) >= 0.95


def test_the_option_table_offers_the_engines_choices():
    from emface.engine.brightness import BRIGHTNESS
    from emface.options import OPTIONS

    (opt,) = [o for o in OPTIONS if o.name == "brightness"]
    assert opt.choices == BRIGHTNESS and opt.default == "auto" and opt.flag == "--brightness"


def test_bad_values_are_refused(tmp_path):
    X, _, _, _ = _stack(K=30)
    with pytest.raises(ValueError, match="brightness"):
        FaceEM((16, 16), brightness="sometimes").fit(X)
    est = _fit(X, brightness="per_image", max_iter=2)
    path = tmp_path / "m.npz"
    est.save(path)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["gains"] = -arrays["gains"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ModelFileError, match="gains"):
        FaceEM.load(bad)


def test_dask_refuses_per_image_in_one_line():
    da = pytest.importorskip("dask.array")
    X, _, _, _ = _stack(K=30)
    with pytest.raises(ValueError, match="Dask") as err:
        FaceEM((16, 16), brightness="per_image").fit(da.from_array(X, chunks=(10, -1, -1)))
    assert "\n" not in str(err.value)


def test_out_of_core_and_checkpoint_resume(tmp_path):
    """A memory-mapped stack read in small chunks gives the in-memory fit; a checkpoint resumes with its gains."""
    X, truth, _, _ = _stack(K=80)
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    a = _fit(X, brightness="per_image", max_iter=8, tol=0, n_init=1)
    b = _fit(mm, brightness="per_image", max_iter=8, tol=0, n_init=1, max_memory="2MB")
    assert np.array_equal(a.positions_, b.positions_)
    assert np.allclose(a.gains_, b.gains_, rtol=1e-9) and np.allclose(a.faces_, b.faces_, rtol=1e-9, atol=1e-9)
    ck = tmp_path / "ck.npz"
    _fit(X, brightness="per_image", max_iter=4, tol=0, n_init=1, checkpoint=ck, checkpoint_every=1)
    est = FaceEM.resume(ck)
    assert est.gains_.shape == (80,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.set_params(max_iter=8).fit(X)
    assert est.brightness_ == "per_image" and est.gains_.shape == (80,)
    assert np.all(np.diff(est.lower_bounds_) >= -1e-9 * np.abs(np.asarray(est.lower_bounds_[:-1])))


def test_backends_agree():
    """numba, numpy and torch (on the CPU) give the same per-image fit: the brightness pass is one code."""
    from conftest import optional

    optional("torch")
    X, _, _, _ = _stack(K=60)
    fits = [_fit(X, brightness="per_image", max_iter=6, tol=0, n_init=1, backend=b) for b in ("numba", "numpy",
                                                                                          "torch")]
    for other in fits[1:]:
        assert np.array_equal(other.positions_, fits[0].positions_)
        assert np.allclose(other.gains_, fits[0].gains_, rtol=1e-8)
        assert np.allclose(other.faces_, fits[0].faces_, rtol=1e-8, atol=1e-8 * np.abs(fits[0].faces_).max())


def test_shift_escape_works_with_brightness():
    """From a face shifted by a row, EM with per-image brightness stays shifted; the shift escape,
    whose candidate then takes one EM step with the images' (a, b), moves it back."""
    X, truth, _, _ = _stack(K=150, seed=5)
    F = truth.faces[0]
    shifted = np.vstack([F[2:], F[-2:]])  # the face two rows up: its images sit two rows too low
    kw = dict(brightness="per_image", face_init=shifted, background_init=truth.background, n_init=1)
    stuck = _fit(X, shift_escape=False, **kw)
    freed = _fit(X, **kw)
    assert _exact(stuck, truth) < 0.5
    assert _exact(freed, truth) >= 0.99 and any(m[0] == "shift" for m in freed.runs_[0]["moves"])
