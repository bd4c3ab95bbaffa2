"""The course API: the functions of the well-known assignment, images last.

Here, and only here, stacks have the layout ``(H, W, K)`` and posteriors
``(H-h+1, W-w+1, K)``. Every function is a thin wrapper: it moves the image
axis first and calls the same engine as `emface.FaceEM`.

With ``use_MAP=True`` a posterior is given as an int array of shape (2, K):
the row and column of each image's most probable position.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _validation as v
from .em import ConvergenceWarning
from .engine import params_from
from .engine.poses import grid_shape
from .executor import EngineConfig, LocalExecutor
from .engine.records import Params
from .sources import ArraySource

__all__ = [
    "calculate_log_probability",
    "calculate_lower_bound",
    "run_e_step",
    "run_m_step",
    "run_EM",
    "run_EM_with_restarts",
]


def _stack(X):
    X = v.check_stack(X, "X", layout="hwk", allow_channels=False)
    return np.moveaxis(np.asarray(X), -1, 0)  # (K, H, W) view


def _executor(Xk, face_shape):
    src = ArraySource(Xk, face_shape, standardize=False)
    return LocalExecutor(src, EngineConfig())


def _theta(Xk, F, B, s, A=None):
    H, W = Xk.shape[1:]
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"F must be a 2-D array (h, w), got shape {F.shape}")
    h, w = v.check_face_shape(F.shape, (H, W), name="F.shape")
    arrays = v.check_params_arrays((H, W), (h, w), face=F, background=B, noise_std=s, prior=A,
                                   names=("F", "B", "s", "A"))
    P, Q = grid_shape((H, W), (h, w))
    prior = arrays.get("prior", np.full((1, P, Q), 1.0 / (P * Q)))
    return Params(arrays["faces"], arrays["background"], arrays["noise_std"], prior)


def _to_hwk(a):
    return np.moveaxis(a, 0, -1)


def calculate_log_probability(X, F, B, s):
    """log p(X_k | d_k, F, B, s) for every image and every face position.

    Parameters
    ----------
    X : ndarray (H, W, K)
    F : ndarray (h, w)
    B : ndarray (H, W)
    s : float

    Returns
    -------
    ll : ndarray (H-h+1, W-w+1, K)
    """
    Xk = _stack(X)
    theta = _theta(Xk, F, B, s)
    P, Q = theta.grid_shape
    _, logj = _executor(Xk, theta.face_shape).collect(theta, output="log_joint")
    # the engine's log joint includes log A; A is uniform here
    return _to_hwk(logj[:, 0] + np.log(P * Q))


def _check_q(q, shape_pqk, use_MAP, K):
    P, Q, _ = shape_pqk
    q = np.asarray(q)
    if use_MAP:
        if q.shape != (2, K):
            raise ValueError(f"q must have shape (2, K)=(2, {K}) with use_MAP=True, got {q.shape}")
        if q.dtype.kind not in "iu":
            if not np.all(np.equal(np.mod(q, 1), 0)):
                raise ValueError(f"q must hold integer positions with use_MAP=True, got values such as "
                                 f"{q[np.mod(q, 1) != 0].ravel()[0]!r}")
            q = q.astype(np.int64)
        if (q[0] < 0).any() or (q[0] >= P).any() or (q[1] < 0).any() or (q[1] >= Q).any():
            raise ValueError(f"q's positions must lie in [0, {P}) x [0, {Q}), got rows "
                             f"{q[0].min()}..{q[0].max()} and columns {q[1].min()}..{q[1].max()}")
        return q
    if q.shape != tuple(shape_pqk):
        raise ValueError(f"q must have shape (H-h+1, W-w+1, K)={tuple(shape_pqk)}, got {q.shape}")
    if not np.isfinite(q).all() or (q < 0).any():
        raise ValueError(f"q must be finite and non-negative, got a minimum of {np.nanmin(q):g} and "
                         f"{int((~np.isfinite(q)).sum())} NaN or infinite value(s)")
    return q.astype(np.float64)


def calculate_lower_bound(X, F, B, s, A, q, use_MAP=False):
    """The lower bound L(q, F, B, s, A) = E_q[log p(X, d | θ)] + H(q).

    Parameters
    ----------
    X : ndarray (H, W, K)
    F, B, s, A : the parameters; A has shape (H-h+1, W-w+1)
    q : ndarray (H-h+1, W-w+1, K), or (2, K) of ints with use_MAP
    use_MAP : bool

    Returns
    -------
    float
    """
    Xk = _stack(X)
    theta = _theta(Xk, F, B, s, A)
    K = Xk.shape[0]
    P, Q = theta.grid_shape
    q = _check_q(q, (P, Q, K), use_MAP, K)
    _, logj = _executor(Xk, theta.face_shape).collect(theta, output="log_joint")
    logj = logj[:, 0]  # (K, P, Q)
    if use_MAP:
        return float(logj[np.arange(K), q[0], q[1]].sum())
    qk = np.moveaxis(q, -1, 0)
    pos = qk > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(pos, qk * logj, 0.0).sum()
        entropy = -np.where(pos, qk * np.log(np.where(pos, qk, 1.0)), 0.0).sum()
    return float(expected + entropy)


def run_e_step(X, F, B, s, A, use_MAP=False):
    """The E-step: the posterior over face positions.

    Returns
    -------
    q : ndarray (H-h+1, W-w+1, K), or int ndarray (2, K) with use_MAP
    """
    Xk = _stack(X)
    theta = _theta(Xk, F, B, s, A)
    ex = _executor(Xk, theta.face_shape)
    if use_MAP:
        stats = ex.pass_stats(theta, hard=True)
        return np.ascontiguousarray(stats.positions.T)
    _, q = ex.collect(theta, output="q")
    return _to_hwk(q[:, 0])


def _noise_floor(Xk):
    spread = float(np.std(Xk)) if Xk.size else 1.0
    return max(spread, 1.0) * 1e-12


def run_m_step(X, q, h, w, use_MAP=False):
    """The M-step: F, B, s, A from a given posterior.

    Parameters
    ----------
    X : ndarray (H, W, K)
    q : ndarray (H-h+1, W-w+1, K), or int ndarray (2, K) with use_MAP
    h, w : int

    Returns
    -------
    F (h, w), B (H, W), s (float), A (H-h+1, W-w+1)
    """
    Xk = _stack(X)
    K, H, W = Xk.shape
    h, w = v.check_face_shape((h, w), (H, W), name="(h, w)")
    P, Q = grid_shape((H, W), (h, w))
    q = _check_q(q, (P, Q, K), use_MAP, K)
    ex = _executor(Xk, (h, w))
    if use_MAP:
        stats = ex.stats_from_positions(q.T)
    else:
        qk = np.moveaxis(q, -1, 0)
        stats = ex.stats_from_q(lambda a, b: qk[a:b, None])
    theta, _ = params_from(stats, None, noise_floor=_noise_floor(Xk))
    return theta.faces[0, 0], theta.background[0], float(theta.noise_std[0]), theta.prior[0]


def _em(X, h, w, F, B, s, A, tolerance, max_iter, use_MAP, n_starts):
    Xk = _stack(X)
    K, H, W = Xk.shape
    h, w = v.check_face_shape((h, w), (H, W), name="(h, w)")
    v.check_int(max_iter, "max_iter", low=0)
    v.check_real(tolerance, "tolerance", low=0.0)
    from .estimator import FaceEM

    est = FaceEM((h, w), hard=use_MAP, n_init=n_starts, max_iter=max_iter, tol=tolerance / K,
                 init="random", face_init=F, background_init=B, noise_std_init=s, prior_init=A,
                 shift_escape=False, accelerate=False, algorithm="batch",
                 # random starts follow numpy's global seed, as the course's code does
                 random_state=int(np.random.randint(0, 2**31 - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(Xk)
    LL = np.asarray(est.lower_bounds_) * K
    return est.face_, est.background_, est.noise_std_, est.prior_, LL, est.lower_bound_ * K


def run_EM(X, h, w, F=None, B=None, s=None, A=None, tolerance=0.001, max_iter=50, use_MAP=False):
    """EM from one start, as in the assignment.

    Missing parameters start at random (F and B uniform over the data's
    range, s from the data's spread, A uniform).

    Returns
    -------
    F, B, s, A, LL
        LL holds the lower bound after each iteration (one value per iteration
        run); EM stops when it improves by less than `tolerance`.
    """
    return _em(X, h, w, F, B, s, A, tolerance, max_iter, use_MAP, 1)[:5]


def run_EM_with_restarts(X, h, w, tolerance=0.001, max_iter=50, use_MAP=False, n_restarts=10):
    """EM from `n_restarts` random starts; the parameters and bound of the best.

    Returns
    -------
    F, B, s, A, L
        L is the best run's final lower bound.
    """
    v.check_int(n_restarts, "n_restarts", low=1)
    F, B, s, A, _, L = _em(X, h, w, None, None, None, None, tolerance, max_iter, use_MAP, n_restarts)
    return F, B, s, A, float(L)
