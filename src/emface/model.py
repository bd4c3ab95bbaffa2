"""The two small records that flow through emface: parameters and statistics.

`Params` holds θ = (F, B, s, A). `Stats` holds the sufficient statistics of one
pass over (part of) the data and adds with ``+``, so chunks, threads and Dask
workers can each compute their share and be summed. Nothing here knows about
files, screens or restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Params", "Stats", "save_model", "load_model"]


@dataclass
class Params:
    """Model parameters θ = (F, B, s, A).

    Attributes
    ----------
    face : ndarray of shape (h, w)
        The face (the object), F.
    background : ndarray of shape (H, W)
        The background, B.
    noise_std : float
        The noise standard deviation, s > 0.
    prior : ndarray of shape (P, Q)
        The prior over the face's top-left corner, A, with P = H - h + 1 and
        Q = W - w + 1. Non-negative and summing to one; zeros are allowed.
    """

    face: np.ndarray
    background: np.ndarray
    noise_std: float
    prior: np.ndarray

    def __post_init__(self):
        self.face = np.asarray(self.face, dtype=np.float64)
        self.background = np.asarray(self.background, dtype=np.float64)
        self.prior = np.asarray(self.prior, dtype=np.float64)
        self.noise_std = float(self.noise_std)

    @property
    def face_shape(self) -> tuple[int, int]:
        return self.face.shape

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.background.shape

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.prior.shape

    def copy(self) -> "Params":
        return Params(self.face.copy(), self.background.copy(), self.noise_std, self.prior.copy())

    def affine(self, scale: float, offset: float) -> "Params":
        """Parameters of the data ``scale * X + offset``: F, B map affinely, s by ``|scale|``."""
        return Params(
            scale * self.face + offset,
            scale * self.background + offset,
            abs(scale) * self.noise_std,
            self.prior.copy(),
        )


def _cat(a, b):
    if a is None or b is None:
        return None
    return np.concatenate([a, b])


def _add_opt(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass
class Stats:
    """Sufficient statistics of one pass over a set of images (MODEL.md).

    All sums are float64. Two `Stats` of disjoint image sets add with ``+``;
    the per-image arrays are concatenated in order.

    Attributes
    ----------
    n_images : int
        Number of images summed, K.
    N : ndarray (P, Q)
        ``sum_k q_k``.
    S_F : ndarray (h, w)
        ``sum_k X_k ⋆ q_k`` accumulated in image space (crops).
    S_F_hat : ndarray (H, W//2+1) complex or None
        The part of S_F accumulated in the frequency domain,
        ``sum_k rfft2(X_k) * conj(rfft2(q_k))``; one inverse FFT turns it into
        image space in the M-step.
    XC : ndarray (H, W)
        ``sum_k X_k * cov_k`` with ``cov_k = q_k ⊛ 1_{h×w}``.
    SX : ndarray (H, W)
        ``sum_k X_k``.
    SXX : float
        ``sum_k ||X_k||^2``.
    loglik : float
        Soft EM: ``sum_k log p(X_k | θ)``. Hard EM: ``sum_k max_d log p(X_k, d | θ)``.
        This is the ELBO of θ with the optimal q, without the prior-smoothing term.
    positions : ndarray (K, 2) of int or None
        Most probable top-left corner of each image.
    image_loglik : ndarray (K,) or None
        Per-image terms of `loglik`.
    max_prob : ndarray (K,) or None
        Posterior probability of the most probable position.
    entropy : ndarray (K,) or None
        Posterior entropy of each image (nats; 0 for hard EM).
    """

    n_images: int
    N: np.ndarray
    S_F: np.ndarray
    XC: np.ndarray
    SX: np.ndarray
    SXX: float
    loglik: float
    S_F_hat: np.ndarray | None = None
    positions: np.ndarray | None = None
    image_loglik: np.ndarray | None = None
    max_prob: np.ndarray | None = None
    entropy: np.ndarray | None = None

    def __add__(self, other: "Stats") -> "Stats":
        if other is None or other == 0:
            return self
        return Stats(
            n_images=self.n_images + other.n_images,
            N=self.N + other.N,
            S_F=self.S_F + other.S_F,
            XC=self.XC + other.XC,
            SX=self.SX + other.SX,
            SXX=self.SXX + other.SXX,
            loglik=self.loglik + other.loglik,
            S_F_hat=_add_opt(self.S_F_hat, other.S_F_hat),
            positions=_cat(self.positions, other.positions),
            image_loglik=_cat(self.image_loglik, other.image_loglik),
            max_prob=_cat(self.max_prob, other.max_prob),
            entropy=_cat(self.entropy, other.entropy),
        )

    def __radd__(self, other):
        # lets ``sum(list_of_stats)`` work
        if other == 0 or other is None:
            return self
        return other.__add__(self)

    def without_per_image(self) -> "Stats":
        """A copy without the per-image arrays (what a reduction needs to ship)."""
        return replace(self, positions=None, image_loglik=None, max_prob=None, entropy=None)


def save_model(path, params, **extra):
    """Save θ and any extra arrays or JSON-able settings to a ``.npz`` file.

    Parameters
    ----------
    path : str or path-like or file object
    params : Params
    **extra
        Arrays are stored as they are; other values (dicts, numbers, strings)
        are stored together as JSON under ``"meta"``.
    """
    import json

    arrays = {}
    meta = {}
    for k, v in extra.items():
        if isinstance(v, np.ndarray):
            arrays[k] = v
        else:
            meta[k] = v
    np.savez(
        path,
        face=params.face,
        background=params.background,
        noise_std=np.float64(params.noise_std),
        prior=params.prior,
        meta=np.array(json.dumps(meta, default=_json_default)),
        **arrays,
    )


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def load_model(path):
    """Load what `save_model` wrote.

    Returns
    -------
    params : Params
    extra : dict
        The extra arrays, and the JSON settings merged in.
    """
    import json

    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("face", "background", "noise_std", "prior") if k not in z.files]
        if missing:
            raise ValueError(f"{path} is not an emface model: it lacks {', '.join(missing)}")
        params = Params(z["face"], z["background"], float(z["noise_std"]), z["prior"])
        extra = {k: z[k] for k in z.files if k not in ("face", "background", "noise_std", "prior", "meta")}
        if "meta" in z.files:
            extra.update(json.loads(str(z["meta"])))
    return params, extra
