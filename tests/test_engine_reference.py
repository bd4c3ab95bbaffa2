"""The engine against the brute-force reference (tests/reference.py), to 1e-10 relative.

Every backend and correlation route, one and several faces, one and several
channels, priors with zeros and a face with no weight at all.
"""


import numpy as np
import pytest

import reference as ref
from conftest import ROUTES, RTOL, as_ref, close, engine_executor, random_problem, ref_args, seed_of
from emface.engine import free_energy, params_from
from emface.executor import EngineConfig, LocalExecutor
from emface.sources import ArraySource


# odd sizes, a 1xQ grid, a Px1 grid, and a face as large as the image
SHAPES = [
    (5, 7, 9, 3, 4),
    (4, 6, 11, 6, 5),   # full height: a 1xQ grid
    (3, 9, 5, 4, 5),    # full width: a Px1 grid
    (3, 5, 5, 5, 5),    # face = image: a 1x1 grid
    (6, 8, 7, 1, 1),    # one-pixel face
]
# (faces C, channels Ch)
MODELS = [(1, 1), (3, 1), (1, 3), (2, 2)]





def _problem(shape, model, *parts, **kw):
    K, H, W, h, w = shape
    C, Ch = model
    rng = np.random.default_rng(seed_of(shape, model, *parts))
    return random_problem(rng, K, H, W, h, w, n_faces=C, n_channels=Ch, **kw)


def background_evidence(q, h, w):
    """Expected number of images in which each pixel shows the background (by loops), q (K, C, P, Q)."""
    K, C, P, Q = q.shape
    H, W = P + h - 1, Q + w - 1
    free = np.zeros((H, W))
    for k in range(K):
        for c in range(C):
            for i in range(P):
                for j in range(Q):
                    m = np.ones((H, W))
                    m[i:i + h, j:j + w] = 0
                    free += q[k, c, i, j] * m
    return free


def _check_m_step(new, q, X, theta, h, w, alpha=0.0, per_channel=False):
    F, B, s, A = ref.m_step(X, q, h, w, alpha=alpha, previous_B=as_ref(B=theta.background),
                            previous_F=as_ref(F=theta.faces), per_channel=per_channel)
    assert close(as_ref(F=new.faces), F)
    assert close(new.prior, A)
    # s² is an expanded sum of squares, exact to the rounding of ||X||²: an
    # exact fit (s = 0, as when each face explains one image) comes out near 1e-16
    assert np.allclose(new.noise_std ** 2, s ** 2, rtol=RTOL, atol=1e-13 * np.mean(np.square(X)))
    # B is (SX - XC) / (K - C): where the evidence K - C is tiny the ratio is
    # ill-conditioned in any arithmetic; compare where there is real evidence
    free = background_evidence(q, h, w)
    assert close(as_ref(B=new.background)[free > 1e-4], B[free > 1e-4])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
def test_log_joint_and_posterior(shape, backend, route, model):
    theta, X, _, _ = _problem(shape, model, backend, route)
    K = len(X)
    h, w = theta.face_shape
    ex = engine_executor(X, (h, w), backend, route)
    stats, lj = ex.collect(theta, output="log_joint")
    want = ref.log_joint(X, *ref_args(theta))
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(lj), finite)
    assert close(lj[finite], want[finite])
    stats, q = ex.collect(theta, output="q")
    qr = ref.posterior(X, *ref_args(theta))
    assert np.abs(q - qr).max() <= RTOL
    assert np.allclose(q.reshape(K, -1).sum(1), 1.0, rtol=0, atol=1e-12)
    assert (q[:, theta.prior == 0] == 0).all()
    assert np.abs(stats.class_prob - qr.sum(axis=(2, 3))).max() <= RTOL
    ll = ref.log_likelihood(X, *ref_args(theta))
    assert close(stats.loglik, ll)
    # with the exact posterior the lower bound is the log-likelihood, and the
    # free energy computed from the sufficient statistics is the same number
    lb = ref.lower_bound(X, *ref_args(theta), qr)
    assert close(stats.loglik, lb)
    assert close(free_energy(stats, theta), lb)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
@pytest.mark.parametrize("alpha", [0.0, 2.5])
def test_soft_m_step(shape, backend, route, alpha, model):
    per_channel = model[1] > 1 and alpha > 0
    theta, X, _, _ = _problem(shape, model, backend, route, alpha, 1, per_channel=per_channel)
    h, w = theta.face_shape
    ex = engine_executor(X, (h, w), backend, route)
    stats = ex.pass_stats(theta)
    new, info = params_from(stats, theta, prior_smoothing=alpha, noise_floor=1e-300,
                            noise="per_channel" if per_channel else "shared")
    q = ref.posterior(X, *ref_args(theta))
    _check_m_step(new, q, X, theta, h, w, alpha=alpha, per_channel=per_channel)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
def test_hard_e_and_m_step(shape, backend, route, model):
    theta, X, _, _ = _problem(shape, model, backend, route, 2)
    K, H, W, h, w = shape
    ex = engine_executor(X, (h, w), backend, route)
    stats = ex.pass_stats(theta, hard=True)
    labels, pos = ref.hard_assignments(X, *ref_args(theta))
    assert np.array_equal(stats.positions, pos)
    assert np.array_equal(stats.labels, labels)
    C, P, Q = theta.prior.shape
    q = ref.one_hot(labels, pos, C, P, Q)
    # the hard objective is the lower bound of the one-hot q (its entropy is 0)
    lb = ref.lower_bound(X, *ref_args(theta), q)
    assert close(stats.loglik, lb)
    assert stats.entropy_sum == 0.0
    new, _ = params_from(stats, theta, noise_floor=1e-300)
    _check_m_step(new, q, X, theta, h, w)


@pytest.mark.parametrize("backend,route", ROUTES)
@pytest.mark.parametrize("hard", [False, True])
def test_a_face_with_no_images_keeps_its_face(backend, route, hard):
    """A face whose prior is 0 everywhere gets no posterior mass: it keeps its last value, no NaN."""
    shape, model = (6, 8, 9, 3, 4), (3, 2)
    theta, X, labels, _ = _problem(shape, model, "empty", backend, route, hard, empty_face=True)
    assert not (labels == 2).any()
    h, w = theta.face_shape
    stats = engine_executor(X, (h, w), backend, route).pass_stats(theta, hard=hard)
    assert stats.N[2].sum() == 0.0
    new, info = params_from(stats, theta, noise_floor=1e-300)
    assert 2 in info.empty_faces
    assert np.array_equal(new.faces[2], theta.faces[2])
    assert np.isfinite(new.faces).all() and np.isfinite(new.background).all() and np.isfinite(new.noise_std).all()
    q = ref.posterior(X, *ref_args(theta)) if not hard else ref.one_hot(
        *ref.hard_assignments(X, *ref_args(theta)), *theta.prior.shape)
    _check_m_step(new, q, X, theta, h, w)


@pytest.mark.parametrize("model", MODELS)
def test_free_energy_of_old_posteriors_under_new_parameters(model):
    """free_energy(stats of θ, θ') is E_q[log p(X, c, d | θ')] + H(q) for the posteriors of θ."""
    theta, X, _, _ = _problem((5, 7, 8, 3, 3), model, "fe")
    h, w = theta.face_shape
    stats = engine_executor(X, (h, w), "numba", None).pass_stats(theta)
    new, _ = params_from(stats, theta, noise_floor=1e-300)
    q = ref.posterior(X, *ref_args(theta))
    want = ref.lower_bound(X, *ref_args(new), q)
    assert close(free_energy(stats, new), want)
    # the M-step maximises it over θ: never below the start's
    assert free_energy(stats, new) >= free_energy(stats, theta) - 1e-12 * abs(want)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("model", [(1, 1), (3, 2)])
def test_chunking_does_not_change_sums(backend, model):
    theta, X, _, _ = _problem((13, 9, 10, 4, 3), model, "chunks")
    one = engine_executor(X, (4, 3), backend, None, chunk_size=13).pass_stats(theta)
    many = engine_executor(X, (4, 3), backend, None, chunk_size=3).pass_stats(theta)
    for name in ("N", "S_F", "XC", "SX", "SXX"):
        assert close(getattr(many, name), getattr(one, name), 1e-12)
    assert close(many.loglik, one.loglik, 1e-12)
    assert np.array_equal(many.positions, one.positions)
    assert np.array_equal(many.labels, one.labels)


def test_stats_sum_adds_in_order_and_joins_the_per_image_arrays():
    """`StatsSum` (and ``+``): each sum added in chunk order, the per-image arrays joined, the inputs untouched."""
    import functools

    from emface.engine import chunk_stats
    from emface.engine.records import StatsSum

    theta, X, _, _ = _problem((13, 9, 10, 4, 3), (2, 2), "sum")
    ex = engine_executor(X, (4, 3), "numba", None, chunk_size=3)
    plan = ex._plan(theta, False, with_moments=True)
    parts = [chunk_stats(ex.source.chunk(i), plan) for i in range(ex.n_chunks)]
    assert len(parts) == 5
    before = [p.XC.copy() for p in parts]
    acc = StatsSum()
    for p in parts:
        acc.add(p)
    for total in (acc.result(), functools.reduce(lambda a, b: a + b, parts)):
        for name in ("n_images", "N", "S_F", "XC", "SX", "SXX", "loglik", "entropy_sum"):
            want = functools.reduce(lambda a, b: a + b, [getattr(p, name) for p in parts])
            assert np.array_equal(getattr(total, name), want), name
        for name in ("positions", "labels", "image_loglik", "max_prob", "entropy", "class_prob", "near"):
            assert np.array_equal(getattr(total, name), np.concatenate([getattr(p, name) for p in parts])), name
    assert all(np.array_equal(p.XC, b) for p, b in zip(parts, before))
    assert StatsSum().result() is None


@pytest.mark.parametrize("model", [(1, 1), (3, 2)])
def test_dense_and_sparse_routes_agree_with_the_reference(model):
    """Broad posteriors take the FFT route for S_F, peaked ones the crop route: both equal the loops."""
    theta, X, _, _ = _problem((6, 16, 17, 5, 6), model, "dense")
    for s in (50.0, 0.3):  # broad, then sharp posteriors
        th = theta.copy()
        th.noise_std = np.full(model[1], s)
        stats = engine_executor(X, (5, 6), "numba", "fft").pass_stats(th)
        if s == 50.0:
            assert stats.S_F_hat is not None  # the dense route was taken
        new, _ = params_from(stats, th, noise_floor=1e-300)
        _check_m_step(new, ref.posterior(X, *ref_args(th)), X, th, 5, 6)


@pytest.mark.parametrize("model", [(1, 1), (2, 3)])
def test_float32_gives_same_positions_and_close_sums(model):
    theta, X, _, _ = _problem((40, 24, 30, 8, 9), model, "f32", s=0.4)
    for route in ("fft", "direct"):
        a = engine_executor(X, (8, 9), "numba", route, chunk_size=7).pass_stats(theta)
        b = engine_executor(X, (8, 9), "numba", route, chunk_size=7, dtype=np.float32).pass_stats(theta)
        assert np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.labels, b.labels)
        assert abs(a.loglik - b.loglik) <= 1e-4 * abs(a.loglik)


@pytest.mark.parametrize("route", ["fft", "direct"])
def test_float32_route_against_the_reference(route):
    """float32 correlations: the same hard assignments, posteriors and M-step to float32 accuracy."""
    theta, X, _, _ = _problem((6, 12, 13, 4, 5), (2, 1), "f32", route, s=0.8)
    ex = engine_executor(X, (4, 5), "numba", route, dtype=np.float32)
    stats, q = ex.collect(theta, output="q")
    qr = ref.posterior(X, *ref_args(theta))
    assert np.abs(q - qr).max() < 1e-4
    hard = ex.pass_stats(theta, hard=True)
    labels, pos = ref.hard_assignments(X, *ref_args(theta))
    assert np.array_equal(hard.positions, pos) and np.array_equal(hard.labels, labels)
    new, _ = params_from(stats, theta)
    F, B, s, A = ref.m_step(X, qr, 4, 5, previous_B=as_ref(B=theta.background))
    assert close(as_ref(F=new.faces), F, 1e-4)
    assert close(new.noise_std, s, 1e-4)


def test_one_channel_in_four_dimensions_equals_the_grey_stack():
    """X of shape (K, H, W, 1) is the grey model exactly: statistics and a whole fit."""
    from emface import FaceEM
    from emface.datasets import make_faces

    X, _ = make_faces(120, (30, 36), (12, 10), noise=0.8, random_state=3)
    theta, _, _, _ = _problem((1, 30, 36, 12, 10), (1, 1), "ch1")
    a = engine_executor(X, (12, 10), "numba", None).pass_stats(theta)
    b = engine_executor(X[..., None], (12, 10), "numba", None).pass_stats(theta)
    for name in ("N", "S_F", "XC", "SX", "SXX"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.loglik == b.loglik
    grey = FaceEM((12, 10), random_state=0, n_init=1).fit(X)
    four = FaceEM((12, 10), random_state=0, n_init=1).fit(X[..., None])
    assert four.face_.shape == (12, 10, 1) and four.background_.shape == (30, 36, 1)
    assert np.array_equal(four.face_[..., 0], grey.face_)
    assert np.array_equal(four.background_[..., 0], grey.background_)
    assert four.noise_std_ == grey.noise_std_ and four.lower_bounds_ == grey.lower_bounds_


def test_parallel_and_serial_kernels_are_compiled_and_cached_apart():
    """Each kernel's parallel build and its serial twin have their own cache entries.

    Numba keys its on-disk cache by the function's name and line, not by its
    options (numba/numba#6845): with one name, whichever build was compiled
    first was loaded for both, and the "parallel" kernels ran on one core.
    """
    from emface.engine import _numba_kernels as nk

    for name in nk._PARALLEL:
        par, ser = getattr(nk, name), getattr(nk, name + "_serial")
        assert par.targetoptions.get("parallel") is True
        assert not ser.targetoptions.get("parallel", False)
        assert par.py_func.__code__ is ser.py_func.__code__  # one body of code
        assert par.py_func.__qualname__ != ser.py_func.__qualname__
        assert par._cache._cache_file._index_path != ser._cache._cache_file._index_path


@pytest.mark.parametrize("model", [(1, 1), (2, 3)])
def test_parallel_kernels_against_the_reference(model, monkeypatch):
    """Every kernel split over two threads (as for large chunks) equals the loops: soft, hard, dense, direct,
    given q, given positions."""
    from emface.engine import _numba_kernels as nk

    monkeypatch.setattr(nk, "SERIAL_BELOW", 0)
    K, H, W, h, w = 9, 14, 15, 5, 6
    theta, X, _, _ = _problem((K, H, W, h, w), model, "parallel")
    src = ArraySource(X, (h, w), standardize=False, chunk_size=5)
    ex = LocalExecutor(src, EngineConfig(backend="numba", workers=2))
    qr = ref.posterior(X, *ref_args(theta))
    stats, q = ex.collect(theta, output="q")
    assert close(q, qr)
    new, _ = params_from(stats, theta, noise_floor=1e-300)
    _check_m_step(new, qr, X, theta, h, w)
    hard = ex.pass_stats(theta, hard=True)
    labels, pos = ref.hard_assignments(X, *ref_args(theta))
    assert np.array_equal(hard.positions, pos) and np.array_equal(hard.labels, labels)
    at = ex.stats_from_positions(pos, labels, n_faces=model[0])
    for name in ("N", "S_F", "XC"):
        assert close(getattr(at, name), getattr(hard, name))
    direct = LocalExecutor(src, EngineConfig(backend="numba", route="direct", workers=2)).pass_stats(theta)
    assert close(direct.loglik, stats.loglik) and np.array_equal(direct.positions, stats.positions)
    given = ex.stats_from_q(lambda a, b: qr[a:b])
    for name in ("N", "S_F", "XC"):
        assert close(getattr(given, name), getattr(stats, name))
    broad = theta.copy()
    broad.noise_std = np.full(model[1], 50.0)  # broad posteriors: the dense route
    dense = ex.pass_stats(broad)
    assert dense.S_F_hat is not None
    new, _ = params_from(dense, broad, noise_floor=1e-300)
    _check_m_step(new, ref.posterior(X, *ref_args(broad)), X, broad, h, w)


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_workers_sleep_unless_the_user_says_otherwise(given, expected):
    """The kernels ask for passive OpenMP workers before Numba starts its threads; a user's setting stays."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, emface.engine._numba_kernels; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
