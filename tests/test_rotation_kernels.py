"""The fused loops of the rotation E-step (`engine._rot_numba`), each against its numpy expression to 1e-12,
and the per-image weights of the rotation pass against the brute force of tests/reference_rotations.py."""

import math

import numpy as np
import pytest

import reference_rotations as ref
from conftest import close
from emface.engine import _rot_numba as nbk
from emface.engine import kernels
from emface.engine import rotstep as rs
from emface.engine import rotsums
from emface.engine._formulas import NEAR_OFFSETS
from emface.engine.chunk import Chunk
from emface.engine.mstep import face_sums
from emface.engine.rotations import RotParams, angle_grid

RNG = np.random.default_rng(1234)


def _cplx(*shape):
    return RNG.normal(size=shape) + 1j * RNG.normal(size=shape)


@pytest.mark.parametrize("every", [True, False])
def test_product_is_the_channel_summed_product(every):
    n, C, R, Ch, H, Wr = 3, 2, 6, 2, 5, 4
    xhat = _cplx(n, Ch, H, Wr)
    fil = _cplx(C, R, Ch, H, Wr)
    idx = np.tile(np.arange(R), (n, 1)) if every else RNG.integers(0, R, size=(n, 3))
    y = np.empty((n, C, idx.shape[1], H, Wr), dtype=complex)
    nbk.product(xhat, fil, idx, y)
    want = np.einsum("kdab,kcjdab->kcjab", xhat, fil[:, idx].transpose(1, 0, 2, 3, 4, 5))
    assert np.abs(y - want).max() <= 1e-12 * np.abs(want).max()


def test_logits_are_the_numpy_expression():
    n, C, m, P, Q = 3, 2, 4, 5, 6
    base = RNG.normal(size=(n, C * m, P, Q + 3))
    corr = base[..., :Q]  # a strided view, as the inverse FFT's crop
    face_sq = RNG.random((n, C * m)) * 10
    xbt = RNG.normal(size=(n, P * Q))
    logA = np.log(RNG.random((C, P * Q)))
    logA[0, 3] = -np.inf
    log_rho = np.log(RNG.random((n, m)))
    w = RNG.uniform(0.3, 2.0, n)
    loss = np.empty((n, C * m, P * Q))
    lg = np.empty_like(loss)
    umax = np.empty((n, C * m))
    uarg = np.empty((n, C * m), dtype=np.int64)
    nbk.logits(corr, face_sq, xbt, logA, log_rho, w, m, loss, lg, umax, uarg)
    want_loss = (xbt[:, None] - 2.0 * corr.reshape(n, C * m, P * Q)) + face_sq[..., None]
    c = np.arange(C * m) // m
    j = np.arange(C * m) % m
    want_lg = (logA[c][None] + log_rho[:, j][..., None]) - w[:, None, None] * want_loss
    assert close(loss, want_loss, 1e-12)
    assert np.array_equal(np.isfinite(lg), np.isfinite(want_lg))
    fin = np.isfinite(want_lg)
    assert close(lg[fin], want_lg[fin], 1e-12)
    assert np.array_equal(uarg, np.argmax(want_lg, axis=2))
    assert np.array_equal(umax, np.max(want_lg, axis=2))


def test_exp_units_underflow_is_exact():
    n, E, PQ = 2, 3, 50
    lg = RNG.normal(size=(n, E, PQ)) * 400.0
    lg[0, 1, 7] = -np.inf
    mx = lg.reshape(n, -1).max(axis=1)
    want = np.exp(lg - mx[:, None, None])
    usum = np.empty((n, E))
    nbk.exp_units(lg, mx, usum)
    assert np.array_equal(lg, want)  # the skipped calls would have returned exactly 0.0
    assert (want == 0).any() and (want > 0).sum() > n
    assert close(usum, want.sum(axis=2), 1e-12)


@pytest.mark.parametrize("blocks", [1, 3, 8])
def test_normalise_is_the_numpy_expression(blocks):
    n, C, m, PQ = 3, 2, 4, 23
    e = RNG.random((n, C, m, PQ)) * (RNG.random((n, C, m, PQ)) > 0.3)
    e[0, 0, 0, :5] = 1e-30
    e[1, 1, 2] = 0.0  # a unit that underflowed whole: skipped
    usum = e.reshape(n, C * m, PQ).sum(axis=2)
    weight = RNG.random((n, m)) * (RNG.random((n, m)) > 0.2)
    loss = RNG.normal(size=(n, C, m, PQ))
    el = np.empty((n, C, blocks))
    qcd = np.empty((n, C, PQ))
    cnt = np.empty((n, C * m, blocks), dtype=np.int64)
    q = e.copy()
    nbk.normalise(q, usum, weight, loss, 1e-24, blocks, el, qcd, cnt)
    want = e * weight[:, None, :, None]
    assert close(q, want, 1e-12)
    assert close(el.sum(axis=(1, 2)), np.einsum("kcjd,kcjd->k", want, np.where(want > 0, loss, 0.0)), 1e-12)
    assert close(qcd, want.sum(axis=2), 1e-12)
    assert np.array_equal(cnt.sum(axis=2), np.count_nonzero(want > 1e-24, axis=3).reshape(n, C * m))


def test_entries_and_crop_sums_are_the_numpy_expressions():
    n, E, P, Q, Ch, h = 3, 4, 5, 6, 2, 4
    q = RNG.random((n, E, P * Q)) * (RNG.random((n, E, P * Q)) > 0.7)
    nnz = np.count_nonzero(q > 1e-24, axis=2)
    units = np.argwhere((nnz > 0) & (nnz <= 6))
    counts = nnz[units[:, 0], units[:, 1]]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    d = np.empty(starts[-1], dtype=np.int64)
    v = np.empty(starts[-1])
    nbk.entries(q, units, starts, 1e-24, d, v)
    keep = np.zeros(nnz.shape, bool)
    keep[units[:, 0], units[:, 1]] = True
    k0, u0, d0 = np.nonzero((q > 1e-24) & keep[:, :, None])
    assert np.array_equal(d, d0) and np.array_equal(v, q[k0, u0, d0])
    assert np.array_equal(np.repeat(units[:, 0], counts), k0) and np.array_equal(np.repeat(units[:, 1], counts), u0)
    x = RNG.normal(size=(n, Ch, P + h - 1, Q + h - 1))
    i, j = np.divmod(d, Q)
    cls = RNG.integers(0, 3, size=d.size)
    S = np.zeros((3, Ch, h, h))
    nbk.crop_sums(x, k0, cls, i, j, v, S)
    want = np.zeros_like(S)
    for e in range(d.size):
        want[cls[e]] += v[e] * x[k0[e], :, i[e]:i[e] + h, j[e]:j[e] + h]
    assert close(S, want, 1e-12)


def test_near_gains_are_the_neighbour_gains():
    n, E, P, Q = 4, 3, 5, 6
    loss = RNG.normal(size=(n, E, P * Q))
    arg = np.array([0, E * P * Q - 1, 1 * P * Q + 2 * Q + 3, 2 * P * Q + Q - 1])
    out = np.empty((n, 8))
    nbk.near_gains(loss, arg, Q, NEAR_OFFSETS, out)
    want = kernels.neighbour_gains(loss.reshape(n, E, P, Q), arg)
    assert np.array_equal(np.isinf(out), np.isinf(want))
    assert close(out[np.isfinite(want)], want[np.isfinite(want)], 1e-12)


# ----------------------------------------------------------------------------- the weights of the pass

def _problem(seed, K=3, Ch=2, angles=np.array([0.0, 50.0, 120.0, 200.0])):
    rng = np.random.default_rng(seed)
    C, H, W, h = 2, 9, 10, 6
    P, Q = H - h + 1, W - h + 1
    A = rng.random((C, P, Q)) + 0.05
    A /= A.sum()
    rho = rng.random(len(angles)) + 0.1
    theta = RotParams(rng.normal(size=(C, Ch, h, h)), rng.normal(size=(Ch, H, W)), rng.uniform(0.8, 1.5, Ch), A,
                      angles=angles, angle_prior=rho / rho.sum())
    return theta, rng.normal(size=(K, H, W, Ch)) * 2.0


def _ref(theta):
    return (np.moveaxis(theta.faces, 1, -1), np.moveaxis(theta.background, 0, -1), theta.noise_std, theta.prior,
            theta.angle_prior, theta.angles)


def _weighted_log_joint(theta, X, w):
    """log p with each image's whole loss ``Σλ||x - μ||²`` scaled by w: ``log prior + c + w_k (log p - log prior
    - c)``, c the Gaussian's log normaliser (brute force). With x' = (x - b)/a and w = a² this is
    log p(x | a, b) (rotbright's brightness)."""
    lj = ref.log_joint(X, *_ref(theta))
    lp = np.log(theta.prior)[None, :, None] + np.log(theta.angle_prior)[None, None, :, None, None]
    s2 = theta.noise_std ** 2
    H, W = theta.image_shape
    c = sum(-0.5 * H * W * math.log(2 * math.pi * s2[ch]) for ch in range(X.shape[-1]))
    return lp + c + w[:, None, None, None, None] * (lj - lp - c)


def _numpy_route(monkeypatch):
    """The numpy route of the pass and of its sums (no fused loops)."""
    monkeypatch.setattr(rs, "_nb", None)
    monkeypatch.setattr(rotsums, "_nb", None)


@pytest.mark.parametrize("fused", [True, False])
def test_loss_weights_against_brute_force(monkeypatch, fused):
    theta, X = _problem(0)
    if not fused:
        _numpy_route(monkeypatch)
    w = np.array([0.5, 1.0, 1.7])
    plan = rs.make_rot_plan(theta, cache_spectra=False)
    stats, _, out = rs.chunk_pass(Chunk(X), plan, np.full(3, -1), output="log_joint", weights=w)
    want = _weighted_log_joint(theta, X, w)
    assert close(out, want)
    stats, _, q = rs.chunk_pass(Chunk(X), plan, np.full(3, -1), output="q", weights=w)
    flat = want.reshape(3, -1)
    top = flat.max(axis=1)
    ll = top + np.log(np.exp(flat - top[:, None]).sum(axis=1))
    assert close(stats.image_loglik, ll)
    assert close(q, np.exp(want - ll[:, None, None, None, None]))
    # H(q) of the weighted posterior
    qq = np.exp(want - ll[:, None, None, None, None])
    ent = -np.sum(np.where(qq > 0, qq * np.log(np.where(qq > 0, qq, 1.0)), 0.0), axis=(1, 2, 3, 4))
    assert close(stats.entropy, ent, 1e-9)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("hard", [False, True])
def test_sum_weights_against_brute_force(monkeypatch, fused, hard):
    theta, X = _problem(1)
    if not fused:
        _numpy_route(monkeypatch)
    w = np.array([0.5, 1.0, 1.7])
    sw = np.array([2.0, 0.25, 1.5])
    C, R = theta.n_faces, len(theta.angles)
    P, Q = theta.grid_shape
    h = theta.face_shape[0]
    plan = rs.make_rot_plan(theta, hard=hard, cache_spectra=False)
    stats, _ = rs.chunk_pass(Chunk(X), plan, np.full(3, -1), full=False, weights=w, sum_weights=sw)
    lj = _weighted_log_joint(theta, X, w)
    flat = lj.reshape(3, -1)
    if hard:
        q = np.zeros_like(flat)
        q[np.arange(3), flat.argmax(axis=1)] = 1.0
    else:
        q = np.exp(flat - flat.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
    q = q.reshape(lj.shape)
    N, _, _, _ = ref.sums(X, q, h)
    _, S, XC, _ = ref.sums(X, q * sw[:, None, None, None, None], h)
    assert close(stats.N.reshape(C, R, P, Q), N)
    assert close(face_sums(stats).reshape(C, R, 2, h, h), np.moveaxis(S, -1, 2))
    assert close(stats.XC, np.moveaxis(XC, -1, 0))


def test_units_mix_crops_and_spectra(monkeypatch):
    """A batch whose units are summed some by crops and some in the frequency domain gives the brute-force sums."""
    theta, X = _problem(2, K=4, Ch=1, angles=angle_grid(6))
    theta.noise_std = np.array([1.0])  # 13 to 20 of the 20 corners of each unit above Q_THRESHOLD
    q = ref.posterior(X, *_ref(theta))
    nnz = np.count_nonzero(q > rs.Q_THRESHOLD, axis=(3, 4))
    limit = 17
    assert (nnz[nnz > 0] <= limit).any() and (nnz > limit).any()
    monkeypatch.setattr(rotsums, "MAX_CROPS", limit)
    plan = rs.make_rot_plan(theta, cache_spectra=False)
    stats, _ = rs.chunk_pass(Chunk(X), plan, np.full(4, -1), full=False)
    N, S, XC, _ = ref.sums(X, q, theta.face_shape[0])
    assert close(face_sums(stats).reshape(S.shape[:2] + (1, 6, 6)), np.moveaxis(S, -1, 2))
    assert close(stats.XC, np.moveaxis(XC, -1, 0))


def test_cover_sums_are_the_discs_of_the_entries():
    n, Ch, H, W, h = 3, 2, 9, 8, 4
    x = RNG.normal(size=(n, Ch, H, W))
    e = 7
    k = RNG.integers(0, n, e)
    i = RNG.integers(0, H - h + 1, e)
    j = RNG.integers(0, W - h + 1, e)
    v = RNG.random(e)
    D = (RNG.random((h, h)) > 0.3).astype(float)
    XC = np.zeros((Ch, H, W))
    nbk.cover_sums(x, k, i, j, v, D, XC)
    want = np.zeros_like(XC)
    for t in range(e):
        want[:, i[t]:i[t] + h, j[t]:j[t] + h] += v[t] * D * x[k[t], :, i[t]:i[t] + h, j[t]:j[t] + h]
    assert close(XC, want, 1e-12)


def test_single_precision_correlations_run_the_same_loops():
    """A float32 plan (complex64 spectra and products) goes through the fused loops as float64 does."""
    theta, X = _problem(3)
    a = rs.chunk_pass(Chunk(X), rs.make_rot_plan(theta, cache_spectra=False), np.full(3, -1))[0]
    b = rs.chunk_pass(Chunk(X), rs.make_rot_plan(theta, dtype=np.float32, cache_spectra=False), np.full(3, -1))[0]
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.angle_index, b.angle_index)
    assert close(b.image_loglik, a.image_loglik, 1e-5)
    assert close(face_sums(b), face_sums(a), 1e-4)
