"""Rotations: the engine against the brute force of tests/reference_rotations.py, to 1e-10."""

import numpy as np
import pytest
import scipy.ndimage as ndi

import reference_rotations as ref
from conftest import close
from emface.engine.chunk import Chunk
from emface.engine.mstep import face_sums
from emface.engine.rotations import Rotations, RotParams, angle_grid, disc_mask, rotation_operator
from emface.engine.rotstep import (chunk_pass, make_rot_plan, rot_free_energy, rot_objective,
                                   rot_params_from)

ANGLES = np.array([0.0, 50.0, 120.0, 200.0])


def _problem(seed, *, K=3, H=9, W=10, h=6, C=2, Ch=1, s=None, zeros=True, angles=ANGLES):
    rng = np.random.default_rng(seed)
    R = len(angles)
    P, Q = H - h + 1, W - h + 1
    F = rng.normal(size=(C, Ch, h, h))
    B = rng.normal(size=(Ch, H, W))
    A = rng.random((C, P, Q)) + 0.05
    if zeros:
        A[0, 0, 0] = 0.0
    A /= A.sum()
    rho = rng.random(R) + 0.1
    rho /= rho.sum()
    s = rng.uniform(0.8, 1.5, size=Ch) if s is None else np.full(Ch, s)
    theta = RotParams(F, B, s if Ch > 1 else s[:1], A, angles=angles, angle_prior=rho)
    X = rng.normal(size=(K, H, W, Ch)) * 2.0
    return theta, X


def _ref(theta):
    return (np.moveaxis(theta.faces, 1, -1), np.moveaxis(theta.background, 0, -1), theta.noise_std, theta.prior,
            theta.angle_prior, theta.angles)


def _pass(theta, X, **kw):
    plan = make_rot_plan(theta, hard=kw.pop("hard", False), cache_spectra=False)
    return chunk_pass(Chunk(X), plan, kw.pop("centres", np.full(len(X), -1)), **kw)


# ----------------------------------------------------------------------------- the operator

@pytest.mark.parametrize("angle", [0.0, 17.0, 90.0, 133.3, 270.0, -45.0])
def test_operator_is_the_reference_interpolation(angle):
    for h in (5, 6, 9):
        assert np.abs(rotation_operator(h, angle).toarray() - ref.rotation_weights(h, angle)).max() < 1e-14


def test_operator_turns_as_ndimage_rotate():
    h = 32
    i, j = np.mgrid[:h, :h]
    img = np.exp(-((i - 10) ** 2 + (j - 20) ** 2) / 30.0) + 0.5 * np.exp(-((i - 22) ** 2 + (j - 12) ** 2) / 15.0)
    D = disc_mask(h)
    for angle in (30.0, 75.0, -45.0):
        mine = (rotation_operator(h, angle) @ img.ravel()).reshape(h, h)
        plus = ndi.rotate(img, angle, reshape=False, order=3)
        minus = ndi.rotate(img, -angle, reshape=False, order=3)
        assert np.corrcoef(mine[D], plus[D])[0, 1] > 0.99
        assert np.corrcoef(mine[D], minus[D])[0, 1] < 0.5


def test_zero_angle_is_the_disc_mask():
    h = 7
    F = np.random.default_rng(0).normal(size=(h, h))
    out = (rotation_operator(h, 0.0) @ F.ravel()).reshape(h, h)
    assert np.array_equal(out, np.where(disc_mask(h), F, 0.0))


def test_adjoint_is_the_transpose():
    rng = np.random.default_rng(1)
    rot = Rotations((12, 12), (7, 7), ANGLES)
    F = rng.normal(size=(2, 3, 7, 7))
    S = rng.normal(size=(2, len(ANGLES), 3, 7, 7))
    lhs = np.sum(rot.templates(F) * S)
    rhs = np.sum(F * rot.adjoint(S))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_angle_grid_and_errors():
    assert np.allclose(angle_grid(4), [0, 90, 180, 270])
    assert np.allclose(angle_grid([10, 20.5]), [10, 20.5])
    for bad in (0, -3, [], [10, 370], [1.0, np.nan], "x"):
        with pytest.raises(ValueError, match="rotations"):
            angle_grid(bad)
    with pytest.raises(ValueError, match="square"):
        Rotations((20, 20), (6, 7), ANGLES)


def test_disc_sums_and_coverage_by_loops():
    rng = np.random.default_rng(2)
    rot = Rotations((11, 9), (5, 5), ANGLES)
    D = disc_mask(5)
    z = rng.normal(size=(11, 9))
    q = rng.random((7, 5))
    sums = np.array([[np.sum(z[i:i + 5, j:j + 5] * D) for j in range(5)] for i in range(7)])
    cov = np.zeros((11, 9))
    for i in range(7):
        for j in range(5):
            cov[i:i + 5, j:j + 5] += q[i, j] * D
    assert close(rot.window_sums(z), sums)
    assert close(rot.coverage(q), cov)


# ----------------------------------------------------------------------------- E-step, M-step, bound

@pytest.mark.parametrize("Ch", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_e_step_matches_brute_force(Ch, seed):
    theta, X = _problem(seed, Ch=Ch)
    lj = ref.log_joint(X, *_ref(theta))
    _, _, out = _pass(theta, X, output="log_joint")
    fin = np.isfinite(lj)
    assert np.array_equal(np.isfinite(out), fin)
    assert close(out[fin], lj[fin])
    stats, _, q = _pass(theta, X, output="q")
    assert close(q, ref.posterior(X, *_ref(theta)))
    assert close(stats.image_loglik, ref.log_likelihood(X, *_ref(theta)))
    flat = lj.reshape(len(X), -1).argmax(axis=1)
    c, r, i, j = np.unravel_index(flat, lj.shape[1:])
    assert np.array_equal(stats.labels, c) and np.array_equal(stats.angle_index, r)
    assert np.array_equal(stats.positions, np.stack([i, j], axis=1))


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("Ch", [1, 2])
def test_sums_match_brute_force(hard, Ch):
    theta, X = _problem(3, Ch=Ch)
    C, R = theta.n_faces, len(theta.angles)
    P, Q = theta.grid_shape
    h = theta.face_shape[0]
    stats, _ = _pass(theta, X, hard=hard, full=False)
    if hard:
        lj = ref.log_joint(X, *_ref(theta))
        q = np.zeros_like(lj)
        flat = lj.reshape(len(X), -1).argmax(axis=1)
        q.reshape(len(X), -1)[np.arange(len(X)), flat] = 1.0
    else:
        q = ref.posterior(X, *_ref(theta))
    N, S, XC, _ = ref.sums(X, q, h)
    assert close(stats.N.reshape(C, R, P, Q), N)
    assert close(face_sums(stats).reshape(C, R, Ch, h, h), np.moveaxis(S, -1, 2))
    assert close(stats.XC, np.moveaxis(XC, -1, 0))


@pytest.mark.parametrize("alpha", [0.0, 2.0])
@pytest.mark.parametrize("Ch", [1, 2])
def test_m_step_matches_brute_force(alpha, Ch):
    theta, X = _problem(4, Ch=Ch, s=1.0)
    stats, _ = _pass(theta, X, full=False)
    new, _ = rot_params_from(stats, theta, prior_smoothing=alpha)
    q = ref.posterior(X, *_ref(theta))
    F, B, s, A, rho = ref.m_step(X, q, theta.angles, np.moveaxis(theta.faces, 1, -1),
                                 np.moveaxis(theta.background, 0, -1), alpha=alpha)
    assert close(new.faces, np.moveaxis(F, -1, 1))
    assert close(new.prior, A) and close(new.angle_prior, rho)
    # B divides by the background's evidence K - cover: compare where it is not a rounding error's size
    _, _, _, cover = ref.sums(X, q, theta.face_shape[0])
    ok = (len(X) - cover) > 1e-3 * len(X)
    assert close(new.background[:, ok], np.moveaxis(B, -1, 0)[:, ok])
    assert close(new.noise_std, s)


@pytest.mark.parametrize("seed", [0, 5])
def test_bound_matches_brute_force(seed):
    theta, X = _problem(seed, Ch=2)
    stats, _ = _pass(theta, X, full=False)
    q = ref.posterior(X, *_ref(theta))
    lb = ref.lower_bound(X, *_ref(theta), q)
    assert close(rot_free_energy(stats, theta), lb)
    assert close(rot_objective(stats, theta), ref.log_likelihood(X, *_ref(theta)).sum())
    # the free energy of these posteriors under another θ (what incremental EM tracks)
    other, _ = rot_params_from(stats, theta)
    assert close(rot_free_energy(stats, other), ref.lower_bound(X, *_ref(other), q))


def test_sparse_window_is_the_restricted_posterior():
    """An image searching its window only: q is the posterior restricted to those angles (0 elsewhere)."""
    angles = angle_grid(8)
    theta, X = _problem(6, angles=angles, C=1)
    centres = np.array([2, 7, 0])
    stats, cen = _pass(theta, X, full=False, centres=centres)
    assert np.array_equal(cen, centres)
    lj = ref.log_joint(X, *_ref(theta))
    for k, c in enumerate(centres):
        keep = np.zeros(8, bool)
        keep[[(c + d) % 8 for d in range(-2, 3)]] = True
        l = np.where(keep[None, :, None, None], lj[k], -np.inf)
        m = l.max()
        assert close(stats.image_loglik[k], m + np.log(np.exp(l - m).sum()))
    st1, _ = _pass(theta, X[:1], full=False, centres=centres[:1])
    l = np.where(np.isin(np.arange(8), [0, 1, 2, 3, 4])[None, :, None, None], lj[0], -np.inf)
    q = np.exp(l - l.max())
    q /= q.sum()
    N, S, XC, _ = ref.sums(X[:1], q[None], theta.face_shape[0])
    assert close(st1.N.reshape(N.shape), N)
    assert close(face_sums(st1).reshape(1, 8, 1, 6, 6), np.moveaxis(S, -1, 2))


def test_full_sweep_chooses_windows_that_lose_nothing():
    """A sweep gives a window only to an image whose posterior leaves (almost) nothing outside it."""
    angles = angle_grid(12)
    rng = np.random.default_rng(7)
    h = 8
    F = rng.normal(size=(1, 1, h, h)) * 3
    rot = Rotations((14, 14), (h, h), angles)
    T = rot.templates(F)
    B = rng.normal(size=(1, 14, 14))
    X = np.repeat(B[None], 4, axis=0).copy()
    D = rot.mask
    for k, (r, i, j) in enumerate([(3, 1, 2), (7, 4, 0), (0, 6, 6), (11, 0, 0)]):
        X[k, :, i:i + h, j:j + h][:, D] = T[0, r][:, D]
    X = np.moveaxis(X + rng.normal(size=X.shape) * 0.05, 1, -1)
    theta = RotParams(F, B, 0.05, np.full((1, 7, 7), 1 / 49), angles=angles)
    stats, cen = _pass(theta, X, full=True)
    assert np.array_equal(cen % 12, [3, 7, 0, 11])
    # noise 0.05: each posterior sits on one angle, so each window is that angle alone (half-width 0)
    assert np.array_equal(cen // 12, [2, 2, 2, 2])
    assert np.array_equal(stats.angle_index, [3, 7, 0, 11])
    # a flat posterior (huge noise) keeps all angles
    flat = RotParams(F * 1e-6, B, 100.0, np.full((1, 7, 7), 1 / 49), angles=angles)
    _, cen = _pass(flat, X, full=True)
    assert np.all(cen == -1)


def test_one_angle_is_the_disc_model():
    """R = 1 (angle 0): the templates are D∘F, and the M-step's face on the disc is S / N, in closed form."""
    theta, X = _problem(8, angles=np.array([0.0]), C=1, s=1.0)
    stats, _ = _pass(theta, X, full=False)
    D = disc_mask(theta.face_shape[0])
    rot = Rotations(theta.image_shape, theta.face_shape, [0.0])
    assert np.array_equal(rot.templates(theta.faces)[:, 0], theta.faces * D)
    new, _ = rot_params_from(stats, theta)
    direct = face_sums(stats)[0] / stats.N.sum()
    assert close(new.faces[0][:, D], direct[:, D])
    # outside the disc the face has no evidence: it keeps its value
    assert np.array_equal(new.faces[0][:, ~D], theta.faces[0][:, ~D])


@pytest.mark.parametrize("full", [True, False])
def test_fused_loops_equal_the_numpy_expressions(monkeypatch, full):
    """The numba loops of the rotation E-step (`engine._rot_numba`) against the numpy route, to 1e-12."""
    import emface.engine.rotstep as rs
    import emface.engine.rotsums as rsums

    theta, X = _problem(9, Ch=2, K=4, angles=angle_grid(8))
    centres = np.array([-1, 3, 7, 0])
    fused, cen_a = _pass(theta, X, full=full, centres=centres)
    monkeypatch.setattr(rs, "_nb", None)
    monkeypatch.setattr(rsums, "_nb", None)
    plain, cen_b = _pass(theta, X, full=full, centres=centres)
    assert np.array_equal(cen_a, cen_b)
    for name in ("N", "S_F", "XC", "image_loglik", "entropy", "chi2", "class_prob", "max_prob"):
        assert close(getattr(fused, name), getattr(plain, name), 1e-12), name
    assert np.array_equal(fused.positions, plain.positions) and np.array_equal(fused.angle_index, plain.angle_index)


def test_pose_interface():
    rot = Rotations((12, 11), (5, 5), angle_grid(6))
    assert rot.shape == (6, 8, 7) and rot.size == 6 * 8 * 7 and rot.ndim == 3
    assert rot.prior_shape(2) == (2, 8, 7)
    assert np.array_equal(rot.support, disc_mask(5))
    flat = np.arange(2 * rot.size)
    c, r, i, j = rot.decode(flat)
    assert np.array_equal(np.ravel_multi_index((c, r, i, j), (2, 6, 8, 7)), flat)
    assert rot == Rotations((12, 11), (5, 5), angle_grid(6)) and rot != Rotations((12, 11), (5, 5), angle_grid(4))


def test_near_is_the_neighbour_gain_by_brute_force():
    """`Stats.near`: log p(x | c*, r*, d* + δ) - log p(x | c*, r*, d*), prior left out, for δ of the pose's
    neighbours (the 8 corners at the best angle); -inf off the grid."""
    from emface.engine._formulas import NEAR_OFFSETS

    theta, X = _problem(10, K=3, zeros=False)
    rot = Rotations(theta.image_shape, theta.face_shape, theta.angles)
    assert np.array_equal(rot.neighbours[:, 1:], NEAR_OFFSETS) and not rot.neighbours[:, 0].any()
    stats, _ = _pass(theta, X, full=False)
    lj = ref.log_joint(X, *_ref(theta))
    cond = lj - np.log(theta.prior)[None, :, None] - np.log(theta.angle_prior)[None, None, :, None, None]
    P, Q = theta.grid_shape
    for k in range(len(X)):
        c, r, (i, j) = stats.labels[k], stats.angle_index[k], stats.positions[k]
        for m, (di, dj) in enumerate(NEAR_OFFSETS):
            ii, jj = i + di, j + dj
            want = cond[k, c, r, ii, jj] - cond[k, c, r, i, j] if (0 <= ii < P and 0 <= jj < Q) else -np.inf
            assert (np.isinf(want) and np.isinf(stats.near[k, m])) or abs(stats.near[k, m] - want) <= 1e-9 * abs(
                cond[k, c, r, i, j])
