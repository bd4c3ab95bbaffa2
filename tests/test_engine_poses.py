"""The pose object (`emface.engine.poses.Translations`) and the formulas of `_formulas`, by loops."""

import math

import numpy as np
import pytest

import reference as ref
from conftest import close, random_problem
from emface.engine import _formulas, make_plan
from emface.engine.poses import Translations, grid_shape, pose_of


@pytest.mark.parametrize("image, face", [((7, 9), (3, 4)), ((6, 11), (6, 5)), ((5, 5), (5, 5)), ((4, 3), (1, 1))])
def test_translations_grid_decode_and_neighbours(image, face):
    pose = Translations(image, face)
    P, Q = image[0] - face[0] + 1, image[1] - face[1] + 1
    assert pose.shape == grid_shape(image, face) == (P, Q) and pose.size == P * Q
    assert pose.prior_shape(3) == (3, P, Q)
    assert pose.support.shape == face and pose.support.dtype == bool and pose.support.all()
    assert [tuple(d) for d in pose.neighbours.tolist()] == ref.NEAR
    flat = np.arange(3 * P * Q + 1)  # the last one: "no face", face index 3
    c, i, j = pose.decode(flat)
    want = [(t // (P * Q), (t % (P * Q)) // Q, t % Q) for t in flat]
    assert [tuple(v) for v in np.stack([c, i, j], axis=1).tolist()] == want
    assert pose == Translations(image, face) and hash(pose) == hash(Translations(image, face))
    assert pose != Translations((image[0] + 1, image[1]), face)


@pytest.mark.parametrize("face", [(0, 2), (8, 2), (2, 10)])
def test_translations_refuse_a_face_that_does_not_fit(face):
    with pytest.raises(ValueError, match="must fit in the frame"):
        Translations((7, 9), face)


def _window_sums_by_loops(z, h, w):
    P, Q = z.shape[-2] - h + 1, z.shape[-1] - w + 1
    out = np.zeros(z.shape[:-2] + (P, Q))
    for i in range(P):
        for j in range(Q):
            out[..., i, j] = z[..., i:i + h, j:j + w].sum(axis=(-2, -1))
    return out


def _coverage_by_loops(q, h, w):
    P, Q = q.shape[-2:]
    out = np.zeros(q.shape[:-2] + (P + h - 1, Q + w - 1))
    for i in range(P):
        for j in range(Q):
            out[..., i:i + h, j:j + w] += q[..., i, j][..., None, None]
    return out


@pytest.mark.parametrize("xp_name", ["numpy", "torch"])
def test_window_sums_and_coverage_by_loops(xp_name):
    rng = np.random.default_rng(3)
    pose = Translations((8, 10), (3, 4))
    z = rng.normal(size=(2, 8, 10))
    q = rng.random((2, *pose.shape))
    if xp_name == "torch":
        torch = pytest.importorskip("torch")
        ws, cov = pose.window_sums(torch.as_tensor(z)).numpy(), pose.coverage(torch.as_tensor(q)).numpy()
    else:
        ws, cov = pose.window_sums(z), pose.coverage(q)
    assert close(ws, _window_sums_by_loops(z, 3, 4))
    assert close(cov, _coverage_by_loops(q, 3, 4))
    assert cov.shape == (2, 8, 10)


def test_the_plan_holds_the_pose_and_checks_the_prior():
    rng = np.random.default_rng(4)
    theta = random_problem(rng, 3, 7, 9, 3, 4)[0]
    plan = make_plan(theta, backend="numpy")
    assert plan.pose == pose_of(theta) == Translations((7, 9), (3, 4))
    assert plan.grid_shape == (5, 6)
    wrong = Translations((7, 9), (2, 4))
    with pytest.raises(ValueError, match="prior's shape"):
        make_plan(theta, backend="numpy", pose=wrong)


def test_gaussian_normalisers():
    s2 = np.array([0.5, 2.0, 3.0])
    n = 12
    want = sum(-0.5 * n * math.log(2 * math.pi * v) for v in s2)
    assert math.isclose(_formulas.gaussian_log_norm(n, s2), want, rel_tol=1e-14)
    assert math.isclose(_formulas.gaussian_profile(n, s2), want - 0.5 * n * 3, rel_tol=1e-14)


def test_formulas_compiled_equal_the_python_ones():
    """The copies Numba inlines into the fused kernels are the same functions, compiled."""
    from emface.engine import _numba_base as fm

    rng = np.random.default_rng(5)
    for _ in range(20):
        P, Q = (int(v) for v in rng.integers(1, 9, size=2))
        t = int(rng.integers(0, 3 * P * Q))
        assert fm.decode(t, P, Q) == _formulas.decode(t, P, Q)
        i, j = (int(v) for v in rng.integers(-1, 10, size=2))
        assert fm.in_grid(i, j, P, Q) == bool(_formulas.in_grid(i, j, P, Q))
        a, b, c, d = rng.normal(size=4)
        assert fm.expanded_loss(a, b, c) == _formulas.expanded_loss(a, b, c) == a - 2 * b + c
        assert fm.class_free(a, b) == 2 * a - b
        assert fm.window_total(a, b, c, d) == a - b - c + d
        assert fm.loss_term(abs(a), b, c, d) == _formulas.loss_term(abs(a), b, c, d)
        assert math.isclose(fm.loss_term(abs(a), b, c, d), abs(a) * ((b - c) ** 2 - (b - d) ** 2), rel_tol=1e-12,
                            abs_tol=1e-15)
        assert fm.softmax_entropy(a, b) == max(a - b, 0.0)
        assert fm.expected_chi2(a, b) == 2 * (a + b)
