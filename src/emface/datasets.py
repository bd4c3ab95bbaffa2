"""Synthetic image stacks made from real photographs, with the truth.

The photographs are small copies of public-domain and CC0 images from
scikit-image's `skimage.data` (see ``scripts/make_bundled_photos.py``), bundled
with emface so that nothing needs downloading, each in grey and in colour:

- faces: ``"astronaut"``, ``"chelsea"``, ``"cup"``, ``"patch"``, ``"helmet"``,
  ``"rocket"``, ``"flag"``, ``"coin"``, ``"cameraman"``, ``"tissue"``
  (`FACES`, in the order several faces take them);
- backgrounds: ``"camera"``, ``"coffee"``, ``"brick"``, ``"coins"``,
  ``"rocket_launch"``, ``"hubble"``, ``"tissue_slide"``.

Any 2-D (grey) or 3-D (colour) array works as a photo too.

`write_synthetic_video` writes such a stack as a long video, block by block,
and `save_truth` / `load_truth` are the truth file (``NAME.truth.npz``) that
``emface generate`` and the demo write beside a stack.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy import ndimage

from . import _validation as v
from ._layout import LUMA

__all__ = ["make_faces", "make_faces_with_outliers", "FacesTruth", "photo", "PHOTOS", "FACES", "BACKGROUNDS",
           "make_prior", "draw_assignments", "render", "write_synthetic_video", "save_truth", "load_truth",
           "TRUTH_KEYS"]

FACES = ("astronaut", "chelsea", "cup", "patch", "helmet", "rocket", "flag", "coin", "cameraman", "tissue")
BACKGROUNDS = ("camera", "coffee", "brick", "coins", "rocket_launch", "hubble", "tissue_slide")
PHOTOS = FACES + BACKGROUNDS
PRIORS = ("uniform", "band", "blob")


@dataclass
class FacesTruth:
    """What generated a stack: θ = (F, B, s, A) and each image's face and position.

    Attributes
    ----------
    faces : ndarray (C, h, w) or (C, h, w, 3)
    background : ndarray (H, W) or (H, W, 3)
    noise_std : float
    prior : ndarray (P, Q) for one face, (C, P, Q) for several
    positions : int ndarray (K, 2)
    labels : int ndarray (K,)
        The face each image shows.
    """

    faces: np.ndarray
    background: np.ndarray
    noise_std: float
    prior: np.ndarray
    positions: np.ndarray
    labels: np.ndarray

    @property
    def face(self):
        """The face, for one face."""
        if len(self.faces) != 1:
            raise AttributeError(f"face is defined for one face; this stack has {len(self.faces)}: use faces")
        return self.faces[0]

    @property
    def contrast(self):
        """The faces' contrast: the mean over faces of the standard deviation of their pixels."""
        return float(np.mean([f.std() for f in self.faces]))


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


def _resize_any(img, shape):
    if img.ndim == 3:
        return np.stack([_resize(img[..., c], shape) for c in range(img.shape[-1])], axis=-1)
    return _resize(img, shape)


def photo(name, shape=None, *, colour=False):
    """A bundled photograph (values 0..255, float64), optionally resized.

    Parameters
    ----------
    name : str or ndarray
        One of `PHOTOS`, or an array used as it is: 2-D grey, or 3-D colour
        (RGBA loses its alpha channel).
    shape : (rows, cols), optional
    colour : bool
        RGB (rows, cols, 3) instead of grey (rows, cols).
    """
    if isinstance(name, str):
        photos = _bundled()
        if name not in PHOTOS:
            raise ValueError(f"photo must be one of {list(PHOTOS)} or an array, got {name!r}")
        img = photos["rgb_" + name if colour else name].astype(np.float64)
    else:
        img = np.asarray(name, dtype=np.float64)
        if img.ndim == 3 and img.shape[-1] in (3, 4):
            img = img[..., :3]
            if not colour:
                img = img @ LUMA
        elif img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim == 2 and colour:
            img = np.stack([img] * 3, axis=-1)
        if img.ndim not in (2, 3) or img.size == 0:
            raise ValueError(f"a photo must be a 2-D (grey) or 3-D (colour) array, got shape {img.shape}")
    if shape is not None and tuple(shape) != img.shape[:2]:
        img = _resize_any(img, shape)
    return img


def make_prior(kind, grid_shape):
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
    v.check_choice(kind, "prior", PRIORS)
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


def draw_assignments(prior, n, rng):
    """Each of `n` images' face and top-left corner, drawn from a prior (C, P, Q) (or (P, Q)) over both.

    Returns
    -------
    labels : int ndarray (n,)
    positions : int ndarray (n, 2)
    """
    A = np.asarray(prior, dtype=np.float64)
    A = A[None] if A.ndim == 2 else A
    C, P, Q = A.shape
    p = A.ravel() if abs(A.sum() - 1.0) <= 1e-12 else A.ravel() / A.sum()
    flat = rng.choice(C * P * Q, size=n, p=p)
    labels, rem = flat // (P * Q), flat % (P * Q)
    return labels, np.stack([rem // Q, rem % Q], axis=1)


def render(background, faces, labels, positions):
    """Mean images: the background with face ``labels[k]`` pasted at ``positions[k]``, float64.

    Parameters
    ----------
    background : ndarray (H, W) or (H, W, Ch)
    faces : ndarray (C, h, w) or (C, h, w, Ch)
    labels : int ndarray (n,); positions : int ndarray (n, 2)
        A label below 0 is "no face": that image is the background alone.

    Returns
    -------
    ndarray (n, H, W) or (n, H, W, Ch)
    """
    B = np.asarray(background, dtype=np.float64)
    h, w = faces.shape[1:3]
    X = np.empty((len(positions),) + B.shape, dtype=np.float64)
    X[:] = B
    for k, (i, j) in enumerate(positions):
        if labels[k] >= 0:
            X[k, i:i + h, j:j + w] = faces[labels[k]]
    return X


def make_faces(n_images=1000, image_shape=(100, 120), face_shape=(40, 32), *, n_faces=1, face=None,
               background="camera", colour=False, noise=1.0, noise_std=None, prior="uniform", weights=None,
               dtype=np.float64, random_state=None):
    """A stack of noisy images, each with one of C face photos pasted at a random position on a background photo.

    Parameters
    ----------
    n_images : int
        K.
    image_shape : (H, W)
    face_shape : (h, w)
    n_faces : int
        C.
    face : str, ndarray or list of them, optional
        The face photos (`PHOTOS` names or arrays), resized to `face_shape`;
        default: the first C of `FACES`.
    background : str or ndarray
        Resized to `image_shape`.
    colour : bool
        RGB stacks (K, H, W, 3) from the colour photographs.
    noise : float
        Noise standard deviation relative to the faces' contrast (the mean
        standard deviation of their pixels); ignored when `noise_std` is given.
    noise_std : float, optional
        Absolute noise standard deviation.
    prior : {"uniform", "band", "blob"} or ndarray (P, Q)
        Where a face's top-left corner falls (the same for every face).
    weights : array (C,), optional
        How often each face appears; uniform by default.
    dtype : numpy dtype
        Of the images (float64 by default; uint8 rounds and clips to 0..255).
    random_state : int or Generator, optional

    Returns
    -------
    X : ndarray (K, H, W), or (K, H, W, 3) in colour
    truth : FacesTruth
    """
    K = v.check_int(n_images, "n_images", low=1)
    C = v.check_int(n_faces, "n_faces", low=1)
    if not hasattr(image_shape, "__len__") or len(image_shape) != 2:
        raise ValueError(f"image_shape must be a pair of positive ints (H, W), got {image_shape!r}")
    H, W = v.check_face_shape(image_shape, name="image_shape")
    h, w = v.check_face_shape(face_shape, (H, W))
    rng = np.random.default_rng(random_state)
    if face is None:
        if C > len(FACES):
            raise ValueError(f"n_faces={C} needs face= photos: {len(FACES)} are bundled")
        names = list(FACES[:C])
    elif isinstance(face, (str, np.ndarray)):
        names = [face] * C if C == 1 else None
        if names is None:
            raise ValueError(f"n_faces={C} needs a list of {C} face photos, got one")
    else:
        names = list(face)
        if len(names) != C:
            raise ValueError(f"face must list n_faces={C} photos, got {len(names)}")
    F = np.stack([photo(f, (h, w), colour=colour) for f in names])
    B = photo(background, (H, W), colour=colour)
    contrast = float(np.mean([f.std() for f in F]))
    if noise_std is None:
        s = v.check_real(noise, "noise", low=0.0) * contrast
    else:
        s = v.check_real(noise_std, "noise_std", low=0.0)
    from .engine.poses import grid_shape

    P, Q = grid_shape((H, W), (h, w))
    A = make_prior(prior, (P, Q))
    if weights is None:
        pi = np.full(C, 1.0 / C)
    else:
        pi = v.check_prior(np.asarray(weights, dtype=np.float64) / np.sum(weights), (C,), "weights")
    joint = pi[:, None, None] * A[None]
    labels, pos = draw_assignments(joint, K, rng)
    X = render(B, F, labels, pos)
    if s > 0:
        X += rng.normal(0.0, s, size=X.shape)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        X = np.clip(np.round(X), max(info.min, 0), min(info.max, 255)).astype(dtype)
    else:
        X = X.astype(dtype)
    return X, FacesTruth(F, B, s, A if C == 1 else joint, pos, labels)


#: kinds of frames of `make_faces_with_outliers`
GOOD, NO_FACE, OTHER_OBJECT = 0, 1, 2


def make_faces_with_outliers(n_images=1000, image_shape=(100, 120), face_shape=(40, 32), *, no_face=0.03,
                             other_object=0.02, other="brick", random_state=None, **kwargs):
    """A `make_faces` stack in which some frames do not follow the model: some show no face, some another object.

    Parameters
    ----------
    n_images, image_shape, face_shape : as `make_faces`
    no_face : float
        Share of frames that show the background alone (plus the same noise).
    other_object : float
        Share of frames that show, instead of a face, a face-sized patch of
        another photo (`other`, resized to the face's size) at a random place.
    other : str or ndarray
        That photo (`PHOTOS` name or array).
    random_state : int or Generator, optional
    **kwargs
        Passed to `make_faces` (n_faces, colour, noise, background, ...).

    Returns
    -------
    X : ndarray (K, H, W) or (K, H, W, 3)
    truth : FacesTruth
        Frames without a face have label -1 and position (-1, -1); frames
        with the other object keep the label and position they were drawn
        with, where the patch now is.
    kinds : int ndarray (K,)
        `GOOD` (0), `NO_FACE` (1) or `OTHER_OBJECT` (2) for each frame.
    """
    rng = np.random.default_rng(random_state)
    X, truth = make_faces(n_images, image_shape, face_shape, random_state=rng, **kwargs)
    K = len(X)
    n0 = int(round(v.check_real(no_face, "no_face", low=0.0) * K))
    n1 = int(round(v.check_real(other_object, "other_object", low=0.0) * K))
    if n0 + n1 > K:
        raise ValueError(f"no_face + other_object must be at most 1, got {no_face} + {other_object}")
    order = rng.permutation(K)
    kinds = np.full(K, GOOD, dtype=np.int64)
    kinds[order[:n0]] = NO_FACE
    kinds[order[n0:n0 + n1]] = OTHER_OBJECT
    colour = X.ndim == 4
    h, w = truth.faces.shape[1:3]
    patch = photo(other, (h, w), colour=colour)
    B = np.asarray(truth.background, dtype=np.float64)
    float_X = X.astype(np.float64)
    for k in np.flatnonzero(kinds != GOOD):
        mean = B.copy()
        if kinds[k] == OTHER_OBJECT:
            i, j = truth.positions[k]
            mean[i:i + h, j:j + w] = patch
        float_X[k] = mean + rng.normal(0.0, truth.noise_std, size=mean.shape)
    if X.dtype.kind in "iu":
        float_X = np.clip(np.round(float_X), 0, 255)
    X = float_X.astype(X.dtype)
    labels = truth.labels.copy()
    positions = truth.positions.copy()
    labels[kinds == NO_FACE] = -1
    positions[kinds == NO_FACE] = -1
    truth = FacesTruth(truth.faces, truth.background, truth.noise_std, truth.prior, positions, labels)
    return X, truth, kinds


# ----------------------------------------------------------------------------- the truth file

#: the arrays of a truth file (``NAME.truth.npz``), in order; ``face`` is added for one face
TRUTH_KEYS = ("faces", "background", "noise_std", "prior", "positions", "labels")


def save_truth(path, truth):
    """Write a `FacesTruth` as a truth file (``.npz`` of `TRUTH_KEYS`, and ``face`` for one face),
    through the one atomic writer (`emface.outputs.atomic_write`).

    Parameters
    ----------
    path : str or path-like
    truth : FacesTruth
    """
    from .outputs import atomic_write

    arrays = {k: getattr(truth, k) for k in TRUTH_KEYS}
    if len(truth.faces) == 1:
        arrays["face"] = truth.faces[0]
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def load_truth(path):
    """Read a truth file written by `save_truth` (``emface generate``) back as a `FacesTruth`."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in TRUTH_KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path}: not a truth file: it lacks {', '.join(missing)}")
        t = {k: z[k] for k in TRUTH_KEYS}
    return FacesTruth(t["faces"], t["background"], float(t["noise_std"]), t["prior"], t["positions"], t["labels"])


# ----------------------------------------------------------------------------- synthetic videos

#: frame rates a synthetic video may have (frames per second)
_FPS_RANGE = (1e-3, 1e4)
# x264 settings of the synthetic videos: CAVLC and no deblocking (tune fastdecode)
# decode about six times faster than the defaults, which matters when a fit
# decodes the whole video on every EM iteration
X264_OPTIONS = {"preset": "veryfast", "tune": "fastdecode"}


def _check_fps(fps):
    """The frame rate as a Fraction, or a ValueError for one that is not a finite number in `_FPS_RANGE`."""
    import numbers
    from fractions import Fraction

    lo, hi = _FPS_RANGE
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not lo <= float(fps) <= hi:
        raise ValueError(f"fps must be a number from {lo:g} to {hi:g} frames per second, got {fps!r}")
    return Fraction(float(fps)).limit_denominator(100000)


def write_synthetic_video(path, n_images=1000, image_shape=(100, 120), face_shape=(40, 32), *, n_faces=1,
                          face=None, background="camera", colour=False, noise=1.0, prior="uniform",
                          random_state=None, fps=25, crf=10, block_bytes=128 * 2**20, progress=None):
    """Write a synthetic video like `make_faces`'s stacks, block by block (``emface generate --video``).

    The faces, background, noise level and prior are `make_faces`'s; every
    frame's face and position are drawn first, for the whole video, from one
    random generator, and the frames are then made, noised (from the same
    generator), rounded to 0..255 and encoded a block at a time, so memory
    stays bounded whatever `n_images`. Grey frames are written as RGB with
    three equal channels. Encoding: H.264 (libx264, yuv420p, or yuv444p when a
    side is odd) at constant quality `crf` (0 is lossless in Y'CbCr; 10 is
    near lossless), preset veryfast, tuned for fast decoding. The file is
    written through the one atomic writer (`emface.outputs.atomic_path`).

    Parameters
    ----------
    path : str
        The video (`emface.video.WRITABLE_SUFFIXES`: .mp4, .mkv, .mov, .m4v or .avi).
    n_images, image_shape, face_shape, n_faces, face, background, colour, noise, prior, random_state
        As for `make_faces`.
    fps : float
    crf : int
    block_bytes : int
        About how much memory a block of frames may take (float64 before rounding).
    progress : callable, optional
        Called with the number of frames written after each block.

    Returns
    -------
    truth : FacesTruth
    """
    import os

    from .errors import InputError, one_line
    from .outputs import atomic_path
    from .video._decode import import_av

    rate = _check_fps(fps)
    av = import_av("writing")
    path = os.fspath(path)
    K = int(n_images)
    rng = np.random.default_rng(random_state)
    _, t = make_faces(1, image_shape, face_shape, n_faces=n_faces, face=face, background=background,
                      colour=colour, noise=noise, prior=prior, random_state=rng)
    labels, pos = draw_assignments(t.prior, K, rng)
    try:
        with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
            _encode(av, tmp, t, labels, pos, rng, rate, crf, colour, block_bytes, progress)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # PyAV's errors, OSError: no half-written video is left (nor on Ctrl-C)
        raise InputError(f"cannot write the video {path}: {one_line(exc)}") from None
    return FacesTruth(t.faces, t.background, float(t.noise_std), t.prior, pos, labels)


def _encode(av, tmp, t, labels, pos, rng, rate, crf, colour, block_bytes, progress):
    """Render, noise, round and encode the frames of `labels` and `pos` into the video `tmp`, a block at a time."""
    F, B, s = t.faces, t.background, float(t.noise_std)
    H, W = B.shape[:2]
    K = len(labels)
    n_block = int(max(1, min(500, block_bytes // (B.size * 8))))
    container = av.open(tmp, "w")
    try:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p" if H % 2 == 0 and W % 2 == 0 else "yuv444p"
        stream.options = dict(X264_OPTIONS, crf=str(int(crf)))
        for a in range(0, K, n_block):
            b = min(K, a + n_block)
            X = render(B, F, labels[a:b], pos[a:b])
            if s > 0:
                X += rng.normal(0.0, s, size=X.shape)
            u8 = np.clip(np.round(X), 0, 255).astype(np.uint8)
            del X
            for k in range(a, b):
                rgb = u8[k - a] if colour else np.repeat(u8[k - a][..., None], 3, axis=2)
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                vf.pts = k
                for packet in stream.encode(vf):
                    container.mux(packet)
            if progress is not None:
                progress(b - a)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
