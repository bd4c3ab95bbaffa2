"""FaceEM's scikit-learn-style API."""

import warnings

import numpy as np
import pytest

import reference as ref
from conftest import contrast_problem
from emface import ConvergenceWarning, FaceEM


@pytest.fixture
def data(rng):
    theta, X, pos = contrast_problem(rng, 80, 20, 24, 7, 8, s=25.0)
    return theta, X, pos


def test_fit_attributes_and_predict(data):
    theta, X, pos = data
    est = FaceEM((7, 8), init="auto", shift_escape=True, random_state=0).fit(X)
    assert est.face_.shape == (7, 8)
    assert est.background_.shape == (20, 24)
    assert est.prior_.shape == (14, 17)
    assert est.prior_.sum() == pytest.approx(1.0)
    assert est.noise_std_ > 0
    assert est.converged_ is True
    assert est.n_iter_ == len(est.lower_bounds_)
    assert est.lower_bound_ == est.lower_bounds_[-1]
    assert np.array_equal(est.predict(X), pos)
    assert est.predict(X).dtype.kind == "i"
    assert abs(est.noise_std_ - 25.0) / 25.0 < 0.05


def test_predict_proba_and_scores_match_the_reference(data):
    theta, X, pos = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = FaceEM((7, 8), random_state=0, max_iter=5).fit(X[:10])
    Xs = X[:6]
    q = est.predict_proba(Xs)
    # new images are judged under the posterior predictive of A (docs/MODEL.md, "Predicting on new frames")
    qr = ref.posterior(Xs, est.face_, est.background_, est.noise_std_, est.prior_predictive_)[:, 0]
    assert q.shape == (6, 14, 17)
    assert np.abs(q - qr).max() < 1e-10
    ss = est.score_samples(Xs)
    want = [ref.log_likelihood(Xs[k:k + 1], est.face_, est.background_, est.noise_std_, est.prior_predictive_)
            for k in range(6)]
    assert np.allclose(ss, want, rtol=1e-10, atol=0)
    assert est.score(Xs) == pytest.approx(np.mean(want), rel=1e-10)


@pytest.mark.parametrize("n_channels", [1, 3])
def test_predict_face_and_proba_of_several_faces_match_the_reference(rng, n_channels):
    """predict_face is the face of highest posterior mass with positions summed out, from loops."""
    from conftest import random_problem

    theta, X, _, _ = random_problem(rng, 12, 9, 10, 4, 3, n_faces=3, n_channels=n_channels, s=1.5)
    F, B, s, A = (np.moveaxis(theta.faces, 1, -1), np.moveaxis(theta.background, 0, -1), theta.noise_std,
                  theta.prior)
    if n_channels == 1:
        F, B = F[..., 0], B[..., 0]
    est = FaceEM((4, 3), n_faces=3, face_init=F, background_init=B, noise_std_init=float(s[0]), prior_init=A,
                 max_iter=0).fit(X)
    # predict judges X as new images: under the posterior predictive of A (K = len(X) images "fitted")
    A = est.prior_predictive_
    qr = ref.posterior(X, F, B, s, A)
    mass = qr.sum(axis=(2, 3))
    assert np.array_equal(est.predict_face(X), np.argmax(mass, axis=1))
    assert np.abs(est.predict_proba(X) - qr).max() < 1e-10
    # predict gives the position of the most probable (face, position) pair
    labels, positions = ref.hard_assignments(X, F, B, s, A)
    assert (est.predict(X) == positions).all()


def test_lower_bound_is_the_mean_log_likelihood(data):
    theta, X, pos = data
    est = FaceEM((7, 8), random_state=1).fit(X)
    # the fit's objective is under the fitted A; score(X) judges X as new images (the predictive A)
    want = ref.log_likelihood(X, est.face_, est.background_, est.noise_std_, est.prior_) / len(X)
    assert est.lower_bound_ == pytest.approx(want, rel=1e-10)
    assert est.score(X) == pytest.approx(
        ref.log_likelihood(X, est.face_, est.background_, est.noise_std_, est.prior_predictive_) / len(X), rel=1e-10)


def test_hard_lower_bound_with_smoothing_is_the_map_joint_plus_the_dirichlet_term(data):
    theta, X, pos = data
    alpha = 5.0
    est = FaceEM((7, 8), hard=True, prior_smoothing=alpha, random_state=1).fit(X)
    lj = ref.log_joint(X[:5], est.face_, est.background_, est.noise_std_, est.prior_)
    # per-image MAP joint, plus the smoothing prior's alpha * sum log A / K
    full = FaceEM((7, 8), hard=True, prior_smoothing=alpha, face_init=est.face_, background_init=est.background_,
                  noise_std_init=est.noise_std_, prior_init=est.prior_, max_iter=0).fit(X[:5])
    want = lj.reshape(5, -1).max(axis=1).mean() + alpha * np.log(est.prior_).sum() / 5
    assert np.log(est.prior_).sum() < 0  # the term is there to see
    assert full.lower_bound_ == pytest.approx(want, rel=1e-10)


def test_fit_predict_and_sample(data):
    theta, X, pos = data
    est = FaceEM((7, 8), init="auto", shift_escape=True, random_state=0)
    assert np.array_equal(est.fit_predict(X), pos)
    Xs, ps = est.sample(30, random_state=3)
    assert Xs.shape == (30, 20, 24) and ps.shape == (30, 2)
    # the sampled images are explained by the model at their positions
    assert np.array_equal(est.predict(Xs), ps)


def test_warm_start_history_is_that_of_one_longer_run(data):
    theta, X, pos = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = FaceEM((7, 8), max_iter=6, tol=0.0, random_state=0, n_init=1, shift_escape=False).fit(X)
        two = FaceEM((7, 8), max_iter=2, tol=0.0, random_state=0, n_init=1, shift_escape=False).fit(X)
        two.set_params(warm_start=True, max_iter=6).fit(X)
    assert two.lower_bounds_ == pytest.approx(one.lower_bounds_, rel=1e-12)
    assert np.allclose(two.face_, one.face_, rtol=1e-12, atol=1e-9)


def test_convergence_warning(data):
    theta, X, pos = data
    with pytest.warns(ConvergenceWarning):
        est = FaceEM((7, 8), max_iter=1, tol=0.0, random_state=0).fit(X)
    assert est.converged_ is False
    assert est.n_iter_ == 1


def test_no_warning_when_converged(data):
    theta, X, pos = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FaceEM((7, 8), random_state=0).fit(X)


def test_warm_start_continues_history(data):
    theta, X, pos = data
    est = FaceEM((7, 8), max_iter=2, tol=0.0, random_state=0)
    # tol=0 runs every iteration; whether it warns depends on the last change being exactly 0 (test_model_trust)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
        first = list(est.runs_[est.best_run_]["objectives"])
        est.set_params(warm_start=True, max_iter=6)
        est.fit(X)
    again = est.runs_[est.best_run_]["objectives"]
    assert again[:3] == pytest.approx(first, rel=1e-12)
    assert len(again) == 7


def test_random_state_reproducible(data):
    theta, X, pos = data
    a = FaceEM((7, 8), n_init=2, random_state=5).fit(X)
    b = FaceEM((7, 8), n_init=2, random_state=5).fit(X)
    assert np.array_equal(a.face_, b.face_)
    assert a.lower_bounds_ == b.lower_bounds_


def test_restarts_keep_the_best_objective(data):
    theta, X, pos = data
    est = FaceEM((7, 8), n_init=4, random_state=2, max_iter=20).fit(X)
    finals = [r["objectives"][-1] for r in est.runs_]
    assert est.lower_bound_ == pytest.approx(max(finals))


def test_get_set_params_and_repr():
    est = FaceEM((3, 4), hard=True)
    p = est.get_params()
    assert p["face_shape"] == (3, 4) and p["hard"] is True
    est.set_params(n_init=3)
    assert est.n_init == 3
    assert "hard=True" in repr(est) and "n_init=3" in repr(est)
    with pytest.raises(ValueError, match="invalid parameter 'nope'"):
        est.set_params(nope=1)


def test_save_and_load(tmp_path, data):
    theta, X, pos = data
    est = FaceEM((7, 8), random_state=0).fit(X)
    path = tmp_path / "m.npz"
    est.save(path)
    back = FaceEM.load(path)
    assert np.array_equal(back.face_, est.face_)
    assert back.noise_std_ == est.noise_std_
    assert np.array_equal(back.predict(X), est.predict(X))
    assert np.allclose(back.score_samples(X[:5]), est.score_samples(X[:5]), rtol=1e-10)


def test_unfitted_predict_raises():
    with pytest.raises(AttributeError, match="not fitted"):
        FaceEM((2, 2)).predict(np.zeros((1, 4, 4)))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_other_backends_fit_as_the_fused_kernels_do(data, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    theta, X, pos = data
    a = FaceEM((7, 8), random_state=0, backend=backend).fit(X)
    b = FaceEM((7, 8), random_state=0, backend="numba").fit(X)
    assert np.allclose(a.face_, b.face_, rtol=1e-9, atol=1e-9)
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=1e-10)


def test_a_converged_fit_is_a_fixed_point_of_the_brute_force_em_step(data):
    """Independent of every backend: one E- and M-step of the reference from the fit returns the fit."""
    theta, X, pos = data
    est = FaceEM((7, 8), random_state=0, tol=1e-10, max_iter=300).fit(X[:30])
    q = ref.posterior(X[:30], est.face_, est.background_, est.noise_std_, est.prior_)
    F, B, s, A = ref.m_step(X[:30], q, 7, 8)
    assert np.allclose(F[0, ..., 0], est.face_, rtol=0, atol=1e-6 * np.abs(est.face_).max())
    assert s[0] == pytest.approx(est.noise_std_, rel=1e-6)
    assert np.allclose(A[0], est.prior_, rtol=0, atol=1e-6)
