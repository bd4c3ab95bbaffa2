"""Synthetic image stacks made from real photographs, with the truth.

The photographs are small grey copies of public-domain and CC0 images from
scikit-image's `skimage.data` (see ``scripts/make_bundled_photos.py``), bundled
with emface so that nothing needs downloading: ``"astronaut"`` and
``"chelsea"`` (faces), ``"camera"``, ``"coffee"``, ``"brick"`` and ``"coins"``
(backgrounds). Any 2-D array works as a photo too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy import ndimage

from . import _validation as v

__all__ = ["make_faces", "FacesTruth", "photo", "PHOTOS", "make_prior"]

PHOTOS = ("astronaut", "chelsea", "camera", "coffee", "brick", "coins")
PRIORS = ("uniform", "band", "blob")


@dataclass
class FacesTruth:
    """What generated a stack: θ = (F, B, s, A) and each image's face position."""

    face: np.ndarray
    background: np.ndarray
    noise_std: float
    prior: np.ndarray
    positions: np.ndarray

    @property
    def contrast(self):
        """The face's contrast: the standard deviation of its pixels."""
        return float(self.face.std())


@functools.lru_cache(maxsize=1)
def _bundled():
    with resources.files("emface").joinpath("data/photos.npz").open("rb") as fh:
        with np.load(fh) as z:
            return {k: z[k] for k in z.files}


def _resize(img, shape):
    """Resample a 2-D image to `shape` (bilinear, with a Gaussian pre-filter when shrinking)."""
    img = np.asarray(img, dtype=np.float64)
    fy = img.shape[0] / shape[0]
    fx = img.shape[1] / shape[1]
    sigma = (max(0.0, (fy - 1) / 2), max(0.0, (fx - 1) / 2))
    if sigma[0] > 0 or sigma[1] > 0:
        img = ndimage.gaussian_filter(img, sigma, mode="nearest")
    yy = (np.arange(shape[0]) + 0.5) * fy - 0.5
    xx = (np.arange(shape[1]) + 0.5) * fx - 0.5
    grid = np.meshgrid(yy, xx, indexing="ij")
    return ndimage.map_coordinates(img, grid, order=1, mode="nearest")


def photo(name, shape=None):
    """A bundled grey photograph (values 0..255, float64), optionally resized.

    Parameters
    ----------
    name : str or ndarray
        One of `PHOTOS`, or a 2-D array used as it is.
    shape : (rows, cols), optional
    """
    if isinstance(name, str):
        photos = _bundled()
        if name not in photos:
            raise ValueError(f"photo must be one of {list(PHOTOS)} or a 2-D array, got {name!r}")
        img = photos[name].astype(np.float64)
    else:
        img = np.asarray(name, dtype=np.float64)
        if img.ndim == 3:
            img = img[..., :3].mean(axis=-1)
        if img.ndim != 2 or img.size == 0:
            raise ValueError(f"a photo must be a 2-D array, got shape {img.shape}")
    if shape is not None and tuple(shape) != img.shape:
        img = _resize(img, shape)
    return img


def make_prior(kind, grid_shape, rng=None):
    """A prior over face positions.

    Parameters
    ----------
    kind : {"uniform", "band", "blob"} or ndarray
        ``"band"``: uniform inside the middle 60% of the longer grid axis, zero
        outside. ``"blob"``: a Gaussian centred in the grid with a quarter of
        its size as spread. An array is normalised and returned.
    grid_shape : (P, Q)
    """
    P, Q = grid_shape
    if not isinstance(kind, str):
        return v.check_prior(np.asarray(kind, dtype=np.float64) / np.sum(kind), (P, Q), "prior")
    v.check_choice(kind, "prior", PRIORS + ("array",))
    if kind == "uniform":
        return np.full((P, Q), 1.0 / (P * Q))
    if kind == "band":
        A = np.zeros((P, Q))
        if Q >= P:
            lo, hi = int(0.2 * Q), max(int(0.2 * Q) + 1, int(np.ceil(0.8 * Q)))
            A[:, lo:hi] = 1.0
        else:
            lo, hi = int(0.2 * P), max(int(0.2 * P) + 1, int(np.ceil(0.8 * P)))
            A[lo:hi, :] = 1.0
        return A / A.sum()
    i = np.arange(P)[:, None]
    j = np.arange(Q)[None, :]
    si = max(P / 4.0, 0.5)
    sj = max(Q / 4.0, 0.5)
    A = np.exp(-0.5 * (((i - (P - 1) / 2) / si) ** 2 + ((j - (Q - 1) / 2) / sj) ** 2))
    return A / A.sum()


def make_faces(n_images=1000, image_shape=(100, 120), face_shape=(40, 32), *, face="astronaut",
               background="camera", noise=1.0, noise_std=None, prior="uniform", dtype=np.float64,
               random_state=None):
    """A stack of noisy images with a face photo pasted at random positions on a background photo.

    Parameters
    ----------
    n_images : int
        K.
    image_shape : (H, W)
    face_shape : (h, w)
    face, background : str or ndarray
        Photo names (`PHOTOS`) or 2-D arrays; resized to `face_shape` and `image_shape`.
    noise : float
        Noise standard deviation relative to the face's contrast (the standard
        deviation of its pixels); ignored when `noise_std` is given.
    noise_std : float, optional
        Absolute noise standard deviation.
    prior : {"uniform", "band", "blob"} or ndarray (P, Q)
        Where the face's top-left corner falls.
    dtype : numpy dtype
        Of the images (float64 by default; uint8 rounds and clips to 0..255).
    random_state : int or Generator, optional

    Returns
    -------
    X : ndarray (K, H, W)
    truth : FacesTruth
    """
    K = v.check_int(n_images, "n_images", low=1)
    if not hasattr(image_shape, "__len__") or len(image_shape) != 2:
        raise ValueError(f"image_shape must be a pair of positive ints (H, W), got {image_shape!r}")
    H, W = v.check_face_shape(image_shape, name="image_shape")
    h, w = v.check_face_shape(face_shape, (H, W))
    rng = np.random.default_rng(random_state)
    F = photo(face, (h, w))
    B = photo(background, (H, W))
    contrast = float(F.std())
    if noise_std is None:
        s = v.check_real(noise, "noise", low=0.0) * contrast
    else:
        s = v.check_real(noise_std, "noise_std", low=0.0)
    P, Q = H - h + 1, W - w + 1
    A = make_prior(prior, (P, Q), rng)
    flat = rng.choice(P * Q, size=K, p=A.ravel())
    pos = np.stack([flat // Q, flat % Q], axis=1)
    X = np.empty((K, H, W), dtype=np.float64)
    X[:] = B
    for k, (i, j) in enumerate(pos):
        X[k, i:i + h, j:j + w] = F
    if s > 0:
        X += rng.normal(0.0, s, size=X.shape)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        X = np.clip(np.round(X), max(info.min, 0), min(info.max, 255)).astype(dtype)
    else:
        X = X.astype(dtype)
    return X, FacesTruth(F, B, s, A, pos)
