"""The engine against the brute-force reference (tests/reference.py), to 1e-10 relative."""

import zlib

import numpy as np
import pytest

import reference as ref
from conftest import random_problem
from emface.engine import params_from
from emface.executor import EngineConfig, LocalExecutor
from emface.sources import ArraySource

RTOL = 1e-10

# odd sizes, a 1xQ grid, a Px1 grid, and a face as large as the image
SHAPES = [
    (5, 7, 9, 3, 4),
    (4, 6, 11, 6, 5),   # full height: a 1xQ grid
    (3, 9, 5, 4, 5),    # full width: a Px1 grid
    (3, 5, 5, 5, 5),    # face = image: a 1x1 grid
    (6, 8, 7, 1, 1),    # one-pixel face
]
ROUTES = [("numba", "fft"), ("numba", "direct"), ("numpy", "fft"), ("numpy", "direct")]


def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


def _close(a, b, rtol=RTOL):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    assert a.shape == b.shape
    if a.size == 0:
        return True
    scale = max(np.abs(b).max(), 1e-300)
    return np.abs(a - b).max() <= rtol * scale


def _executor(X, face_shape, backend, route, chunk_size=2, dtype=np.float64):
    src = ArraySource(X, face_shape, standardize=False, chunk_size=chunk_size)
    return LocalExecutor(src, EngineConfig(backend=backend, route=route, dtype=dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
def test_log_joint_and_posterior(shape, backend, route):
    rng = np.random.default_rng(_seed(shape, backend, route))
    K, H, W, h, w = shape
    theta, X, _ = random_problem(rng, K, H, W, h, w)
    ex = _executor(X, (h, w), backend, route)
    stats, lj = ex.collect(theta, output="log_joint")
    want = ref.log_joint(X, theta.face, theta.background, theta.noise_std, theta.prior)
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(lj), finite)
    assert _close(lj[finite], want[finite])
    stats, q = ex.collect(theta, output="q")
    qr = ref.posterior(X, theta.face, theta.background, theta.noise_std, theta.prior)
    assert np.abs(q - qr).max() <= RTOL
    assert np.allclose(q.reshape(K, -1).sum(1), 1.0, rtol=0, atol=1e-12)
    assert (q[:, theta.prior == 0] == 0).all()
    ll = ref.log_likelihood(X, theta.face, theta.background, theta.noise_std, theta.prior)
    assert _close(stats.loglik, ll)
    # with the exact posterior the lower bound is the log-likelihood
    lb = ref.lower_bound(X, theta.face, theta.background, theta.noise_std, theta.prior, qr)
    assert _close(stats.loglik, lb)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
@pytest.mark.parametrize("alpha", [0.0, 2.5])
def test_soft_m_step(shape, backend, route, alpha):
    rng = np.random.default_rng(_seed(shape, backend, route, alpha, 1))
    K, H, W, h, w = shape
    theta, X, _ = random_problem(rng, K, H, W, h, w)
    ex = _executor(X, (h, w), backend, route)
    stats = ex.pass_stats(theta)
    new, info = params_from(stats, theta, face_shape=(h, w), prior_smoothing=alpha, noise_floor=1e-300)
    q = ref.posterior(X, theta.face, theta.background, theta.noise_std, theta.prior)
    F, B, s, A = ref.m_step(X, q, h, w, alpha=alpha, previous_B=theta.background)
    assert _close(new.face, F)
    assert _close(new.prior, A)
    assert _close(new.noise_std, s)
    # B is (SX - XC) / (K - C): where the evidence K - C is tiny the ratio is
    # ill-conditioned in any arithmetic; compare where there is real evidence
    free = background_evidence(q, h, w)
    assert _close(new.background[free > 1e-4], B[free > 1e-4])


def background_evidence(q, h, w):
    """Expected number of images in which each pixel shows the background (by loops)."""
    K, P, Q = q.shape
    H, W = P + h - 1, Q + w - 1
    free = np.zeros((H, W))
    for k in range(K):
        for i in range(P):
            for j in range(Q):
                m = np.ones((H, W))
                m[i:i + h, j:j + w] = 0
                free += q[k, i, j] * m
    return free


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
def test_hard_e_and_m_step(shape, backend, route):
    rng = np.random.default_rng(_seed(shape, backend, route, 2))
    K, H, W, h, w = shape
    theta, X, _ = random_problem(rng, K, H, W, h, w)
    ex = _executor(X, (h, w), backend, route)
    stats = ex.pass_stats(theta, hard=True)
    pos = ref.hard_positions(X, theta.face, theta.background, theta.noise_std, theta.prior)
    assert np.array_equal(stats.positions, pos)
    P, Q = H - h + 1, W - w + 1
    q = ref.one_hot(pos, P, Q)
    # the hard objective is the lower bound of the one-hot q (its entropy is 0)
    lb = ref.lower_bound(X, theta.face, theta.background, theta.noise_std, theta.prior, q)
    assert _close(stats.loglik, lb)
    new, _ = params_from(stats, theta, face_shape=(h, w), noise_floor=1e-300)
    F, B, s, A = ref.m_step(X, q, h, w, previous_B=theta.background)
    assert _close(new.face, F)
    assert _close(new.prior, A)
    assert _close(new.noise_std, s)
    # B is (SX - XC) / (K - C): where the evidence K - C is tiny the ratio is
    # ill-conditioned in any arithmetic; compare where there is real evidence
    free = background_evidence(q, h, w)
    assert _close(new.background[free > 1e-4], B[free > 1e-4])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_chunking_does_not_change_sums(backend):
    rng = np.random.default_rng(7)
    theta, X, _ = random_problem(rng, 13, 9, 10, 4, 3)
    one = _executor(X, (4, 3), backend, None, chunk_size=13).pass_stats(theta)
    many = _executor(X, (4, 3), backend, None, chunk_size=3).pass_stats(theta)
    for name in ("N", "S_F", "XC", "SX"):
        assert _close(getattr(many, name), getattr(one, name), 1e-12)
    assert _close(many.loglik, one.loglik, 1e-12)
    assert np.array_equal(many.positions, one.positions)


def test_dense_and_sparse_routes_agree():
    """Broad posteriors take the FFT route for S_F, peaked ones the crop route: same sums."""
    rng = np.random.default_rng(3)
    theta, X, _ = random_problem(rng, 6, 16, 17, 5, 6, zeros_in_prior=True)
    ex = _executor(X, (5, 6), "numba", "fft")
    ex_np = _executor(X, (5, 6), "numpy", "fft")
    for s in (50.0, 0.3):  # broad, then sharp posteriors
        th = theta.copy()
        th.noise_std = s
        a = ex.pass_stats(th)
        b = ex_np.pass_stats(th)
        fa, _ = params_from(a, th, face_shape=(5, 6))
        fb, _ = params_from(b, th, face_shape=(5, 6))
        assert _close(fa.face, fb.face)
        assert _close(fa.background, fb.background)
        assert _close(fa.noise_std, fb.noise_std)


def test_float32_gives_same_positions_and_close_sums(rng):
    from conftest import contrast_problem

    theta, X, _ = contrast_problem(rng, 40, 24, 30, 8, 9, s=40.0)
    for route in ("fft", "direct"):
        a = _executor(X, (8, 9), "numba", route, chunk_size=7).pass_stats(theta)
        b = _executor(X, (8, 9), "numba", route, chunk_size=7, dtype=np.float32).pass_stats(theta)
        assert np.array_equal(a.positions, b.positions)
        assert abs(a.loglik - b.loglik) <= 1e-4 * abs(a.loglik)


@pytest.mark.parametrize("route", ["fft", "direct"])
def test_float32_route_against_the_reference(route):
    """float32 correlations: the same hard positions, posteriors and M-step to float32 accuracy."""
    rng = np.random.default_rng(_seed("f32", route))
    K, H, W, h, w = 6, 12, 13, 4, 5
    theta, X, _ = random_problem(rng, K, H, W, h, w, s=0.8)
    ex = _executor(X, (h, w), "numba", route, dtype=np.float32)
    stats, q = ex.collect(theta, output="q")
    qr = ref.posterior(X, theta.face, theta.background, theta.noise_std, theta.prior)
    assert np.abs(q - qr).max() < 1e-4
    hard = ex.pass_stats(theta, hard=True)
    assert np.array_equal(hard.positions, ref.hard_positions(X, theta.face, theta.background,
                                                             theta.noise_std, theta.prior))
    new, _ = params_from(stats, theta, face_shape=(h, w))
    F, B, s, A = ref.m_step(X, qr, h, w, previous_B=theta.background)
    assert _close(new.face, F, 1e-4)
    assert _close(new.noise_std, s, 1e-4)
