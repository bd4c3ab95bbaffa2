"""Choosing the face size: an outer search around the EM loop, not a branch inside it.

The likelihood alone cannot choose a size: a larger window has more face
pixels to fit. What it can do is tell a face pixel from a background pixel
when the face moves over a textured background:

- a window one row too tall holds, in that row, whatever background lies
  beside the face in each image -- different pixels of B at different
  positions -- and a face F is one fixed picture, so it fits that row badly;
- a window one row too short leaves a row of the face to the background B,
  which is fixed in the frame while the face moves, so B fits it badly too.

With the images' faces held at their positions, the likelihood therefore
peaks at the true size, by about (rows or columns misfitted) × (the
background's variation across positions) / (2 s²) nats per image. Where the
background is flat around the face both neighbours fit equally well, and the
BIC penalty of ``½ log K`` nats per face parameter picks the smaller window.
The criterion (`profile_criterion`), per image, is

    log p(X, c, d | θ̂) under a uniform prior, with (c, d) each image's face and corner
    and θ̂ their closed-form M-step,  minus  C·h·w·Ch·log(K) / (2K).

The uniform prior keeps the prior's C·P·Q free parameters, whose number
changes with the size, out of the comparison.

The search (`search`) is cheap: each stage holds its images in one executor,
whose cached spectra serve every size, and most candidates cost one pass of
window sums and an M-step, no E-step:

1. coarse: a grid of sizes fitted on images shrunk so that the longer side
   is at most 32 pixels -- along each axis 3 sizes spread geometrically and 3
   margins (frame side less the size) spread geometrically, about 4 distinct
   sizes -- then the best one's window walked (below);
2. fine: at full resolution, on at most 600 images, the coarse size is fitted
   and walked: each side of the window is moved by up to a few pixels with
   the positions held, the best moves are kept, and the walk refits only to
   update the positions, until the window stops moving;
3. the estimator then fits all images at the chosen size.
"""

from __future__ import annotations

import math

import numpy as np

from .em import EMSettings, fit_restarts
from .engine import params_from
from .engine._formulas import gaussian_profile
from .engine.poses import grid_shape
from .executor import LocalExecutor
from .init import auto_start
from .model import FaceMixture
from .engine.records import Params
from .sources import ArraySource, read_runs, sample_runs

__all__ = ["search", "profile_criterion", "size_range"]

#: the coarse stage shrinks images until the longer side is at most this
_COARSE_SIDE = 32
#: sizes per axis in the coarse grid
_COARSE_STEPS = 3
#: images used by the search, at most (a random subsample beyond), and their weight in memory;
#: the coarse stage takes the first 200 of them
_SEARCH_IMAGES = 600
_COARSE_IMAGES = 200
_SEARCH_BYTES = 256 * 2**20


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
    return [int(v) for v in np.unique(np.round(np.geomspace(lo, hi, steps)).astype(int))]


def _axis_grid(lo, hi, side, steps):
    """Sizes to try along one axis of `side` pixels: geometric in the size AND in the margin ``side - size``.

    The criterion lives on the face's motion: a window of h rows in a frame of
    H moves over H - h + 1 rows. A grid geometric in h alone is dense where
    the face is small and has nothing between a third of the frame and the
    whole of it, where the margin H - h changes fastest; a face filling 85%
    of the frame was then judged at a window of the whole side (which cannot
    move, so fits it badly) or of a fifth of it, and the walk stalled at a
    full-side strip. The margins' own geometric grid closes that gap.
    """
    sizes = set(_grid(lo, hi, steps))
    m_lo, m_hi = side - hi + 1, side - lo + 1  # margins plus one, so that a full side (margin 0) is on it
    if m_hi > m_lo:
        sizes.update(side + 1 - m for m in _grid(m_lo, m_hi, steps))
    return sorted(v for v in sizes if lo <= v <= hi)


def _downsample(x, f):
    """Block means of f×f pixels (images first, an optional channel axis last)."""
    if f == 1:
        return np.asarray(x, dtype=np.float64)
    K, H, W = x.shape[:3]
    Hc, Wc = H // f, W // f
    x = np.asarray(x[:, :Hc * f, :Wc * f], dtype=np.float64)
    return x.reshape((K, Hc, f, Wc, f) + x.shape[3:]).mean(axis=(2, 4))


def _penalty(shape, n_faces, n_channels, K):
    return 0.5 * n_faces * shape[0] * shape[1] * n_channels * math.log(max(K, 2)) / K


class _Stage:
    """One set of images held for the search: an executor whose spectra serve every size tried."""

    def __init__(self, x, config, n_faces, noise, noise_floor, moments=None):
        self.source = ArraySource(x, (1, 1), compute_dtype=config.dtype, n_faces=n_faces, moments=moments)
        self.executor = LocalExecutor(self.source, config)
        self.n_faces = n_faces
        self.noise = noise
        self.floor = noise_floor * (self.source.working_std() or 1.0)

    def model(self, shape, escape):
        return FaceMixture(tuple(shape), self.n_faces, noise=self.noise, noise_floor=self.floor,
                           shift_escape=escape, split_merge=escape and self.n_faces > 1)

    def fit(self, shape, rng, start=None, escape=False):
        """(positions, labels) of a short EM fit at `shape`, from `start` or the data-driven start."""
        model = self.model(shape, escape)
        params = auto_start(self.source, model, rng) if start is None else start
        settings = EMSettings(max_iter=30 if escape else 6, tol=1e-3 if escape else 1e-2, accelerate=False)
        best, _ = fit_restarts(self.executor, model, [params], settings)
        return best.stats.positions, best.stats.labels

    def profile(self, shape, positions, labels):
        """(criterion per image, the M-step's θ with a uniform prior) for faces held at `positions`."""
        ex, src = self.executor, self.source
        K = src.n_images
        stats = ex.stats_from_positions(positions, labels, n_faces=self.n_faces, face_shape=tuple(shape))
        p, _ = params_from(stats, None, noise_floor=self.floor, noise=self.noise)
        H, W = src.image_shape
        P, Q = p.grid_shape
        C = self.n_faces
        gauss = float(gaussian_profile(H * W, p.noise_std ** 2))
        score = src.loglik_to_data(gauss - math.log(C * P * Q)) - _penalty(shape, C, src.n_channels, K)
        start = Params(p.faces, p.background, p.noise_std, np.full(p.prior.shape, 1.0 / p.prior.size))
        return score, start


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
    from .executor import EngineConfig

    stage = _Stage(X, EngineConfig(), n_faces, noise, 1e-9)
    return stage.profile(tuple(face_shape), np.asarray(positions), labels)[0]


def _moved(positions, margins, grid):
    """Corners after moving the window's sides by (top, bottom, left, right), clipped to the new grid."""
    t, b, l, r = margins
    pos = positions - np.array([t, l])
    P, Q = grid
    pos[:, 0] = np.clip(pos[:, 0], 0, P - 1)
    pos[:, 1] = np.clip(pos[:, 1], 0, Q - 1)
    return pos


def _walk(stage, shape, bounds, reach, rng, record, tag, scale=1, escape=False, rounds=20):
    """Move the window's sides to where the criterion is highest; refit only to update the positions.

    With the positions held, every side is tried moved by up to `reach`
    pixels; each side's best move is kept, and the moves are taken together,
    best first, while each raises the criterion (the positions move with the
    window). A side that moved as far as it could doubles the next reach. The
    positions are refitted (from the last M-step) once the window has moved a
    fifth of its size since the last fit, and always before the walk may end:
    it ends when, with freshly fitted positions, no move helps.
    """
    (h0, h1), (w0, w1) = bounds
    H, W = stage.source.image_shape
    h, w = shape
    start = None
    fitted_at = None
    for _ in range(rounds):
        if fitted_at is None:
            pos, lab = stage.fit((h, w), rng, start=start, escape=escape)
            fitted_at = (h, w)
        base, _ = stage.profile((h, w), pos, lab)
        record.append(dict(shape=(h * scale, w * scale), score=float(base), stage=tag))

        def tried(mg):
            hh, ww = h + mg[0] + mg[1], w + mg[2] + mg[3]
            if not (h0 <= hh <= h1 and w0 <= ww <= w1):
                return None
            sc, st = stage.profile((hh, ww), _moved(pos, mg, grid_shape((H, W), (hh, ww))), lab)
            record.append(dict(shape=(hh * scale, ww * scale), score=float(sc), stage=tag))
            return sc, st

        moves = []  # (gain, side, m): each side's best move alone
        for side in range(4):
            best = (base, 0)
            for m in range(-reach, reach + 1):
                mg = [0, 0, 0, 0]
                mg[side] = m
                r = tried(mg) if m else None
                if r is not None and r[0] > best[0]:
                    best = (r[0], m)
            if best[1]:
                moves.append((best[0] - base, side, best[1]))
        margins, score = [0, 0, 0, 0], base
        for _, side, m in sorted(moves, reverse=True):
            mg = list(margins)
            mg[side] = m
            r = tried(mg)
            if r is not None and r[0] > score:
                margins, score, start = mg, r[0], r[1]
        if margins == [0, 0, 0, 0]:
            if fitted_at == (h, w):
                break
            fitted_at = None  # confirm with positions fitted at this size
            continue
        reach = 2 * reach if max(abs(m) for m in margins) >= reach else max(2, reach // 2)
        pos = _moved(pos, margins, (H - (h + margins[0] + margins[1]) + 1, W - (w + margins[2] + margins[3]) + 1))
        h, w = h + margins[0] + margins[1], w + margins[2] + margins[3]
        fh, fw = fitted_at
        if abs(h - fh) > max(2, fh // 5) or abs(w - fw) > max(2, fw // 5):
            fitted_at = None
    return h, w


def search(X, config, *, n_faces=1, face_shape="auto", noise="shared", noise_floor=1e-6, random_state=None,
           record=None):
    """Choose the face size (h, w) for the images X; see the module's docstring.

    Parameters
    ----------
    X : array-like (K, H, W) or (K, H, W, Ch)
    config : emface.executor.EngineConfig
        How the search computes (precision, backend, threads).
    n_faces : int
    face_shape : "auto" or ((h_min, h_max), (w_min, w_max))
    noise : {"shared", "per_channel"}
    noise_floor : float
        Smallest s, relative to the data's spread.
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
    per_image = 8 * int(np.prod(X.shape[1:]))
    sub = read_runs(X, sample_runs(int(X.shape[0]), _SEARCH_IMAGES, rng, bytes_per_image=per_image,
                                   max_bytes=_SEARCH_BYTES))
    fine = _Stage(sub, config, int(n_faces), noise, noise_floor)
    # 1. coarse: a grid of sizes on shrunk images, then the best one's window walked; never shrunk
    # below 2 pixels a side (images a few pixels thin, such as 1x64, are searched at full resolution)
    f = max(1, min(math.ceil(max(H, W) / _COARSE_SIDE), min(H, W) // 2))
    if f > 1:
        coarse = _Stage(_downsample(sub[:_COARSE_IMAGES], f), config, int(n_faces), noise, noise_floor)
        Hc, Wc = coarse.source.image_shape
        cb = ((max(1, h0 // f), max(1, min(Hc, -(-h1 // f)))), (max(1, w0 // f), max(1, min(Wc, -(-w1 // f)))))
        best = None
        for hc in _axis_grid(*cb[0], Hc, _COARSE_STEPS):
            for wc in _axis_grid(*cb[1], Wc, _COARSE_STEPS):
                pos, lab = coarse.fit((hc, wc), rng)
                score, _ = coarse.profile((hc, wc), pos, lab)
                record.append(dict(shape=(hc * f, wc * f), score=float(score), stage="coarse"))
                if best is None or score > best[0]:
                    best = (score, (hc, wc))
        hc, wc = _walk(coarse, best[1], cb, 2, rng, record, "coarse", scale=f)
        start, reach = (min(h1, max(h0, hc * f)), min(w1, max(w0, wc * f))), f + 1
    else:
        start, reach = (min(h1, max(h0, (h0 + h1) // 2)), min(w1, max(w0, (w0 + w1) // 2))), 4
    # 2. full resolution, from the coarse size
    return _walk(fine, start, ((h0, h1), (w0, w1)), reach, rng, record, "fine", escape=True)
