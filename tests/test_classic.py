"""The course API on tiny cases computed by hand, and against the brute-force reference."""

import math

import numpy as np
import pytest

import reference as ref
from conftest import contrast_problem, random_problem
from emface import classic

LOG2PI = math.log(2 * math.pi)

# One image of 1x3 pixels, X = [0, 1, 1]; a 1x2 face F = [1, 1] on B = [0, 0, 0], s = 1.
# Position 0: mean [1, 1, 0], residual [-1, 0, 1], ||r||^2 = 2 -> log p = -3/2 log 2pi - 1.
# Position 1: mean [0, 1, 1], residual 0                      -> log p = -3/2 log 2pi.
X1 = np.array([0.0, 1.0, 1.0]).reshape(1, 3, 1)
F1 = np.array([[1.0, 1.0]])
B1 = np.zeros((1, 3))


def test_log_probability_by_hand():
    ll = classic.calculate_log_probability(X1, F1, B1, 1.0)
    assert ll.shape == (1, 2, 1)
    assert ll[0, 0, 0] == pytest.approx(-1.5 * LOG2PI - 1.0, rel=1e-12)
    assert ll[0, 1, 0] == pytest.approx(-1.5 * LOG2PI, rel=1e-12)


def test_log_probability_scales_with_s_by_hand():
    # s = 2: -3/2 log(2 pi 4) - ||r||^2 / 8
    ll = classic.calculate_log_probability(X1, F1, B1, 2.0)
    assert ll[0, 0, 0] == pytest.approx(-1.5 * math.log(8 * math.pi) - 2.0 / 8, rel=1e-12)
    assert ll[0, 1, 0] == pytest.approx(-1.5 * math.log(8 * math.pi), rel=1e-12)


def test_e_step_by_hand():
    A = np.array([[0.5, 0.5]])
    q = classic.run_e_step(X1, F1, B1, 1.0, A)
    # q ∝ [e^-1, 1]
    e = math.e
    assert q.shape == (1, 2, 1)
    assert q[0, 0, 0] == pytest.approx(1 / (1 + e), rel=1e-12)
    assert q[0, 1, 0] == pytest.approx(e / (1 + e), rel=1e-12)
    assert np.array_equal(classic.run_e_step(X1, F1, B1, 1.0, A, use_MAP=True), [[0], [1]])
    # a prior that rules position 1 out moves everything to position 0
    q0 = classic.run_e_step(X1, F1, B1, 1.0, np.array([[1.0, 0.0]]))
    assert q0[0, 0, 0] == 1.0 and q0[0, 1, 0] == 0.0


def test_lower_bound_by_hand():
    A = np.array([[0.5, 0.5]])
    e = math.e
    q = np.array([1 / (1 + e), e / (1 + e)]).reshape(1, 2, 1)
    # with the exact posterior: log p(X) = log(0.5 e^-1 + 0.5) - 3/2 log 2pi
    want = math.log(0.5 / e + 0.5) - 1.5 * LOG2PI
    assert classic.calculate_lower_bound(X1, F1, B1, 1.0, A, q) == pytest.approx(want, rel=1e-12)
    # q = [1, 0]: E log p = log 0.5 - 3/2 log 2pi - 1, entropy 0
    q = np.array([1.0, 0.0]).reshape(1, 2, 1)
    want = math.log(0.5) - 1.5 * LOG2PI - 1.0
    assert classic.calculate_lower_bound(X1, F1, B1, 1.0, A, q) == pytest.approx(want, rel=1e-12)
    # MAP: position 1 -> log 0.5 - 3/2 log 2pi
    got = classic.calculate_lower_bound(X1, F1, B1, 1.0, A, np.array([[0], [1]]), use_MAP=True)
    assert got == pytest.approx(math.log(0.5) - 1.5 * LOG2PI, rel=1e-12)


def test_lower_bound_with_zero_prior_and_zero_q_is_finite():
    A = np.array([[1.0, 0.0]])
    q = np.array([1.0, 0.0]).reshape(1, 2, 1)
    got = classic.calculate_lower_bound(X1, F1, B1, 1.0, A, q)
    assert got == pytest.approx(-1.5 * LOG2PI - 1.0, rel=1e-12)


def test_m_step_by_hand():
    # q = [0.25, 0.75] on X = [0, 1, 1]:
    #   F = 0.25 [0, 1] + 0.75 [1, 1] = [0.75, 1]
    #   B[0] = 0 (outside the face with weight 0.75), B[2] = 1 (weight 0.25);
    #   B[1] is always covered: no evidence, so it takes the images' mean, 1
    #   s^2 = (0.25 * 0.75^2 + 0.75 * 0.25^2) / 3 = 0.0625
    q = np.array([0.25, 0.75]).reshape(1, 2, 1)
    F, B, s, A = classic.run_m_step(X1, q, 1, 2)
    assert np.allclose(F, [[0.75, 1.0]], rtol=0, atol=1e-14)
    assert np.allclose(B, [[0.0, 1.0, 1.0]], rtol=0, atol=1e-14)
    assert s == pytest.approx(0.25, rel=1e-12)
    assert np.allclose(A, [[0.25, 0.75]], rtol=0, atol=1e-15)


def test_hard_m_step_by_hand():
    # two images 1x3: [5, 7, 1] with the face at 0, [2, 4, 6] with the face at 1
    #   F = ([5, 7] + [4, 6]) / 2 = [4.5, 6.5]
    #   B[0] = 2 (image 2), B[2] = 1 (image 1), B[1] covered in both -> mean 5.5
    #   residuals: image 1 [0.5, 0.5, 0], image 2 [0, -0.5, -0.5] -> s^2 = 1 / 6
    X = np.array([[5.0, 7.0, 1.0], [2.0, 4.0, 6.0]]).T.reshape(1, 3, 2)
    F, B, s, A = classic.run_m_step(X, np.array([[0, 0], [0, 1]]), 1, 2, use_MAP=True)
    assert np.allclose(F, [[4.5, 6.5]], rtol=0, atol=1e-14)
    assert np.allclose(B, [[2.0, 5.5, 1.0]], rtol=0, atol=1e-14)
    assert s == pytest.approx(math.sqrt(1 / 6), rel=1e-12)
    assert np.allclose(A, [[0.5, 0.5]], rtol=0, atol=1e-15)


def test_classic_functions_match_the_reference(rng):
    theta, Xk, _, _ = random_problem(rng, 6, 7, 8, 3, 4)
    X = np.moveaxis(Xk, 0, -1)
    F, B, s, A = theta.faces[0, 0], theta.background[0], float(theta.noise_std[0]), theta.prior[0]
    ll = classic.calculate_log_probability(X, F, B, s)
    assert np.allclose(np.moveaxis(ll, -1, 0), ref.log_p_given_cd(Xk, F, B, s, A)[:, 0], rtol=1e-10, atol=0)
    q = classic.run_e_step(X, F, B, s, A)
    qr = ref.posterior(Xk, F, B, s, A)[:, 0]
    assert np.abs(np.moveaxis(q, -1, 0) - qr).max() < 1e-10
    lb = classic.calculate_lower_bound(X, F, B, s, A, q)
    assert lb == pytest.approx(ref.lower_bound(Xk, F, B, s, A, qr[:, None]), rel=1e-10)
    F2, B2, s2, A2 = classic.run_m_step(X, q, 3, 4)
    Fr, Br, sr, Ar = ref.m_step(Xk, qr[:, None], 3, 4)
    assert F2.shape == (3, 4) and B2.shape == (7, 8) and A2.shape == (5, 5) and isinstance(s2, float)
    assert np.allclose(F2, Fr[0, ..., 0], rtol=1e-10, atol=1e-12)
    assert np.allclose(A2, Ar[0], rtol=1e-10, atol=1e-14)
    assert s2 == pytest.approx(sr[0], rel=1e-9)


def test_run_em_history_and_stopping(rng):
    theta, Xk, pos = contrast_problem(rng, 60, 20, 24, 8, 9, s=30.0)
    X = np.moveaxis(Xk, 0, -1)
    F, B, s, A, LL = classic.run_EM(X, 8, 9, tolerance=1e-3, max_iter=50)
    assert F.shape == (8, 9) and B.shape == (20, 24) and A.shape == (13, 16)
    assert 1 <= len(LL) <= 50
    assert np.all(np.diff(LL) >= -1e-9 * np.abs(LL).max())
    if len(LL) < 50:
        assert LL[-1] - LL[-2] < 1e-3
    # LL is the lower bound of the returned parameters at their posterior
    q = classic.run_e_step(X, F, B, s, A)
    assert LL[-1] == pytest.approx(classic.calculate_lower_bound(X, F, B, s, A, q), rel=1e-9)


def test_run_em_with_restarts_returns_the_best(rng):
    theta, Xk, _ = contrast_problem(rng, 40, 16, 18, 6, 7, s=40.0)
    X = np.moveaxis(Xk, 0, -1)
    F, B, s, A, L = classic.run_EM_with_restarts(X, 6, 7, n_restarts=3, max_iter=30)
    q = classic.run_e_step(X, F, B, s, A)
    assert L == pytest.approx(classic.calculate_lower_bound(X, F, B, s, A, q), rel=1e-9)


def test_run_em_follows_numpys_global_seed(rng):
    theta, Xk, _ = contrast_problem(rng, 20, 12, 13, 5, 5, s=40.0)
    X = np.moveaxis(Xk, 0, -1)
    np.random.seed(3)
    a = classic.run_EM(X, 5, 5, max_iter=3)
    np.random.seed(3)
    b = classic.run_EM(X, 5, 5, max_iter=3)
    np.random.seed(4)
    c = classic.run_EM(X, 5, 5, max_iter=3)
    assert np.array_equal(a[4], b[4])
    assert not np.array_equal(a[0], c[0])


def test_hard_run_em(rng):
    theta, Xk, pos = contrast_problem(rng, 50, 16, 18, 6, 7, s=20.0)
    X = np.moveaxis(Xk, 0, -1)
    F, B, s, A, LL = classic.run_EM(X, 6, 7, use_MAP=True, max_iter=40)
    assert np.all(np.diff(LL) >= -1e-9 * np.abs(LL).max())
    d = classic.run_e_step(X, F, B, s, A, use_MAP=True)
    assert d.shape == (2, 50) and d.dtype.kind == "i"
    assert LL[-1] == pytest.approx(classic.calculate_lower_bound(X, F, B, s, A, d, use_MAP=True), rel=1e-9)


def test_classic_validates_shapes():
    with pytest.raises(ValueError, match=r"X must be a 3-D array of shape \(H, W, K\)"):
        classic.run_e_step(np.zeros((3, 4)), F1, B1, 1.0, np.ones((1, 2)) / 2)
    with pytest.raises(ValueError, match="B must have shape"):
        classic.calculate_log_probability(X1, F1, np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="s must be > 0"):
        classic.calculate_log_probability(X1, F1, B1, 0.0)
    with pytest.raises(ValueError, match="q must have shape"):
        classic.run_m_step(X1, np.ones((2, 2, 1)), 1, 2)
