"""`Stats.near`, the neighbour gains the shift escape reads, on every backend and route: against the
brute force (tests/reference.py) and against each other, to 1e-10; and the kernels themselves across
numpy, torch (CPU) and Numba."""

from dataclasses import replace

import numpy as np
import pytest

import reference as ref
from conftest import ROUTES, close, engine_executor, random_problem, ref_args, seed_of
from emface.engine import kernels

SHAPES = [
    (6, 8, 9, 3, 4),
    (4, 6, 11, 6, 5),   # full height: a 1xQ grid
    (3, 9, 5, 4, 5),    # full width: a Px1 grid
    (3, 5, 5, 5, 5),    # face = image: no neighbour on the grid
]
MODELS = [(1, 1), (2, 2)]


def _problem(shape, model, *parts, pi0=None):
    K, H, W, h, w = shape
    C, Ch = model
    rng = np.random.default_rng(seed_of(shape, model, pi0, *parts))
    theta, X, _, _ = random_problem(rng, K, H, W, h, w, n_faces=C, n_channels=Ch)
    if pi0 is not None:
        theta = replace(theta, prior=theta.prior * (1.0 - pi0), empty_weight=pi0)
    return theta, X


def _same_gains(a, b):
    """-inf at the same places, and the finite gains equal to 1e-10 of the largest."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    assert np.array_equal(np.isneginf(a), np.isneginf(b))
    assert np.isfinite(b[~np.isneginf(b)]).all()
    fin = np.isfinite(b)
    return close(a[fin], b[fin])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend,route", ROUTES)
def test_near_against_the_brute_force(shape, model, backend, route):
    theta, X = _problem(shape, model, backend, route)
    stats = engine_executor(X, theta.face_shape, backend, route).pass_stats(theta)
    want = ref.neighbour_gains(X, *ref_args(theta))
    assert _same_gains(stats.near, want)
    assert np.isfinite(want).any() or shape[1:3] == shape[3:]  # some move exists unless the face fills the frame


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("pi0", [None, 0.4])
@pytest.mark.parametrize("model", MODELS)
def test_near_across_backends(model, pi0, hard):
    """numba (fft, direct), numpy (fft, direct) and torch (fft, CPU) give the same gains, "no face" too."""
    shape = (12, 8, 9, 3, 4)
    theta, X = _problem(shape, model, "across", pi0=pi0)
    if pi0 is not None:  # make "no face" win for some images: their rows are all -inf
        X = np.array(X, copy=True)
        X[:4] = np.moveaxis(theta.background, 0, -1).squeeze()
    got = {r: engine_executor(X, theta.face_shape, *r).pass_stats(theta, hard=hard).near for r in ROUTES}
    base = got[("numba", "fft")]
    assert _same_gains(base, ref.neighbour_gains(X, *ref_args(theta), pi0=pi0))
    if pi0 is not None:
        assert np.isneginf(base[:4]).all()
    for r, near in got.items():
        assert _same_gains(near, base), r


def _kernel_case(rng, n=7, C=2, P=4, Q=5):
    loss = rng.normal(size=(n, C, P, Q)) * 10.0
    arg = rng.integers(0, C * P * Q + 1, size=n)  # C·P·Q: "no face"
    arg[:4] = [0, C * P * Q - 1, Q - 1, C * P * Q]  # corners of the grid, and "no face"
    return loss, arg


def test_neighbour_gains_kernel_across_namespaces():
    """`kernels.neighbour_gains` on numpy and torch, and the fused `_neighbour_gains`, from one loss."""
    from emface.engine import _numba_kernels as nk
    from emface.engine.poses import Translations

    rng = np.random.default_rng(7)
    loss, arg = _kernel_case(rng)
    n, C, P, Q = loss.shape
    offsets = Translations((P + 2, Q + 3), (3, 4)).neighbours
    want = np.full((n, len(offsets)), -np.inf)
    for k in range(n):  # by loops
        if arg[k] == C * P * Q:
            continue
        c, i, j = arg[k] // (P * Q), (arg[k] // Q) % P, arg[k] % Q
        for t, (di, dj) in enumerate(offsets):
            if 0 <= i + di < P and 0 <= j + dj < Q:
                want[k, t] = loss[k, c, i, j] - loss[k, c, i + di, j + dj]
    got = kernels.neighbour_gains(loss, arg, offsets)
    assert _same_gains(got, want)
    # the fused kernel reads L = F2 - 2 corr + xb2: corr = -L/2 with F2 = xb2 = 0 gives L exactly
    fused = np.empty_like(want)
    for k in range(n):
        if arg[k] == C * P * Q:
            fused[k] = -np.inf
            continue
        c, i, j = arg[k] // (P * Q), (arg[k] // Q) % P, arg[k] % Q
        nk._neighbour_gains(-0.5 * loss[k], np.zeros((P, Q)), np.zeros(C), c, i, j, offsets, fused[k])
    assert _same_gains(fused, want)
    torch = pytest.importorskip("torch")
    tgot = kernels.neighbour_gains(torch.as_tensor(loss), torch.as_tensor(arg), offsets)
    assert isinstance(tgot, torch.Tensor)
    assert _same_gains(tgot.numpy(), want)
