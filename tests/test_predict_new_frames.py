"""Predicting on new frames (issue 20): the posterior predictive of A, in the API and the CLI alike."""

import csv
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from emface import FaceEM
from emface.datasets import make_faces
from emface.engine.mstep import predictive_prior, prior_from_counts


@pytest.fixture(scope="module")
def fitted():
    """A default fit of 300 frames of 64x64 (a 24x24 face), and 300 fresh frames of the same model."""
    X, truth = make_faces(600, (64, 64), (24, 24), noise=1.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM((24, 24), random_state=0).fit(X[:300])
    return est, X, truth


def _exact(pos, truth_pos):
    return float(np.mean((pos == truth_pos).all(axis=1)))


def test_new_frames_are_placed_as_well_as_the_training_frames(fitted):
    est, X, truth = fitted
    # 300 images cannot visit the 41x41 = 1,681 corners: the fitted prior all but forbids the others
    assert np.mean(est.prior_ < 1e-6 * est.prior_.max()) > 0.5
    assert _exact(est.predict(X[300:]), truth.positions[300:]) >= 0.99
    # the training answers do not get worse: the fit's own (fitted A) and predict's (predictive A)
    assert _exact(est.positions_, truth.positions[:300]) >= 0.99
    assert _exact(est.predict(X[:300]), truth.positions[:300]) >= 0.99
    assert np.array_equal(est.posterior_summary().positions, est.positions_)


def test_the_fitted_prior_alone_misplaces_new_frames(fitted):
    """What predict did before: the same θ with the fitted A places most new faces wrong."""
    est, X, truth = fitted
    est_fitted_prior = _with_prior(est, est.prior_)
    assert _exact(est_fitted_prior.predict(X[300:]), truth.positions[300:]) < 0.5


def _with_prior(est, prior):
    """A copy of `est` that judges new images under the given prior (a model file without K does that)."""
    import copy

    other = copy.copy(est)
    other.n_images_fit_ = None
    assert np.array_equal(other.prior_predictive_, prior)
    return other


def test_prior_predictive_is_the_dirichlet_posterior_mean_of_the_counts(fitted):
    est, _, _ = fitted
    K = est.n_images_fit_
    assert K == 300
    want = (est.prior_ * K + 1.0) / (K + est.prior_.size)
    np.testing.assert_allclose(est.prior_predictive_, want, rtol=1e-12)
    assert est.prior_predictive_.min() > 0
    assert np.isclose(est.prior_predictive_.sum(), 1.0)


def test_predictive_prior_by_hand():
    # no smoothing: counts N = K·A = (1, 1, 0, 0) of K = 2 images, (N + 1) / (K + 4)
    A = np.array([[[0.5, 0.5, 0.0, 0.0]]])
    np.testing.assert_allclose(predictive_prior(A, 2)[0], [[[2 / 6, 2 / 6, 1 / 6, 1 / 6]]], rtol=1e-14)
    # smoothing α = 1: the fit's A = (N + 1) / (K + 4) with N = (2, 0, 0, 0), K = 2; predictive (N + 2) / (K + 8)
    N = np.array([[[2.0, 0.0, 0.0, 0.0]]])
    A, pi0 = prior_from_counts(N, 2, 1.0)
    assert pi0 is None
    np.testing.assert_allclose(A, [[[3 / 6, 1 / 6, 1 / 6, 1 / 6]]], rtol=1e-14)
    np.testing.assert_allclose(predictive_prior(A, 2, 1.0)[0], [[[4 / 10, 2 / 10, 2 / 10, 2 / 10]]], rtol=1e-14)
    # two faces on a 1x2 grid: C·P·Q = 4 cells share the pseudo-counts
    A = np.array([[[0.75, 0.0]], [[0.25, 0.0]]])
    np.testing.assert_allclose(predictive_prior(A, 4)[0], [[[4 / 8, 1 / 8]], [[2 / 8, 1 / 8]]], rtol=1e-14)


def test_prior_with_the_no_face_class_by_hand():
    # counts N = (2, 0) and N_empty = 2 of K = 4 images, α = 1: each (count + 1) / (K + 3)
    A, pi0 = prior_from_counts(np.array([[[2.0, 0.0]]]), 4, 1.0, N_empty=2.0)
    np.testing.assert_allclose(A, [[[3 / 7, 1 / 7]]], rtol=1e-14)
    assert pi0 == pytest.approx(3 / 7, rel=1e-14)
    # no smoothing: A = (0.5, 0), π_∅ = 0.5 of K = 4 images; predictive (N + 1) / (K + 3) with N = (2, 0), N_∅ = 2
    A, pi0 = predictive_prior(np.array([[[0.5, 0.0]]]), 4, 0.0, empty_weight=0.5)
    np.testing.assert_allclose(A, [[[3 / 7, 1 / 7]]], rtol=1e-14)
    assert pi0 == pytest.approx(3 / 7, rel=1e-14)


def test_cli_predict_agrees_with_the_api(fitted, tmp_path):
    est, X, truth = fitted
    model = tmp_path / "model.npz"
    est.save(model)
    loaded = FaceEM.load(model)
    assert loaded.n_images_fit_ == 300
    np.testing.assert_array_equal(loaded.prior_predictive_, est.prior_predictive_)
    np.testing.assert_array_equal(loaded.predict(X[300:]), est.predict(X[300:]))
    frames = tmp_path / "new.npy"
    np.save(frames, X[300:])
    out = tmp_path / "positions.csv"
    r = subprocess.run([sys.executable, "-m", "emface.cli", "predict", str(model), str(frames), "--out", str(out),
                        "-q"], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    pos = np.array([[int(row["row"]), int(row["col"])] for row in rows])
    np.testing.assert_array_equal(pos, est.predict(X[300:]))
    assert _exact(pos, truth.positions[300:]) >= 0.99


def test_a_model_file_with_a_bad_image_count_is_refused(fitted, tmp_path):
    est, _, _ = fitted
    est.n_images_fit_, keep = -3, est.n_images_fit_
    try:
        est.save(tmp_path / "bad.npz")
    finally:
        est.n_images_fit_ = keep
    with pytest.raises(ValueError, match="'n_images' is -3; expected a count >= 1"):
        FaceEM.load(tmp_path / "bad.npz")


def test_the_training_images_can_be_judged_under_the_fitted_prior(fitted):
    est, X, _ = fitted
    # as_training: the fit's own prior, so a new pass over the training frames repeats the fit's summary
    again = est.posterior_summary(X[:300], as_training=True)
    np.testing.assert_array_equal(again.positions, est.posterior_summary().positions)
    np.testing.assert_allclose(again.log_likelihood, est.posterior_summary().log_likelihood, rtol=1e-9)
    np.testing.assert_allclose(again.misfit, est.misfit_, rtol=0, atol=1e-6)
    # judged as new images, log p(X_k) moves: the predictive prior is not the fitted one
    assert not np.allclose(est.posterior_summary(X[:300]).log_likelihood, again.log_likelihood, rtol=1e-6)


def test_the_predictive_prior_keeps_the_fits_smoothing(fitted):
    est, _, _ = fitted
    before = est.prior_predictive_.copy()
    est.set_params(prior_smoothing=50.0)
    try:
        np.testing.assert_array_equal(est.prior_predictive_, before)
    finally:
        est.set_params(prior_smoothing=0.0)


def test_a_hard_fits_csv_comes_from_the_fitted_prior(tmp_path):
    X, _ = make_faces(120, (40, 40), (16, 16), noise=1.0, random_state=5)
    np.save(tmp_path / "s.npy", X)
    r = subprocess.run([sys.executable, "-m", "emface.cli", "fit", str(tmp_path / "s.npy"), "--face-shape", "16x16",
                        "--hard", "--out", str(tmp_path / "o"), "--seed", "0", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "o" / "positions.csv") as fh:
        rows = list(csv.DictReader(fh))
    est = FaceEM.load(tmp_path / "o" / "model.npz")
    want = est.posterior_summary(X, as_training=True)
    np.testing.assert_allclose([float(r_["probability"]) for r_ in rows], want.probability, rtol=1e-5)
    np.testing.assert_allclose([float(r_["misfit"]) for r_ in rows], want.misfit, rtol=1e-3, atol=1e-3)
