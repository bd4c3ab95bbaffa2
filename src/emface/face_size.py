"""Choosing the face size: an outer search around the estimator, not a branch of the EM loop.

The likelihood alone cannot choose a size: a larger window has more face
pixels to fit. What it can do is tell a face pixel from a background pixel
when the face moves over a textured background:

- a window one row too tall holds, in that row, whatever background lies
  beside the face in each image -- different pixels of B at different
  positions -- and a face F is one fixed picture, so it fits that row badly;
- a window one row too short leaves a row of the face to the background B,
  which is fixed in the frame while the face moves, so B fits it badly too.

With the images' faces at their positions, the likelihood therefore peaks at
the true size, by about (rows or columns misfitted) × (the background's
variation across positions) / (2 s²) nats per image. Where the background is
flat around the face both neighbours fit equally well, and the BIC penalty of
``½ log K`` nats per face parameter picks the smaller window: the criterion is

    criterion(h, w) = log p(X | θ̂ with a uniform prior) / K - C·h·w·Ch·log(K) / (2K)

per image. The uniform prior keeps the prior's P·Q free parameters, whose
number changes with the size, out of the comparison.

The search is cheap (`search`):

1. a coarse grid of sizes fitted on a subsample of images shrunk so that the
   longer side is at most 32 pixels (each fit costs a few milliseconds per
   iteration);
2. at full resolution, on a subsample, the best coarse size is fitted once,
   and then each side of the window is moved by up to a few pixels with the
   fitted positions held fixed: each candidate costs one pass of window sums
   and a closed-form M-step (`profile_criterion`), no E-step;
3. the fit and margin step repeat until the window stops moving, and the
   estimator then fits all images at the chosen size.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._layout import public_background, public_faces, public_noise
from .engine import params_from
from .executor import EngineConfig, LocalExecutor
from .sources import ArraySource

__all__ = ["search", "profile_criterion", "size_range"]

#: the coarse stage shrinks images until the longer side is at most this
_COARSE_SIDE = 32
#: sizes per axis in the coarse grid, at most
_COARSE_STEPS = 6
#: images used by the search, at most (a random subsample beyond)
_SEARCH_IMAGES = 600
#: rounds of fit-and-move at full resolution, at most
_ROUNDS = 4


def size_range(face_shape, image_shape):
    """((h_min, h_max), (w_min, w_max)) from ``"auto"`` or a pair of ranges, clipped to the images.

    ``"auto"``: from a twentieth of each side (at least 2 pixels) to the whole side.
    """
    H, W = image_shape
    if isinstance(face_shape, str):
        return (max(1, min(H, max(2, H // 20))), H), (max(1, min(W, max(2, W // 20))), W)
    (h0, h1), (w0, w1) = face_shape
    return (max(1, h0), min(H, h1)), (max(1, w0), min(W, w1))


def _grid(lo, hi, steps):
    """Up to `steps` integers spread geometrically over [lo, hi]."""
    if hi - lo + 1 <= steps:
        return list(range(lo, hi + 1))
    vals = np.unique(np.round(np.geomspace(lo, hi, steps)).astype(int))
    return [int(v) for v in vals]


def _downsample(x, f):
    """Block means of f×f pixels (images first, an optional channel axis last)."""
    if f == 1:
        return np.asarray(x, dtype=np.float64)
    K, H, W = x.shape[:3]
    Hc, Wc = H // f, W // f
    x = np.asarray(x[:, :Hc * f, :Wc * f], dtype=np.float64)
    shape = (K, Hc, f, Wc, f) + x.shape[3:]
    return x.reshape(shape).mean(axis=(2, 4))


def _subsample(X, rng, n_max, bytes_max=200 * 2**20):
    """Up to `n_max` images of X (and never more than `bytes_max` as float64), read in runs."""
    K = int(X.shape[0])
    per = int(np.prod(X.shape[1:])) * 8
    n = max(1, min(K, n_max, bytes_max // max(per, 1)))
    if n >= K:
        return np.asarray(X[0:K])
    run = max(1, n // 10)
    starts = np.sort(rng.choice(K - run + 1, size=max(1, n // run), replace=False))
    keep = np.concatenate([[True], np.diff(starts) >= run])
    return np.concatenate([np.asarray(X[a:a + run]) for a in starts[keep]])


def _uniform_loglik(est, X, make):
    """Mean log p(X_k | F, B, s, A uniform): the fit's likelihood without the prior's free parameters."""
    C = len(est.faces_)
    P, Q = est.prior_.shape[-2:]
    probe = make(est.faces_.shape[1:3], face_init=est.faces_ if C > 1 else est.face_,
                 background_init=est.background_, noise_std_init=est.noise_std_,
                 prior_init=np.full((C, P, Q) if C > 1 else (P, Q), 1.0 / (C * P * Q)), max_iter=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe.fit(X)
    return probe.lower_bound_


def _penalty(shape, n_faces, n_channels, K):
    return 0.5 * n_faces * shape[0] * shape[1] * n_channels * math.log(max(K, 2)) / K


def _profile(X, face_shape, positions, labels, n_faces, noise):
    """(criterion per image, θ of the one M-step in the user's layout) for faces held at `positions`."""
    src = ArraySource(X, face_shape, n_faces=n_faces)
    ex = LocalExecutor(src, EngineConfig())
    K = src.n_images
    stats = ex.stats_from_positions(positions, labels, n_faces=n_faces, face_shape=tuple(face_shape))
    p, _ = params_from(stats, None, noise_floor=1e-9 * max(src.working_std(), 1e-300), noise=noise)
    H, W = src.image_shape
    Ch = src.n_channels
    P, Q = p.grid_shape
    gauss = -0.5 * H * W * float(np.sum(np.log(2 * np.pi * p.noise_std ** 2) + 1.0))
    per_image = src.loglik_to_data(gauss - math.log(n_faces * P * Q))
    colour = len(X.shape) == 4
    d = src.to_data(p)
    faces = public_faces(d.faces, colour)
    init = dict(face_init=faces if n_faces > 1 else faces[0], background_init=public_background(d.background, colour),
                noise_std_init=public_noise(d.noise_std, noise == "per_channel"))
    return per_image - _penalty(face_shape, n_faces, Ch, K), init


def profile_criterion(X, face_shape, positions, labels=None, n_faces=1, noise="shared"):
    """The size criterion with each image's face held at a given (face, corner): no E-step.

    The faces, background and noise are fitted by one closed-form M-step from
    the windows at `positions`; the criterion is the resulting log-likelihood
    per image of those assignments under a uniform prior, minus the BIC
    penalty ``C·h·w·Ch·log(K) / (2K)``.

    Parameters
    ----------
    X : array-like (K, H, W) or (K, H, W, Ch)
    face_shape : (h, w)
    positions : int array (K, 2)
        Top-left corners, inside the grid of `face_shape`.
    labels : int array (K,), optional
        Each image's face (zeros by default).
    n_faces : int
    noise : {"shared", "per_channel"}

    Returns
    -------
    float
    """
    return _profile(X, face_shape, positions, labels, n_faces, noise)[0]


def _moved(positions, margins, grid):
    """Corners after moving the window's sides by (top, bottom, left, right), clipped to the new grid."""
    t, b, l, r = margins
    pos = positions - np.array([t, l])
    P, Q = grid
    pos[:, 0] = np.clip(pos[:, 0], 0, P - 1)
    pos[:, 1] = np.clip(pos[:, 1], 0, Q - 1)
    return pos


def _walk(x, shape, fit, bounds, n_faces, noise, reach, record, stage, scale=1, rounds=12):
    """Move the window's sides to where the criterion is highest, refitting between moves.

    Each round fits at the current size (warm-started from the last move's
    M-step), then tries every side moved by up to `reach` pixels with the
    positions held (`_profile`), keeps the best move of each side and, if
    together they raise the criterion, takes them. A side that moved as far
    as it could doubles the reach of the next round.
    """
    (h0, h1), (w0, w1) = bounds
    H, W = x.shape[1:3]
    h, w = shape
    init = {}
    for _ in range(rounds):
        summ = fit(x, (h, w), **init).posterior_summary()
        pos, lab = summ.positions, summ.faces
        base, _ = _profile(x, (h, w), pos, lab, n_faces, noise)
        record.append(dict(shape=(h * scale, w * scale), score=float(base), stage=stage))
        moves = []  # (gain, side, m): each side's best move alone
        for side in range(4):
            best = (base, 0)
            for m in range(-reach, reach + 1):
                mg = [0, 0, 0, 0]
                mg[side] = m
                hh, ww = h + mg[0] + mg[1], w + mg[2] + mg[3]
                if m == 0 or not (h0 <= hh <= h1 and w0 <= ww <= w1):
                    continue
                sc, _ = _profile(x, (hh, ww), _moved(pos, mg, (H - hh + 1, W - ww + 1)), lab, n_faces, noise)
                record.append(dict(shape=(hh * scale, ww * scale), score=float(sc), stage=stage))
                if sc > best[0]:
                    best = (sc, m)
            if best[1]:
                moves.append((best[0] - base, side, best[1]))
        # the sides' moves together, best first, each kept while it fits and raises the criterion
        margins, score, init = [0, 0, 0, 0], base, {}
        for _, side, m in sorted(moves, reverse=True):
            mg = list(margins)
            mg[side] = m
            hh, ww = h + mg[0] + mg[1], w + mg[2] + mg[3]
            if not (h0 <= hh <= h1 and w0 <= ww <= w1):
                continue
            sc, fitted = _profile(x, (hh, ww), _moved(pos, mg, (H - hh + 1, W - ww + 1)), lab, n_faces, noise)
            if sc > score:
                margins, score, init = mg, sc, fitted
        if margins == [0, 0, 0, 0]:
            break
        reach = 2 * reach if max(abs(m) for m in margins) >= reach else max(2, reach // 2)
        h, w = h + margins[0] + margins[1], w + margins[2] + margins[3]
    return h, w


def search(X, make_estimator, *, n_faces=1, face_shape="auto", noise="shared", random_state=None, record=None):
    """Choose the face size (h, w) for the images X; see the module's docstring.

    Parameters
    ----------
    X : array-like (K, H, W) or (K, H, W, Ch)
    make_estimator : callable(face_shape, **settings) -> unfitted FaceEM
        Makes the search's estimators, with the caller's settings (precision,
        backend, noise model, number of faces) and the given overrides.
    n_faces : int
    face_shape : "auto" or ((h_min, h_max), (w_min, w_max))
    noise : {"shared", "per_channel"}
    random_state : numpy Generator or int, optional
    record : list, optional
        Receives one dict per size tried: ``shape``, ``score`` (the criterion
        per image, higher is better) and ``stage`` ("coarse" or "fine").

    Returns
    -------
    (h, w)
    """
    rng = np.random.default_rng(random_state)
    record = [] if record is None else record
    H, W = int(X.shape[1]), int(X.shape[2])
    (h0, h1), (w0, w1) = size_range(face_shape, (H, W))
    Ch = int(X.shape[3]) if len(X.shape) == 4 else 1
    C = int(n_faces)
    sub = _subsample(X, rng, _SEARCH_IMAGES)
    Ks = len(sub)

    def fit(x, shape, **kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make_estimator(shape, n_init=1, max_iter=30, random_state=int(rng.integers(2**31)),
                                  **kw).fit(x)

    # 1. coarse: a grid of sizes fitted on shrunk images, then the window walked from the best
    f = max(1, math.ceil(max(H, W) / _COARSE_SIDE))
    coarse = _downsample(sub, f)
    Hc, Wc = coarse.shape[1:3]
    cb = ((max(1, h0 // f), max(1, min(Hc, -(-h1 // f)))), (max(1, w0 // f), max(1, min(Wc, -(-w1 // f)))))
    best = None
    for hc in _grid(*cb[0], _COARSE_STEPS):
        for wc in _grid(*cb[1], _COARSE_STEPS):
            # positions need not be exact here: no escapes, a looser tolerance
            est = fit(coarse, (hc, wc), shift_escape=False, split_merge=False, tol=1e-2)
            score = _uniform_loglik(est, coarse, make_estimator) - _penalty((hc, wc), C, Ch, Ks)
            record.append(dict(shape=(hc * f, wc * f), score=float(score), stage="coarse"))
            if best is None or score > best[0]:
                best = (score, (hc, wc))
    if f > 1:
        hc, wc = _walk(coarse, best[1], fit, cb, C, noise, 2, record, "coarse", scale=f)
    else:
        hc, wc = best[1]
    # 2. full resolution, from the coarse size
    start = (min(h1, max(h0, hc * f)), min(w1, max(w0, wc * f)))
    return _walk(sub, start, fit, ((h0, h1), (w0, w1)), C, noise, f + 1, record, "fine")
