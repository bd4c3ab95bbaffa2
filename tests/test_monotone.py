"""EM never decreases its objective: the cheapest strong test there is."""

import warnings

import numpy as np
import pytest

from conftest import contrast_problem, random_problem
from emface import ConvergenceWarning, FaceEM
from emface.datasets import make_faces


def _assert_monotone(history):
    h = np.asarray(history)
    assert len(h) >= 2
    # a decrease beyond rounding is a bug
    slack = 1e-9 * np.abs(h).max()
    assert np.all(np.diff(h) >= -slack), np.diff(h).min()


def _history(est):
    """The kept run's objective after every iteration, the start's first (public: ``runs_``)."""
    return est.runs_[est.best_run_]["objectives"]


def _fit_without_converging(est, X):
    with warnings.catch_warnings():
        # a few pixels may be covered in every image of these small stacks: that warning is not under test
        warnings.filterwarnings("ignore", message=".*covered by a face in every image")
        # tol=0 runs every iteration; it warns unless the last one left the objective unchanged
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    assert not est.converged_
    return est


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 3.0])
@pytest.mark.parametrize("seed", range(3))
def test_objective_never_decreases_over_50_iterations(hard, alpha, seed):
    rng = np.random.default_rng(100 + seed)
    theta, X, _ = contrast_problem(rng, 30, 14, 17, 5, 6, s=60.0)
    est = FaceEM((5, 6), hard=hard, prior_smoothing=alpha, init="random", max_iter=50, tol=0.0,
                 random_state=seed)
    hist = _history(_fit_without_converging(est, X))
    assert len(hist) == 51
    _assert_monotone(hist)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 3.0])
@pytest.mark.parametrize("colour", [False, True])
def test_never_decreases_with_three_faces(hard, alpha, colour):
    """C = 3, soft and hard, with and without smoothing, grey and colour, from random starts."""
    X, _ = make_faces(60, (20, 22), (8, 7), n_faces=3, colour=colour, noise=1.5, random_state=7)
    est = FaceEM((8, 7), n_faces=3, hard=hard, prior_smoothing=alpha, init="random", n_init=1, max_iter=50,
                 tol=0.0, random_state=1)
    hist = _history(_fit_without_converging(est, X))
    assert len(hist) == 51
    _assert_monotone(hist)


@pytest.mark.parametrize("hard", [False, True])
def test_never_decreases_with_one_noise_level_per_channel(hard):
    X, _ = make_faces(40, (18, 20), (7, 6), colour=True, noise=1.0, random_state=8)
    X = X * np.array([1.0, 3.0, 0.3])  # channels of very different gains
    est = FaceEM((7, 6), noise="per_channel", hard=hard, init="random", n_init=1, max_iter=40, tol=0.0,
                 random_state=2)
    hist = _history(_fit_without_converging(est, X))
    _assert_monotone(hist)
    assert est.noise_std_.shape == (3,)


@pytest.mark.parametrize("hard", [False, True])
def test_monotone_on_data_far_from_the_model(hard):
    rng = np.random.default_rng(5)
    X = rng.exponential(size=(20, 9, 12)) ** 3  # heavy-tailed, no face at all
    est = FaceEM((4, 4), hard=hard, init="random", max_iter=50, tol=0.0, random_state=1)
    _assert_monotone(_history(_fit_without_converging(est, X)))


@pytest.mark.parametrize("hard", [False, True])
def test_monotone_with_zeros_in_the_prior(hard):
    rng = np.random.default_rng(8)
    theta, X, _, _ = random_problem(rng, 25, 10, 11, 4, 5)
    est = FaceEM((4, 5), hard=hard, init="random", prior_init=theta.prior[0], max_iter=50, tol=0.0,
                 random_state=2)
    _assert_monotone(_history(_fit_without_converging(est, X)))
    # positions with A = 0 stay at zero without smoothing
    assert (est.prior_[theta.prior[0] == 0] == 0).all()
