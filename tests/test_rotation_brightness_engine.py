"""Rotations with per-image brightness: the engine against the brute force of tests/reference_rotations.py,
to 1e-10 (log p, the E-step, the (a, b) update, the M-step given (a, b)), and the bound never decreasing."""

import numpy as np
import pytest

import reference_rotations as ref
from conftest import close
from emface.engine import rotbright
from emface.engine.chunk import Chunk
from emface.engine.mstep import face_sums
from emface.engine.rotations import RotParams
from emface.engine.rotstep import make_rot_plan, rot_free_energy, rot_objective, rot_params_from

ANGLES = np.array([0.0, 50.0, 120.0, 200.0])


def _problem(seed, *, K=3, H=9, W=10, h=6, C=2, Ch=1, s=None):
    rng = np.random.default_rng(seed)
    R = len(ANGLES)
    P, Q = H - h + 1, W - h + 1
    F = rng.normal(size=(C, Ch, h, h))
    B = rng.normal(size=(Ch, H, W))
    A = rng.random((C, P, Q)) + 0.05
    A[0, 0, 0] = 0.0
    A /= A.sum()
    rho = rng.random(R) + 0.1
    rho /= rho.sum()
    s = rng.uniform(0.8, 1.5, size=Ch) if s is None else np.full(Ch, s)
    theta = RotParams(F, B, s if Ch > 1 else s[:1], A, angles=ANGLES, angle_prior=rho)
    X = rng.normal(size=(K, H, W, Ch)) * 2.0
    a = rng.uniform(0.6, 1.5, size=K)
    b = rng.normal(size=K)
    return theta, X, a, b


def _ref(theta, a, b):
    return (np.moveaxis(theta.faces, 1, -1), np.moveaxis(theta.background, 0, -1), theta.noise_std, theta.prior,
            theta.angle_prior, theta.angles, a, b)


def _pass(theta, X, a, b, hard=False, **kw):
    plan = make_rot_plan(theta, hard=hard, cache_spectra=False)
    return rotbright.chunk_pass(Chunk(X), plan, kw.pop("centres", np.full(len(X), -1)), a, b, **kw)


@pytest.mark.parametrize("Ch", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_log_p_and_e_step_match_brute_force(Ch, seed):
    theta, X, a, b = _problem(seed, Ch=Ch)
    lj = ref.log_joint(X, *_ref(theta, a, b))
    _, _, out = _pass(theta, X, a, b, output="log_joint")
    fin = np.isfinite(lj)
    assert np.array_equal(np.isfinite(out), fin)
    assert close(out[fin], lj[fin])
    stats, _, q = _pass(theta, X, a, b, output="q")
    assert close(q, ref.posterior(X, *_ref(theta, a, b)))
    assert close(stats.image_loglik, ref.log_likelihood(X, *_ref(theta, a, b)))
    flat = lj.reshape(len(X), -1).argmax(axis=1)
    c, r, i, j = np.unravel_index(flat, lj.shape[1:])
    assert np.array_equal(stats.labels, c) and np.array_equal(stats.angle_index, r)
    assert np.array_equal(stats.positions, np.stack([i, j], axis=1))


def _brute_posterior(theta, X, a, b, hard):
    """The brute force's log joint under (a, b) and its posterior: one-hot at the arg-max for hard EM."""
    lj = ref.log_joint(X, *_ref(theta, a, b))
    if not hard:
        return lj, ref.posterior(X, *_ref(theta, a, b))
    q = np.zeros_like(lj)
    q.reshape(len(X), -1)[np.arange(len(X)), lj.reshape(len(X), -1).argmax(axis=1)] = 1.0
    return lj, q


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("Ch", [1, 2])
def test_brightness_update_matches_brute_force(hard, Ch):
    theta, X, a, b = _problem(2, Ch=Ch)
    stats, _ = _pass(theta, X, a, b, hard=hard, full=False)
    lj, q = _brute_posterior(theta, X, a, b, hard)
    a1, b1 = ref.update_brightness(X, np.moveaxis(theta.faces, 1, -1), np.moveaxis(theta.background, 0, -1),
                                   theta.noise_std, theta.angles, q)
    assert close(stats.gains[:, 0], a1) and close(stats.offsets[:, 0], b1)
    # what the update gained: the expected complete-data log-likelihood's rise under q
    before = np.sum(q * np.where(np.isfinite(lj), lj, 0.0))
    after_lj = ref.log_joint(X, *_ref(theta, a1, b1))
    after = np.sum(q * np.where(np.isfinite(after_lj), after_lj, 0.0))
    assert close(stats.ecm_gain, after - before, rtol=1e-8)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("Ch", [1, 2])
def test_m_step_given_brightness_matches_brute_force(hard, Ch):
    # hard EM: more images per face, so that each face's normal equations are well posed
    theta, X, a, b = _problem(4, Ch=Ch, s=1.0, **(dict(K=8, C=1) if hard else {}))
    stats, _ = _pass(theta, X, a, b, hard=hard, full=False)
    new, _ = rot_params_from(stats, theta)
    lj, q = _brute_posterior(theta, X, a, b, hard)
    a1, b1 = stats.gains[:, 0], stats.offsets[:, 0]
    F, B, s, A, rho = ref.m_step(X, q, theta.angles, np.moveaxis(theta.faces, 1, -1),
                             np.moveaxis(theta.background, 0, -1), a1, b1)
    assert close(new.faces, np.moveaxis(F, -1, 1))
    assert close(new.prior, A) and close(new.angle_prior, rho)
    cover = np.zeros(theta.image_shape)
    h = theta.face_shape[0]
    D = ref.disc(h)
    for k in range(len(X)):
        for i in range(q.shape[3]):
            for j in range(q.shape[4]):
                cover[i:i + h, j:j + h] += a1[k] ** 2 * q[k, :, :, i, j].sum() * D
    ok = (np.sum(a1 ** 2) - cover) > 1e-3 * np.sum(a1 ** 2)
    assert close(new.background[:, ok], np.moveaxis(B, -1, 0)[:, ok])
    assert close(new.noise_std, s)


def test_sums_are_those_of_the_new_brightness():
    """S_F, XC, SX and SXX of the pass: the definitions with each image's updated (a, b), by loops."""
    theta, X, a, b = _problem(6, Ch=2)
    stats, _ = _pass(theta, X, a, b, full=False)
    q = ref.posterior(X, *_ref(theta, a, b))
    a1, b1 = stats.gains[:, 0], stats.offsets[:, 0]
    C, R, P, Q = q.shape[1:]
    h = theta.face_shape[0]
    S = np.zeros((C, R, h, h, 2))
    NW = np.zeros((C, R, P, Q))
    for k in range(len(X)):
        y = a1[k] * (X[k] - b1[k])
        for c in range(C):
            for r in range(R):
                for i in range(P):
                    for j in range(Q):
                        S[c, r] += q[k, c, r, i, j] * y[i:i + h, j:j + h]
                        NW[c, r, i, j] += a1[k] ** 2 * q[k, c, r, i, j]
    assert close(face_sums(stats).reshape(C, R, 2, h, h), np.moveaxis(S, -1, 2))
    assert close(stats.NW[:, 0].reshape(C, R, P, Q), NW) and close(stats.NW[:, 1], stats.NW[:, 0])
    assert close(stats.N.reshape(C, R, P, Q), q.sum(axis=0))
    Y = X - b1[:, None, None, None]
    assert close(stats.SX, np.moveaxis(np.einsum("k,khwd->hwd", a1, Y), -1, 0))
    assert close(stats.SXX, np.einsum("khwd,khwd->d", Y, Y))
    assert close(stats.KW, np.full(2, np.sum(a1 ** 2)))


def test_sparse_windows_and_brightness_free_energy():
    """With windows (q restricted) the pass's bound is the brute-force bound of the restricted posterior."""
    theta, X, a, b = _problem(7, Ch=1, K=4)
    centres = np.array([0, 1, -1, 3])
    stats, _ = _pass(theta, X, a, b, full=False, centres=centres, width=1)
    lj = ref.log_joint(X, *_ref(theta, a, b))
    R = len(ANGLES)
    total = 0.0
    for k, cen in enumerate(centres):
        allowed = np.arange(R) if cen < 0 else (cen + np.arange(-1, 2)) % R
        v = lj[k][:, allowed].ravel()
        v = v[np.isfinite(v)]
        total += v.max() + np.log(np.exp(v - v.max()).sum())
    assert close(stats.loglik, total)
    assert close(rot_objective(stats, theta), total)


def test_free_energy_under_the_new_brightness():
    """`rot_free_energy` of the pass's sums is the brute-force ELBO with the updated (a, b) at any θ."""
    theta, X, a, b = _problem(8, Ch=2)
    stats, _ = _pass(theta, X, a, b, full=False)
    q = ref.posterior(X, *_ref(theta, a, b))
    a1, b1 = stats.gains[:, 0], stats.offsets[:, 0]
    other, _ = rot_params_from(stats, theta)
    for th in (theta, other):
        lj = ref.log_joint(X, *_ref(th, a1, b1))
        pos = q > 0
        elbo = float(np.sum(q[pos] * lj[pos]) - np.sum(q[pos] * np.log(q[pos])))
        assert close(rot_free_energy(stats, th), elbo)


@pytest.mark.parametrize("hard", [False, True])
def test_ecm_bound_never_decreases(hard):
    """E-step, (a, b) update, M-step: the objective (log-likelihood or MAP joint) never decreases."""
    theta, X, a, b = _problem(9, Ch=1, K=6, H=12, W=12)
    obj = []
    for it in range(6):
        stats, _ = _pass(theta, X, a, b, hard=hard, full=True)
        obj.append(rot_objective(stats, theta))
        theta, _ = rot_params_from(stats, theta)
        a, b = stats.gains[:, 0], stats.offsets[:, 0]
    d = np.diff(obj)
    assert np.all(d >= -1e-9 * np.abs(obj).max()), d


def test_new_images_fit_their_brightness():
    """fit_steps alternations from a = 1, b = 0 find an image's (a, b) as the fixed point of the update."""
    theta, X, a, b = _problem(10, Ch=1, K=3, s=0.05)
    rng = np.random.default_rng(0)
    from emface.rotation_model import draw_means

    Xm, *_ = draw_means(theta, 3, rng)
    Xs = 1.3 * Xm + 0.7 + 0.01 * rng.normal(size=Xm.shape)
    one, zero = np.ones(3), np.zeros(3)
    stats, _ = _pass(theta, Xs, one, zero, fit_steps=4)
    assert np.abs(stats.gains[:, 0] - 1.3).max() < 0.05 and np.abs(stats.offsets[:, 0] - 0.7).max() < 0.05
