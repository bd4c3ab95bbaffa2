"""Starting points for EM: the note's random start, a data-driven start, or the user's arrays.

Every function returns `Params` in working units (see `emface.sources`) and
the engine's layout: faces (C, Ch, h, w), background (Ch, H, W), prior (C, P, Q).
"""

from __future__ import annotations

import warnings

import numpy as np

from .engine import kernels
from .engine.records import Params
from .sources import as_chunk_array, read_runs, sample_runs

__all__ = ["random_start", "auto_start", "user_start", "INIT_METHODS", "kmeans"]

INIT_METHODS = ("auto", "random")

# images used by the data-driven start: 200, 60 a face for several faces (k-means needs them), at most
# 500 and 128 MB as float64; the background's median takes 100 of them
_AUTO_IMAGES = 200
_AUTO_IMAGES_PER_FACE = 60
_AUTO_MAX_IMAGES = 500
_AUTO_MAX_BYTES = 128 * 2**20
_MEDIAN_IMAGES = 100
# ... and the noise level the residuals of that many
_NOISE_IMAGES = 200


def random_start(source, model, rng):
    """The note's start: every pixel of F and B uniform over the data's range,
    s from the data's spread, A uniform.

    The draws are measured from the end of the range that the data's skewness
    points away from, so that the start for ``c·X + d`` is exactly ``c·F + d``
    of the start for X, for negative c too: fits are equivariant.
    """
    pose = model.pose(source.image_shape)
    (H, W), (h, w) = pose.image_shape, pose.face_shape
    C, Ch = model.n_faces, source.n_channels
    lo, hi = source.working_range()
    if not hi > lo:
        hi = lo + 1.0
    o = source.working_orientation()
    base, span = (lo, hi - lo) if o > 0 else (hi, lo - hi)
    F = base + span * rng.random(size=(C, Ch, h, w))
    B = base + span * rng.random(size=(Ch, H, W))
    s = max(source.working_std(), 1e-3 * (hi - lo))
    A = np.full(pose.prior_shape(C), 1.0 / (C * pose.size))
    return Params(F, B, s, A)


def _subset(source, rng, fraction=1.0, n_faces=1):
    """Some images (see `_AUTO_IMAGES`) in working units, (n, Ch, H, W): all of a small stack, else
    runs of consecutive images from random places."""
    K = source.n_images
    want = min(_AUTO_MAX_IMAGES, max(_AUTO_IMAGES, _AUTO_IMAGES_PER_FACE * n_faces))
    n = min(want, max(1, int(np.ceil(fraction * K))))
    H, W = source.image_shape
    idx = sample_runs(K, n, rng, bytes_per_image=8 * H * W * source.n_channels, max_bytes=_AUTO_MAX_BYTES)
    x = np.moveaxis(as_chunk_array(read_runs(source.data, idx)), -1, 1).astype(np.float64)
    return (x - source.offset) / source.scale


def kmeans(x, k, rng, n_init=5):
    """k-means++ on the rows of x, best of `n_init` seedings: (labels, centroids).

    `scipy.cluster.vq.kmeans2`; a cluster left empty is reseeded at the row
    farthest from its centroid, so every face gets images.
    """
    from scipy.cluster.vq import kmeans2

    best = None
    for _ in range(n_init):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty clusters are handled below
            cent, lab = kmeans2(x, k, minit="++", iter=30, seed=rng)
        counts = np.bincount(lab, minlength=k)
        for c in np.flatnonzero(counts == 0):
            far = int(np.argmax(((x - cent[lab]) ** 2).sum(axis=1)))
            lab[far] = c
            cent[c] = x[far]
        inertia = float(((x - cent[lab]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, lab, cent)
    return best[1], best[2]


def auto_start(source, model, rng, fraction=1.0):
    """A data-driven start.

    The background is the per-pixel median of the images; each image's face
    position is the window where the image departs most from it; with one
    face, the face is the mean of those windows; with C faces, the windows are
    clustered by k-means++ and each cluster's mean is a face. s is the spread
    of what is left; A is uniform, smoothed towards the chosen (face, position) pairs.

    Parameters
    ----------
    source : ArraySource
    model : FaceMixture (its face shape and number of faces)
    rng : numpy Generator
    fraction : float
        Share of the images to use (at most 500 are used in any case); a
        random half gives restarts that differ from each other.
    """
    pose = model.pose(source.image_shape)
    h, w = pose.face_shape
    C = model.n_faces
    x = _subset(source, rng, fraction, C)
    n = len(x)
    # the median over (at most) _MEDIAN_IMAGES images, each pixel's values contiguous: partitioning is then fast
    m = x[:_MEDIAN_IMAGES].reshape(min(n, _MEDIAN_IMAGES), -1)
    B = np.median(np.ascontiguousarray(m.T), axis=1).reshape(x.shape[1:])
    r = x - B
    energy = pose.window_sums(np.sum(r * r, axis=1))  # (n, P, Q)
    arg = np.argmax(energy.reshape(n, -1), axis=1)
    pos = np.stack(pose.decode(arg)[1:], axis=1)
    cr = kernels.crops(x, pos, (h, w))  # (n, Ch, h, w)
    if C == 1 or n < C:
        labels = np.zeros(n, dtype=np.int64)
        F = np.repeat(cr.mean(axis=0)[None], C, axis=0)
    else:
        labels, cent = kmeans(cr.reshape(n, -1), C, rng)
        F = cent.reshape((C,) + cr.shape[1:])
    counts = np.zeros((C, pose.size))
    np.add.at(counts, (labels, arg), 1.0)
    A = (counts.reshape(pose.prior_shape(C)) + 1.0) / (n + C * pose.size)
    m = min(n, _NOISE_IMAGES)
    mu = np.repeat(B[None], m, axis=0)
    for k in range(m):
        i, j = pos[k]
        mu[k, :, i:i + h, j:j + w] = F[labels[k]]
    s = max(float(np.sqrt(np.mean((x[:m] - mu) ** 2))), 1e-3)
    return Params(F, B, s, A)


def user_start(source, base, *, faces=None, background=None, noise_std=None, prior=None):
    """Replace parts of `base` (working units) by arrays given in data units, in the engine's layout."""
    F, B, s, A = base.faces, base.background, base.noise_std, base.prior
    if faces is not None:
        F = (np.asarray(faces, dtype=np.float64) - source.offset) / source.scale
    if background is not None:
        B = (np.asarray(background, dtype=np.float64) - source.offset) / source.scale
    if noise_std is not None:
        s = np.broadcast_to(np.asarray(noise_std, dtype=np.float64) / source.scale, base.noise_std.shape).copy()
    if prior is not None:
        A = np.asarray(prior, dtype=np.float64)
    return Params(F, B, s, A)
