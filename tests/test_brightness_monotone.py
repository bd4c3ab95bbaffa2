"""With brightness on, the bound never decreases, and the fit's objective is the brute force's.

Each fit's history (`lower_bounds_`: the log-likelihood, or the MAP joint for
hard EM, at θ and the images' (a, b)) must rise at every iteration: each pass
is an E-step, an ECM update of every image's (a, b) under the θ that made q,
and an M-step with the sums weighted by the new (a, b).
"""

import warnings

import numpy as np
import pytest
import reference as brute
from conftest import random_problem, seed_of

from emface import FaceEM

CASES = [  # (channels, faces, hard, brightness, empty_frames)
    (1, 1, False, "per_image", False),
    (1, 1, True, "per_image", False),
    (1, 2, False, "per_image", False),
    (1, 2, True, "per_image", False),
    (3, 1, False, "per_image", False),
    (3, 1, False, "per_channel", False),
    (3, 2, True, "per_channel", False),
    (1, 1, False, "per_image", True),
]


def _changing_stack(Ch, C, K=40, seed=0):
    rng = np.random.default_rng(seed_of("monotone-brightness", Ch, C, seed))
    theta, X, _, pos = random_problem(rng, K, 12, 13, 4, 5, n_faces=C, n_channels=Ch, zeros_in_prior=False,
                                      s=0.7)
    a = rng.uniform(0.7, 1.3, (K,) + (1,) * (X.ndim - 1))
    b = rng.uniform(-0.7, 0.7, (K,) + (1,) * (X.ndim - 1))
    return a * X + b, pos


@pytest.mark.parametrize("Ch,C,hard,mode,empty", CASES)
def test_bound_never_decreases(Ch, C, hard, mode, empty):
    X, _ = _changing_stack(Ch, C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM((4, 5), n_faces=C, hard=hard, brightness=mode, empty_frames=empty, max_iter=25, tol=0,
                     random_state=0, n_init=1).fit(X)
    hist = np.asarray(est.lower_bounds_)
    assert len(hist) >= 5
    assert np.all(np.diff(hist) >= -1e-9 * np.abs(hist[:-1])), np.diff(hist).min()
    assert est.brightness_ == mode
    G = Ch if mode == "per_channel" else 1
    assert est.gains_.shape == ((len(X),) if G == 1 else (len(X), G))
    assert np.allclose(np.mean(est.gains_, axis=0), 1.0) and np.all(est.gains_ > 0)


@pytest.mark.parametrize("mode", ["per_image", "per_channel"])
def test_objective_is_the_brute_force_log_likelihood(mode):
    """lower_bound_ is log p(X | θ, a, b) per image at the fitted θ and the fitted gains and offsets (data units)."""
    X, _ = _changing_stack(2, 1, K=12)
    X = 40.0 * X + 100.0  # data units other than the working ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM((4, 5), brightness=mode, max_iter=5, tol=0, random_state=0, n_init=1, shift_escape=False).fit(X)
    g = est.gains_.reshape(len(X), -1)
    o = est.offsets_.reshape(len(X), -1)
    ref = brute.log_likelihood(X, est.faces_, est.background_, est.noise_std_, est.prior_, g, o)
    assert est.lower_bound_ == pytest.approx(ref / len(X), rel=1e-10)
