"""Starting points for EM: the note's random start, a data-driven start, or the user's arrays.

Every function returns `Params` in working units (see `emface.sources`).
"""

from __future__ import annotations

import numpy as np

from .engine import kernels
from .model import Params

__all__ = ["random_start", "auto_start", "user_start", "INIT_METHODS"]

INIT_METHODS = ("auto", "random")

# images used by the data-driven start at most (a random subset beyond)
_AUTO_MAX_IMAGES = 500


def _grid(source):
    H, W = source.image_shape
    h, w = source.face_shape
    return H, W, h, w, H - h + 1, W - w + 1


def random_start(source, rng):
    """The note's start: every pixel of F and B uniform over the data's range,
    s from the data's spread, A uniform.

    The draws are measured from the end of the range that the data's skewness
    points away from, so that the start for ``c·X + d`` is exactly ``c·F + d``
    of the start for X, for negative c too: fits are equivariant.
    """
    H, W, h, w, P, Q = _grid(source)
    lo, hi = source.working_range()
    if not hi > lo:
        hi = lo + 1.0
    o = source.working_orientation()
    base, span = (lo, hi - lo) if o > 0 else (hi, lo - hi)
    F = base + span * rng.random(size=(h, w))
    B = base + span * rng.random(size=(H, W))
    s = max(source.working_std(), 1e-3 * (hi - lo))
    A = np.full((P, Q), 1.0 / (P * Q))
    return Params(F, B, s, A)


def _subset(source, rng, fraction=1.0):
    """Up to 500 images in working units: all of a small stack, else runs of consecutive
    images from random places (runs read fast from chunked files: zarr, HDF5, TIFF)."""
    K = source.n_images
    n = min(_AUTO_MAX_IMAGES, max(1, int(np.ceil(fraction * K))))
    if n >= K:
        x = np.asarray(source.data[0:K])
    else:
        run = max(1, n // 10)
        starts = np.sort(rng.choice(K - run + 1, size=max(1, n // run), replace=False))
        # overlapping runs would repeat images: keep them apart
        keep = np.concatenate([[True], np.diff(starts) >= run])
        x = np.concatenate([np.asarray(source.data[a:a + run]) for a in starts[keep]])
    return (x.astype(np.float64) - source.offset) / source.scale


def auto_start(source, rng, fraction=1.0):
    """A data-driven start.

    The background is the per-pixel median of the images; each image's face
    position is the window where the image departs most from it; the face is
    the mean of those windows; s is the spread of what is left; A is uniform
    (smoothed towards those positions).

    Parameters
    ----------
    source : ArraySource
    rng : numpy Generator
    fraction : float
        Share of the images to use (at most 500 are used in any case); a
        random half gives restarts that differ from each other.
    """
    H, W, h, w, P, Q = _grid(source)
    x = _subset(source, rng, fraction)
    B = np.median(x, axis=0)
    r = x - B
    energy = kernels.box_sums(r * r, (h, w))  # (n, P, Q)
    flat = energy.reshape(len(x), -1)
    arg = np.argmax(flat, axis=1)
    pos = np.stack([arg // Q, arg % Q], axis=1)
    F = kernels.crops(x, pos, (h, w)).mean(axis=0)
    counts = np.bincount(arg, minlength=P * Q).reshape(P, Q).astype(float)
    A = (counts + 1.0) / (counts.sum() + P * Q)
    mu_err = []
    for k in range(min(len(x), 200)):
        i, j = pos[k]
        m = B.copy()
        m[i:i + h, j:j + w] = F
        mu_err.append(np.mean((x[k] - m) ** 2))
    s = float(np.sqrt(np.mean(mu_err)))
    s = max(s, 1e-3)
    return Params(F, B, s, A)


def user_start(source, base, *, face=None, background=None, noise_std=None, prior=None):
    """Replace parts of `base` (working units) by arrays given in data units."""
    F, B, s, A = base.face, base.background, base.noise_std, base.prior
    if face is not None:
        F = (np.asarray(face, dtype=np.float64) - source.offset) / source.scale
    if background is not None:
        B = (np.asarray(background, dtype=np.float64) - source.offset) / source.scale
    if noise_std is not None:
        s = float(noise_std) / source.scale
    if prior is not None:
        A = np.asarray(prior, dtype=np.float64)
    return Params(F, B, s, A)
