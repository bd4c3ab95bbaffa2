"""The misfit statistic and the "no face" class in the engine, against the brute-force reference, to 1e-10.

Every backend and correlation route (the fused Numba sweep, the array-API
kernels on numpy and on torch), soft and hard EM, one and several faces, one
and several channels, one s or one per channel.
"""


import numpy as np
import pytest

import reference as ref
from conftest import ROUTES, RTOL, as_ref, close, engine_executor, random_problem, ref_args, seed_of
from emface.engine import free_energy, misfit_z, objective, params_from
from emface.executor import EngineConfig, LocalExecutor
from emface.engine.records import Params
from emface.sources import ArraySource

SHAPES = [
    (5, 7, 9, 3, 4),
    (4, 6, 11, 6, 5),   # full height: a 1xQ grid
    (3, 5, 5, 5, 5),    # face = image: a 1x1 grid
]
MODELS = [(1, 1), (3, 1), (1, 3), (2, 2)]





def _with_empty(theta, pi0):
    """θ with a "no face" class of weight pi0 (A scaled to share the simplex)."""
    return Params(theta.faces, theta.background, theta.noise_std, theta.prior * (1.0 - pi0), pi0)


def _problem(shape, model, *parts, pi0=None, per_channel=False, s=None):
    """A random θ (with "no face" of weight pi0 when given) and images drawn from it, some without a face."""
    K, H, W, h, w = shape
    C, Ch = model
    rng = np.random.default_rng(seed_of(shape, model, pi0, *parts))
    theta, X, _, _ = random_problem(rng, K, H, W, h, w, n_faces=C, n_channels=Ch, per_channel=per_channel, s=s)
    if pi0 is None:
        return theta, X
    theta = _with_empty(theta, pi0)
    Xc = X[..., None] if Ch == 1 else X
    empty = rng.random(K) < pi0
    empty[0] = True  # at least one frame without the face
    B = np.moveaxis(theta.background, 0, -1)
    Xc[empty] = B + rng.normal(size=(int(empty.sum()),) + B.shape) * theta.noise_std
    return theta, X


def _ref_q(X, theta, hard):
    f = ref.hard_flat if hard else ref.posterior_flat
    return f(X, *ref_args(theta), pi0=theta.empty_weight)


# ----------------------------------------------------------------------------- the misfit statistic

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
@pytest.mark.parametrize("hard", [False, True])
def test_chi2_equals_the_loops(shape, backend, route, model, hard):
    """Stats.chi2 is E_q[Σ_ch ||X - μ||²/s_ch²] of each image, the mean images built one by one."""
    theta, X = _problem(shape, model, "chi2", backend, route, hard, per_channel=model[1] > 1)
    stats = engine_executor(X, theta.face_shape, backend, route).pass_stats(theta, hard=hard)
    q = _ref_q(X, theta, hard)
    want = ref.expected_chi2(X, *ref_args(theta), q)
    assert close(stats.chi2, want)
    n = int(np.prod(X.shape[1:]))
    assert np.allclose(misfit_z(stats.chi2, n), (want - n) / np.sqrt(2 * n), rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_chi2_at_low_noise_where_the_logits_are_summed_directly(backend):
    """s = 1e-3: the fused sweep recomputes the leading logits relative to the best (its exact frame)."""
    theta, X = _problem((5, 8, 9, 3, 4), (2, 1), "low", backend, s=1e-3)
    stats = engine_executor(X, theta.face_shape, backend, None).pass_stats(theta)
    want = ref.expected_chi2(X, *ref_args(theta), ref.posterior_flat(X, *ref_args(theta)))
    assert np.allclose(stats.chi2, want, rtol=1e-8, atol=1e-6)


def test_chi2_sums_to_n_times_k_at_the_m_step_s():
    """With the M-step's s on the same posteriors, Σ_k chi2_k = n·K exactly: the mean z is 0 by construction."""
    theta, X = _problem((8, 9, 10, 3, 4), (2, 2), "sum")
    ex = engine_executor(X, theta.face_shape, "numba", None)
    stats = ex.pass_stats(theta)
    new, _ = params_from(stats, theta, noise_floor=1e-300)
    q = ref.posterior_flat(X, *ref_args(theta))
    n = int(np.prod(X.shape[1:]))
    assert np.isclose(ref.expected_chi2(X, *ref_args(new), q).sum(), n * len(X), rtol=1e-12)


def test_log_joint_pass_leaves_chi2_undefined():
    theta, X = _problem((4, 7, 8, 3, 3), (1, 1), "lj")
    stats, _ = engine_executor(X, (3, 3), "numba", None).collect(theta, output="log_joint")
    assert np.isnan(stats.chi2).all()


@pytest.mark.parametrize("backend,route", ROUTES)
def test_log_joints_are_over_faces_and_positions_with_the_no_face_class_too(backend, route):
    """The log-joint pass (the course API's) gives log p(X_k, c, d) over (face, position) on every route,
    and its best value, whatever the weight of "no face" (most of these frames show none)."""
    theta, X = _problem((6, 7, 8, 3, 3), (2, 1), "lj-empty", pi0=0.6)
    stats, lj = engine_executor(X, (3, 3), backend, route).collect(theta, output="log_joint")
    plain = Params(theta.faces, theta.background, theta.noise_std, theta.prior)
    flat = ref.log_joint_flat(X, *ref_args(plain))
    np.testing.assert_allclose(np.asarray(lj).reshape(len(X), -1), flat, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.image_loglik, flat.max(axis=1), rtol=1e-10)
    P, Q = theta.grid_shape
    rem = flat.argmax(axis=1) % (P * Q)
    np.testing.assert_array_equal(np.asarray(stats.positions), np.stack([rem // Q, rem % Q], axis=1))


# ----------------------------------------------------------------------------- the "no face" class

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
def test_empty_class_soft_e_and_m_step(shape, backend, route, model):
    """log p, q, q(∅), the bound, chi2 and the whole M-step with "no face" as one more class."""
    pi0 = 0.3
    theta, X = _problem(shape, model, "soft", backend, route, pi0=pi0)
    K = len(X)
    C, P, Q = theta.prior.shape
    M = C * P * Q
    h, w = theta.face_shape
    ex = engine_executor(X, (h, w), backend, route)
    stats, q = ex.collect(theta, output="q")
    qr = ref.posterior_flat(X, *ref_args(theta), pi0=pi0)
    assert np.abs(q.reshape(K, -1) - qr[:, :M]).max() <= RTOL
    assert np.abs(stats.empty_prob - qr[:, M]).max() <= RTOL
    assert np.isclose(stats.N_empty, qr[:, M].sum(), rtol=0, atol=1e-12)
    assert qr[:, M].max() > 0.5  # some frame really is "no face"
    assert np.abs(stats.class_prob - qr[:, :M].reshape(K, C, -1).sum(axis=2)).max() <= RTOL
    ll = ref.log_likelihood_flat(X, *ref_args(theta), pi0=pi0)
    assert close(stats.loglik, ll)
    lb = ref.lower_bound_flat(X, *ref_args(theta), qr, pi0=pi0)
    assert close(free_energy(stats, theta), lb)
    assert close(stats.chi2, ref.expected_chi2(X, *ref_args(theta), qr, with_empty=True))
    # the argmax: -1 and (-1, -1) where "no face" wins
    best = qr.argmax(axis=1)
    assert np.array_equal(stats.labels == -1, best == M)
    assert (stats.positions[best == M] == -1).all()
    stats = ex.pass_stats(theta)
    for alpha in (0.0, 1.5):
        new, _ = params_from(stats, theta, prior_smoothing=alpha, noise_floor=1e-300)
        _check_m_step(new, qr, X, theta, alpha)


def _check_m_step(new, q, X, theta, alpha=0.0, per_channel=False):
    C, P, Q = theta.prior.shape
    h, w = theta.face_shape
    F, B, s, A, pi0 = ref.m_step_flat(X, q, C, P, Q, h, w, alpha=alpha, previous_B=as_ref(B=theta.background),
                                      previous_F=as_ref(F=theta.faces), per_channel=per_channel, with_empty=True)
    assert close(new.prior, A)
    assert np.isclose(new.empty_weight, pi0, rtol=RTOL, atol=1e-15)
    assert np.isclose(new.prior.sum() + new.empty_weight, 1.0, rtol=0, atol=1e-12)
    assert close(as_ref(F=new.faces), F)
    assert np.allclose(new.noise_std ** 2, s ** 2, rtol=RTOL, atol=1e-13 * np.mean(np.square(X)))
    assert close(as_ref(B=new.background), B, 1e-8)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
def test_empty_class_hard_e_and_m_step(shape, backend, route, model):
    pi0 = 0.3
    theta, X = _problem(shape, model, "hard", backend, route, pi0=pi0)
    C, P, Q = theta.prior.shape
    M = C * P * Q
    h, w = theta.face_shape
    stats = engine_executor(X, (h, w), backend, route).pass_stats(theta, hard=True)
    q = ref.hard_flat(X, *ref_args(theta), pi0=pi0)
    best = q.argmax(axis=1)
    assert (best == M).any()
    assert np.array_equal(stats.labels, np.where(best == M, -1, best // (P * Q)))
    rem = best % (P * Q)
    want_pos = np.where((best == M)[:, None], -1, np.stack([rem // Q, rem % Q], axis=1))
    assert np.array_equal(stats.positions, want_pos)
    assert np.array_equal(stats.empty_prob, (best == M).astype(float))
    assert stats.N_empty == (best == M).sum()
    assert np.isinf(stats.near[best == M]).all()
    assert close(stats.loglik, ref.lower_bound_flat(X, *ref_args(theta), q, pi0=pi0))
    assert close(stats.chi2, ref.expected_chi2(X, *ref_args(theta), q, with_empty=True))
    new, _ = params_from(stats, theta, noise_floor=1e-300)
    _check_m_step(new, q, X, theta)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_empty_class_at_low_noise(backend):
    """s = 1e-3: the fused sweep's exact frame gives "no face" its logit relative to the best too."""
    theta, X = _problem((6, 8, 9, 3, 4), (2, 1), "low", backend, pi0=0.4, s=1e-3)
    ex = engine_executor(X, theta.face_shape, backend, None)
    stats, q = ex.collect(theta, output="q")
    qr = ref.posterior_flat(X, *ref_args(theta), pi0=0.4)
    assert np.abs(stats.empty_prob - qr[:, -1]).max() <= 1e-9
    assert np.abs(q.reshape(len(X), -1) - qr[:, :-1]).max() <= 1e-9
    hard = ex.pass_stats(theta, hard=True)
    assert np.array_equal(hard.labels == -1, ref.hard_flat(X, *ref_args(theta), pi0=0.4)[:, -1] == 1)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_positions_with_no_face_label_count_as_empty(backend):
    """stats_from_positions: label -1 is "no face" (moments only, N_empty), as the escapes pass it."""
    theta, X = _problem((7, 8, 9, 3, 4), (2, 2), "pos", pi0=0.3)
    C, P, Q = theta.prior.shape
    ex = engine_executor(X, theta.face_shape, backend, None)
    labels = np.array([0, -1, 1, -1, 0, 1, 1])
    pos = np.array([[0, 0], [-1, -1], [2, 3], [-1, -1], [5, 1], [4, 4], [1, 2]])
    st = ex.stats_from_positions(pos, labels, n_faces=C)
    assert st.N_empty == 2 and st.N.sum() == 5
    q = np.zeros((len(X), C * P * Q + 1))
    for k, (c, (i, j)) in enumerate(zip(labels, pos)):
        q[k, C * P * Q if c < 0 else (c * P + i) * Q + j] = 1.0
    new, _ = params_from(st, theta, noise_floor=1e-300)
    _check_m_step(new, q, X, theta)


@pytest.mark.parametrize("model", [(1, 1), (2, 3)])
@pytest.mark.parametrize("hard", [False, True])
def test_em_with_empty_class_never_decreases_its_objective(model, hard):
    """Batch EM steps with "no face": the log-likelihood (soft) or MAP joint (hard) never goes down."""
    theta, X = _problem((30, 12, 13, 5, 4), model, "mono", hard, pi0=0.3)
    rng = np.random.default_rng(0)
    start = Params(theta.faces + rng.normal(size=theta.faces.shape), theta.background, 1.5 * theta.noise_std,
                   np.full(theta.prior.shape, 0.8 / theta.prior.size), 0.2)
    ex = engine_executor(X, theta.face_shape, "numba", None, chunk_size=7)
    p = start
    stats = ex.pass_stats(p, hard=hard)
    last = objective(stats, p)
    for _ in range(12):
        p, _ = params_from(stats, p, noise_floor=1e-300)
        stats = ex.pass_stats(p, hard=hard)
        obj = objective(stats, p)
        assert obj >= last - 1e-9 * abs(last)
        last = obj
    assert p.empty_weight is not None and 0 < p.empty_weight < 1


@pytest.mark.parametrize("hard", [False, True])
def test_parallel_fused_sweep_with_empty_class(hard, monkeypatch):
    """The fused sweep split over two threads: chi2, q(∅) and the sums equal the loops."""
    from emface.engine import _numba_kernels as nk

    monkeypatch.setattr(nk, "SERIAL_BELOW", 0)
    theta, X = _problem((9, 14, 15, 5, 6), (2, 3), "parallel", hard, pi0=0.3)
    src = ArraySource(X, theta.face_shape, standardize=False, chunk_size=5)
    stats = LocalExecutor(src, EngineConfig(backend="numba", workers=2)).pass_stats(theta, hard=hard)
    q = _ref_q(X, theta, hard)
    assert np.abs(stats.empty_prob - q[:, -1]).max() <= RTOL
    assert close(stats.chi2, ref.expected_chi2(X, *ref_args(theta), q, with_empty=True))
    new, _ = params_from(stats, theta, noise_floor=1e-300)
    _check_m_step(new, q, X, theta)
