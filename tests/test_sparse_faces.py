"""Skipping the faces an image's posterior cannot reach (`engine.sparse_faces`).

The bounds are checked three ways: every face they skip has, in the exact
posterior of the brute-force reference, every probability at or below
Q_THRESHOLD (hard EM: logits below the arg-max); a pass that skips gives the
q, sums and per-image outputs of one that computes every face (to the
skipped 1e-24's; bit for bit in hard EM); and whole fits give the same θ and
an objective that never decreases.
"""

import math

import numpy as np
import pytest

import reference as ref
from conftest import random_problem, ref_args
from emface import FaceEM
from emface.engine import _numba_kernels as nk
from emface.engine import sparse_faces
from emface.engine.chunk import Chunk, chunk_spectra
from emface.engine.estep import Q_THRESHOLD, chunk_stats
from emface.engine.plan import make_plan
from emface.engine.records import Params

MARGIN, MARGIN_HARD = sparse_faces.MARGIN, sparse_faces.MARGIN_HARD
STATS = ("N", "S_F", "XC", "SX", "SXX", "loglik", "entropy_sum", "N_empty", "S_F_hat", "labels", "positions",
         "image_loglik", "max_prob", "entropy", "class_prob", "near", "chi2", "empty_prob")


def _problem(seed, *, C=3, Ch=1, K=12, H=14, W=13, h=4, w=5, s=0.08, per_channel=False, empty=False):
    """A θ whose faces are far apart in nats (small s), its images (n, H, W, Ch), and a nearby θ."""
    rng = np.random.default_rng(seed)
    theta, X, _, _ = random_problem(rng, K, H, W, h, w, n_faces=C, n_channels=Ch, s=None if per_channel else s,
                                    per_channel=per_channel)
    if per_channel:
        theta = Params(theta.faces, theta.background, theta.noise_std * s, theta.prior)
        X = ref_images(rng, theta, K)
    if empty:
        theta = Params(theta.faces, theta.background, theta.noise_std, theta.prior * 0.9, 0.1)
    X = X.reshape(K, H, W, Ch)
    near = Params(theta.faces + 0.01 * rng.normal(size=theta.faces.shape),
                  theta.background + 0.01 * rng.normal(size=theta.background.shape),
                  theta.noise_std * 1.05, _reweighed(rng, theta.prior, theta.empty_weight), theta.empty_weight)
    return theta, near, X


def ref_images(rng, theta, K):
    from conftest import sample_images

    return sample_images(rng, theta, K)[0]


def _reweighed(rng, A, pi0):
    A = A * rng.uniform(0.5, 1.5, size=A.shape)
    return A / A.sum() * (1.0 - (pi0 or 0.0))


def _plan(theta, hard=False, dtype=np.float64):
    return make_plan(theta, hard=hard, backend="numba", route="fft", workers=1, dtype=dtype)


def _passes(X, thetas, hard, margin, monkeypatch, dtype=np.float64):
    """chunk_stats of one chunk under each θ in turn, faces skipped as `margin` allows: [(stats, q, skipped)]."""
    monkeypatch.setattr(sparse_faces, "MARGIN", margin)
    monkeypatch.setattr(sparse_faces, "MARGIN_HARD", margin if margin == math.inf else MARGIN_HARD)
    chunk = Chunk(np.ascontiguousarray(X))
    out = []
    for theta in thetas:
        plan = _plan(theta, hard, dtype)
        skip, _ = sparse_faces.skip_mask(chunk, plan, 1e-13 if dtype == np.float64 else 1e-6)
        stats, q = chunk_stats(chunk, plan, output="q")
        out.append((stats, q, 0 if skip is None else int(skip.sum())))
    return out


def _same(a, b, exact):
    for name in STATS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
        elif exact or name in ("labels", "positions"):
            assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), name
        else:  # the skipped q's, at most 1e-24 each, left out of sums of order 1 and more
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            finite = np.isfinite(x)
            # infinities (the neighbour gains at the grid's edge) must match exactly, and stay out of the scale
            assert np.array_equal(finite, np.isfinite(y)) and np.array_equal(x[~finite], y[~finite]), name
            scale = max(1.0, float(np.abs(x[finite]).max(initial=0.0)))
            assert np.allclose(x[finite], y[finite], rtol=1e-13, atol=1e-20 * scale), name


CASES = [
    dict(),
    dict(Ch=3),
    dict(Ch=2, per_channel=True),
    dict(empty=True),
    dict(C=5, K=20),
]


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "grey")
def test_a_pass_that_skips_faces_equals_one_that_computes_them_all(case, hard, monkeypatch):
    theta, near, X = _problem(7, **case)
    thetas = [theta, near, near, theta]
    every = _passes(X, thetas, hard, math.inf, monkeypatch)
    sparse = _passes(X, thetas, hard, MARGIN, monkeypatch)
    assert all(s == 0 for _, _, s in every)
    assert sparse[0][2] == 0  # the chunk's first pass has no bounds yet
    assert sum(s for _, _, s in sparse[1:]) > 0  # this problem does skip faces
    for (a, qa, _), (b, qb, _) in zip(every, sparse):
        _same(a, b, exact=hard)
        if hard:
            assert np.array_equal(qa, qb)
        else:  # a skipped q was at most Q_THRESHOLD; the others are the same to rounding
            assert np.all(np.abs(qa - qb) <= np.maximum(Q_THRESHOLD, 1e-14 * qa))
            assert np.all(qa[qb == 0] <= Q_THRESHOLD)


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_a_skipped_face_is_below_underflow_in_the_exact_logits(seed, hard, monkeypatch):
    """The bound against the brute-force log joint: every skipped (k, c) has max_d log p(x_k, c, d) far below
    (soft: below exp underflow; hard: below the arg-max by more than the rounding)."""
    rng = np.random.default_rng(100 + seed)
    theta, near, X = _problem(seed, C=4, K=16, Ch=1 + seed % 2)
    # larger and larger steps from θ: the bounds must hold however far θ moves
    scale = [0.0, 0.01, 0.05, 0.2, 1.0, 3.0][seed]
    far = Params(theta.faces + scale * rng.normal(size=theta.faces.shape),
                 theta.background + scale * rng.normal(size=theta.background.shape),
                 theta.noise_std * (1 + scale), _reweighed(rng, theta.prior, None))
    chunk = Chunk(np.ascontiguousarray(X))
    chunk_stats(chunk, _plan(theta, hard))
    skip, _ = sparse_faces.skip_mask(chunk, _plan(far, hard), 1e-13)
    lj = ref.log_joint(X, *ref_args(far))  # (K, C, P, Q)
    K, C = lj.shape[:2]
    top = lj.reshape(K, -1).max(axis=1)
    # soft: each log q of the face at most log Q_THRESHOLD; hard: below the arg-max by more than rounding
    per_face = lj.reshape(K, C, -1).max(axis=2) - top[:, None]
    if scale <= 0.05:
        assert skip is not None and skip.any()
    if skip is not None:
        below = -2.0 if hard else math.log(Q_THRESHOLD)
        assert (per_face[skip.astype(bool)] < below).all()


def test_soft_hard_and_float32_fits_are_the_same_with_and_without_skipping(monkeypatch):
    theta, _, X = _problem(11, C=3, K=40, H=20, W=18, h=6, w=5, s=0.1)
    skipped = []
    real = sparse_faces.skip_mask

    def counted(chunk, plan, rel_eps):
        skip, carried = real(chunk, plan, rel_eps)
        skipped.append(0 if skip is None else int(skip.sum()))
        return skip, carried

    monkeypatch.setattr(sparse_faces, "skip_mask", counted)
    for kw in (dict(), dict(hard=True), dict(dtype="float32")):
        fits = []
        for margin in (math.inf, MARGIN):
            monkeypatch.setattr(sparse_faces, "MARGIN", margin)
            monkeypatch.setattr(sparse_faces, "MARGIN_HARD", margin if margin == math.inf else MARGIN_HARD)
            skipped.clear()
            est = FaceEM((6, 5), n_faces=3, max_iter=8, tol=0, random_state=0, **kw).fit(X[..., 0])
            fits.append(est)
        assert sum(skipped) > 0, kw  # the last fit skipped faces
        a, b = fits
        same = np.array_equal if kw.get("hard") else lambda x, y: np.allclose(x, y, rtol=1e-12, atol=1e-14)
        for name in ("faces_", "background_", "noise_std_"):
            assert same(getattr(a, name), getattr(b, name)), (kw, name)
        assert same(a.prior_, b.prior_) or np.allclose(a.prior_, b.prior_, rtol=1e-12, atol=1e-24)
        assert same(a._history_full, b._history_full), kw
        assert np.array_equal(a.posterior_summary(X[..., 0]).positions, b.posterior_summary(X[..., 0]).positions)


def test_the_objective_never_decreases_while_faces_are_skipped(monkeypatch):
    """Plain EM with the engine's passes under θ_t: each θ_t+1 = M-step(E-step(θ_t)) raises log p."""
    from emface.engine import objective, params_from

    theta, _, X = _problem(5, C=3, K=30, H=16, W=16, h=5, w=5, s=0.15)
    rng = np.random.default_rng(0)
    cur = Params(theta.faces + 0.3 * rng.normal(size=theta.faces.shape), theta.background, theta.noise_std * 2,
                 np.full(theta.prior.shape, 1.0 / theta.prior.size))
    chunk = Chunk(np.ascontiguousarray(X))
    last = -np.inf
    skipped = 0
    for _ in range(8):
        plan = _plan(cur)
        skip, _ = sparse_faces.skip_mask(chunk, plan, 1e-13)
        skipped += 0 if skip is None else int(skip.sum())
        stats = chunk_stats(chunk, plan)
        obj = objective(stats, cur)
        assert obj >= last - 1e-9 * abs(obj)
        assert np.isclose(stats.loglik, ref.log_likelihood(X, *ref_args(cur)), rtol=1e-10)
        last = obj
        cur, _ = params_from(stats, cur)
    assert skipped > 0


def test_window_norms_and_pair_products_against_direct_sums():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, 9, 11, 2)) + 3.0
    off, inv = 1.5, 0.7
    out = np.empty(5)
    nk.window_norms_serial(X, off, inv, 4, 3, out)
    x = (X - off) * inv
    want = [max(float(np.sum(x[k, i:i + 4, j:j + 3] ** 2)) for i in range(6) for j in range(9)) for k in range(5)]
    assert np.allclose(out, want, rtol=1e-12)
    chunk = Chunk(X, off, inv)
    chunk.cache.sq = np.einsum("khwc,khwc->kc", x, x)
    Xn = sparse_faces.window_norms(chunk, (4, 3))
    assert (Xn ** 2 >= np.asarray(want)).all() and np.allclose(Xn ** 2, want, rtol=1e-10)
    theta = Params(rng.normal(size=(3, 2, 4, 3)), rng.normal(size=(2, 9, 11)), np.array([0.5, 0.9]),
                   np.full((3, 6, 9), 1.0 / 162))
    plan = _plan(theta)
    sp = chunk_spectra(chunk, plan)
    full = np.empty((5, 3) + sp.shape[2:], dtype=complex)
    nk.spectral_product_serial(sp, plan.filters, full)
    kk = np.array([0, 4, 2, 2], dtype=np.int64)
    cc = np.array([1, 0, 2, 0], dtype=np.int64)
    pairs = np.empty((4,) + sp.shape[2:], dtype=complex)
    nk.spectral_product_pairs(sp, plan.filters, kk, cc, pairs)
    assert np.array_equal(pairs, full[kk, cc])


@pytest.mark.parametrize("s", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("Ch", [1, 2])
def test_the_dense_route_transforms_only_the_faces_an_image_reaches(s, Ch):
    """S_F and XC by FFTs of the faces above Q_THRESHOLD equal the crops' sums and the reference's M-step."""
    from emface.engine import params_from
    from emface.engine.mstep import face_sums

    rng = np.random.default_rng(int(10 * s) + Ch)
    theta, X, _, _ = random_problem(rng, 10, 12, 11, 4, 3, n_faces=4, n_channels=Ch, s=s)
    X = X.reshape(10, 12, 11, Ch)
    sums = []
    for max_sparse in (0, 10**6):  # every image dense; every image by crops
        plan = _plan(theta)
        plan.max_sparse = plan.max_sparse_face = max_sparse
        stats, q = chunk_stats(Chunk(np.ascontiguousarray(X)), plan, output="q")
        sums.append((face_sums(stats), stats.XC, stats))
    (SF_d, XC_d, st_d), (SF_c, XC_c, _) = sums
    assert st_d.S_F_hat is not None
    scale = np.abs(SF_c).max()
    assert np.allclose(SF_d, SF_c, rtol=1e-10, atol=1e-12 * scale)
    assert np.allclose(XC_d, XC_c, rtol=1e-10, atol=1e-12 * np.abs(XC_c).max())
    # and the M-step from the dense sums is the reference's, from the posterior q
    new, _ = params_from(st_d, theta)
    F, _, _, _ = ref.m_step(X, q, 4, 3, previous_F=np.moveaxis(theta.faces, 1, -1),
                            previous_B=np.moveaxis(theta.background, 0, -1))
    assert np.allclose(np.moveaxis(new.faces, 1, -1), F, rtol=1e-10, atol=1e-12 * np.abs(F).max())


def test_the_margin_keeps_every_skipped_probability_under_the_sums_threshold():
    assert sparse_faces.MARGIN >= -math.log(Q_THRESHOLD) + 4 * sparse_faces.ERR_MAX
    assert sparse_faces.MARGIN_HARD >= 4 * sparse_faces.ERR_MAX


def test_skipped_faces_whose_probabilities_were_not_zero_change_the_pass_only_by_them(monkeypatch):
    """Faces 60 to 745 nats below the best: skipped (q = 0 instead of at most 1e-24), all else kept."""
    theta, near, X = _problem(7, s=0.3, K=30, h=5, w=5)
    thetas = [theta, near]
    every = _passes(X, thetas, False, math.inf, monkeypatch)
    sparse = _passes(X, thetas, False, MARGIN, monkeypatch)
    qa, qb = every[1][1], sparse[1][1]
    assert sparse[1][2] > 0
    dropped = (qb == 0) & (qa > 0)
    assert dropped.any()  # this problem skips faces whose exp did not underflow
    assert (qa[dropped] <= Q_THRESHOLD).all()
    _same(every[1][0], sparse[1][0], exact=False)
    assert np.allclose(qa, qb, rtol=1e-13, atol=Q_THRESHOLD)


def test_bounds_of_other_working_units_are_not_used(monkeypatch):
    """A chunk whose map to working units changed (a new standardisation) computes every face again."""
    theta, near, X = _problem(7)
    chunk = Chunk(np.ascontiguousarray(X))
    chunk_stats(chunk, _plan(theta))
    assert sparse_faces.skip_mask(chunk, _plan(near), 1e-13)[0] is not None
    moved = Chunk(chunk.data, 0.5, 2.0, chunk.cache)
    assert sparse_faces.skip_mask(moved, _plan(near), 1e-13) == (None, None)
