"""Brightness that changes from frame to frame, against the brute force (tests/reference.py).

The E-step given (a_k, b_k), the ECM update of (a_k, b_k), the M-step's sums
weighted by them, the normalisation, the "auto" probe: each to 1e-10 on tiny
sizes, on every backend and route; and the bound never decreases with
brightness on (soft, hard, several faces, colour, "no face").
"""

import numpy as np
import pytest
import reference as brute
from conftest import ROUTES, close, random_problem, ref_args, seed_of

from emface.engine import Chunk, make_plan, params_from
from emface.engine.brightness import brightness_test, normalize, probe_gains
from emface.engine.estep import chunk_stats
from emface.engine.records import Params

CASES = [  # (channels, gain groups, faces, hard)
    (1, 1, 1, False),
    (3, 1, 2, False),
    (3, 3, 1, False),
    (1, 1, 2, True),
    (2, 2, 1, True),
]


def _problem(Ch, G, C, *, K=5, seed=0):
    rng = np.random.default_rng(seed_of("brightness", Ch, G, C, seed))
    theta, X, labels, pos = random_problem(rng, K, 7, 8, 3, 4, n_faces=C, n_channels=Ch)
    a = rng.uniform(0.6, 1.4, (K, G))
    b = rng.normal(size=(K, G))
    return theta, X, a, b, labels, pos


def _chunk(X):
    return Chunk(X if X.ndim == 4 else X[..., None])


@pytest.mark.parametrize("backend,route", ROUTES)
@pytest.mark.parametrize("Ch,G,C,hard", CASES)
def test_log_joint_and_log_likelihood(backend, route, Ch, G, C, hard):
    theta, X, a, b, _, _ = _problem(Ch, G, C)
    plan = make_plan(theta, backend=backend, route=route, hard=hard)
    _, lj = chunk_stats(_chunk(X), plan, output="log_joint", brightness=(a, b))
    ref = brute.log_joint(X, *ref_args(theta), a, b)
    finite = np.isfinite(ref)
    assert close(lj[finite], ref[finite])
    assert np.all(np.isneginf(lj[~finite]))  # A = 0: -inf, never NaN
    if not hard:
        st = chunk_stats(_chunk(X), plan, brightness=(a, b))
        assert close(st.loglik, brute.log_likelihood(X, *ref_args(theta), a, b))


@pytest.mark.parametrize("backend,route", ROUTES)
@pytest.mark.parametrize("Ch,G,C,hard", CASES)
def test_e_step_and_brightness_update(backend, route, Ch, G, C, hard):
    """q given (a, b); then (a, b) = argmin E_q Σλ||X - aμ - b||² under that q (weighted least squares)."""
    theta, X, a, b, _, _ = _problem(Ch, G, C)
    plan = make_plan(theta, backend=backend, route=route, hard=hard)
    st, q = chunk_stats(_chunk(X), plan, output="q", brightness=(a, b))
    q_ref = brute.posterior(X, *ref_args(theta), a, b)
    if hard:
        flat = q_ref.reshape(len(q_ref), -1)
        q_ref = (flat == flat.max(axis=1, keepdims=True)).astype(float).reshape(q_ref.shape)
    assert close(q, q_ref)
    a_ref, b_ref = brute.update_brightness(X, *ref_args(theta), q_ref, G)
    assert close(st.gains, a_ref) and close(st.offsets, b_ref)


@pytest.mark.parametrize("backend,route", ROUTES)
@pytest.mark.parametrize("Ch,G,C,hard", CASES)
def test_m_step_with_given_brightness(backend, route, Ch, G, C, hard):
    """The pass's sums are weighted by the updated (a, b): F, B, s are the brute-force M-step's for them."""
    theta, X, a, b, _, _ = _problem(Ch, G, C)
    theta = Params(theta.faces, theta.background, theta.noise_std, np.full_like(theta.prior, 1 / theta.prior.size))
    plan = make_plan(theta, backend=backend, route=route, hard=hard)
    st, q = chunk_stats(_chunk(X), plan, output="q", brightness=(a, b))
    new, _ = params_from(st, theta)
    F, B, s, _ = brute.m_step(X, q, 3, 4, gains=st.gains, offsets=st.offsets)
    assert close(np.moveaxis(new.faces, 1, -1), F)
    assert close(np.moveaxis(new.background, 0, -1), B)
    assert close(new.noise_std, s)


def test_sparse_and_dense_sums_agree():
    """The crops (sparse posteriors) and the frequency domain (dense ones) give the same weighted sums."""
    theta, X, a, b, _, _ = _problem(3, 1, 2)
    sums = []
    for max_sparse in (0, 10**6):
        plan = make_plan(theta, backend="numba", route="fft")
        plan.max_sparse = max_sparse
        st = chunk_stats(_chunk(X), plan, brightness=(a, b))
        sums.append(params_from(st, theta)[0])
    assert close(sums[0].faces, sums[1].faces) and close(sums[0].background, sums[1].background)
    assert close(sums[0].noise_std, sums[1].noise_std)


def test_with_no_face_class():
    theta, X, a, b, _, _ = _problem(1, 1, 1)
    theta = Params(theta.faces, theta.background, theta.noise_std, theta.prior * 0.8, 0.2)
    for backend in ("numba", "numpy"):
        st = chunk_stats(_chunk(X), make_plan(theta, backend=backend), brightness=(a, b))
        ref = brute.log_likelihood_flat(X, *ref_args(theta), 0.2, a, b)
        assert close(st.loglik, ref)


@pytest.mark.parametrize("G", [1, 3])
def test_normalize_keeps_the_likelihood(G):
    theta, X, a, b, _, _ = _problem(3, G, 2)
    F, B, a2, b2 = normalize(theta.faces, theta.background, a, b)
    moved = Params(F, B, theta.noise_std, theta.prior)
    assert np.allclose(a2.mean(axis=0), 1.0) and np.allclose(b2.mean(axis=0), 0.0, atol=1e-12)
    assert close(brute.log_likelihood(X, *ref_args(moved), a2, b2), brute.log_likelihood(X, *ref_args(theta), a, b))


def test_probe_gains_and_the_test():
    theta, X, a, b, labels, pos = _problem(2, 1, 2, K=6)
    labels = labels.copy()
    labels[0] = -1  # "no face": μ = B
    got = probe_gains(_chunk(X), theta, pos, labels)
    F, B, s, _ = ref_args(theta)
    ref = [brute.map_gain(X[k], F, B, s, labels[k], pos[k]) for k in range(len(X))]
    assert close(got, ref)
    # raw images with a map to working units (x = (raw - offset)·inv_scale), as sources store them
    raw = X / 0.25 + 7.0
    assert close(probe_gains(Chunk(raw, 7.0, 0.25), theta, pos, labels), ref)
    t = brightness_test(got.sum(), len(X), 1)
    assert t["dof"] == 2 * len(X) and t["statistic"] == pytest.approx(2 * got.sum())
    assert t["significant"] == (t["p_value"] < 1e-3)
    assert not brightness_test(0.0, 100, 1)["significant"] and brightness_test(1e6, 100, 1)["significant"]
    # χ²_200's upper tail (its 0.1% quantile is about 267.5, twice a gain of 133.8)
    from scipy.stats import chi2

    assert not brightness_test(100.0, 100, 1)["significant"]
    assert brightness_test(134.5, 100, 1)["p_value"] < 1e-3 < brightness_test(133.0, 100, 1)["p_value"]
    for gain in (50.0, 133.0, 400.0):
        assert brightness_test(gain, 100, 1)["p_value"] == pytest.approx(chi2.sf(2 * gain, 200), rel=1e-10)
