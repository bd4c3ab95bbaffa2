"""The two small records that flow through emface: parameters and statistics.

`Params` holds θ = (F, B, s, A) for C faces and Ch channels. `Stats` holds the
sufficient statistics of one pass over (part of) the data and adds with ``+``,
so chunks, threads, blocks of incremental EM and Dask workers can each compute
their share and be summed. Nothing here knows about files, screens or restarts.

Internally every array is *channel first*, with the class axis in front:

=============  ==================  =========================================
θ              shape               meaning
=============  ==================  =========================================
``faces``      (C, Ch, h, w)       the faces F_c
``background`` (Ch, H, W)          the background B
``noise_std``  (Ch,)               s per channel (all equal for one shared s)
``prior``      (C, P, Q)           A over (face, top-left corner); sums to 1
                                   (to 1 - π_∅ with a "no face" class)
=============  ==================  =========================================

With ``empty_frames`` (MODEL.md, "Frames that do not fit") θ also holds
``empty_weight`` = π_∅, the weight of the "no face" class ``X_k = B + noise``;
None means the model has no such class.

One grey face is C = Ch = 1. The estimator shows users the channels-last layouts
``(h, w)``, ``(C, h, w)``, ``(h, w, Ch)`` and ``(C, h, w, Ch)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

__all__ = ["Params", "Stats", "StatsSum", "PER_IMAGE"]


def _as_faces(face):
    F = np.asarray(face, dtype=np.float64)
    if F.ndim == 2:  # one grey face (h, w)
        return F[None, None]
    if F.ndim == 3:  # grey faces (C, h, w)
        return F[:, None]
    if F.ndim == 4:
        return F
    raise ValueError(f"faces must have shape (C, Ch, h, w), got {F.shape}")


@dataclass
class Params:
    """Model parameters θ = (F, B, s, A) in the engine's layout (see the module's docstring).

    For convenience a grey one-face θ may be given as ``Params(F (h, w), B (H, W),
    s, A (P, Q))`` and grey faces as ``(C, h, w)``; they are stored in the full layout.

    Attributes
    ----------
    faces : ndarray (C, Ch, h, w)
    background : ndarray (Ch, H, W)
    noise_std : ndarray (Ch,)
    prior : ndarray (C, P, Q)
    empty_weight : float or None
        π_∅, the weight of the "no face" class (A and π_∅ sum to 1); None: no such class.
    """

    faces: np.ndarray
    background: np.ndarray
    noise_std: np.ndarray
    prior: np.ndarray
    empty_weight: float | None = None
    #: brightness (MODEL.md, "Brightness that changes from frame to frame"): each training image's
    #: gain a_k and offset b_k in working units, (K, G) with G = 1 or Ch; None: the note's model
    gains: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __post_init__(self):
        self.faces = _as_faces(self.faces)
        B = np.asarray(self.background, dtype=np.float64)
        self.background = B[None] if B.ndim == 2 else B
        Ch = self.background.shape[0]
        s = np.asarray(self.noise_std, dtype=np.float64).reshape(-1)
        self.noise_std = np.full(Ch, float(s[0])) if s.size == 1 else s
        A = np.asarray(self.prior, dtype=np.float64)
        self.prior = A[None] if A.ndim == 2 else A
        if self.empty_weight is not None:
            self.empty_weight = float(self.empty_weight)
        if self.gains is not None:
            self.gains = np.asarray(self.gains, dtype=np.float64).reshape(len(self.gains), -1)
            self.offsets = np.asarray(self.offsets, dtype=np.float64).reshape(self.gains.shape)
        if self.faces.shape[1] != Ch or self.noise_std.shape != (Ch,) or self.prior.shape[0] != self.faces.shape[0]:
            raise ValueError(
                f"inconsistent parameter shapes: faces {self.faces.shape}, background {self.background.shape}, "
                f"noise_std {self.noise_std.shape}, prior {self.prior.shape}"
            )

    @property
    def n_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def n_channels(self) -> int:
        return self.background.shape[0]

    @property
    def face_shape(self) -> tuple:
        return tuple(self.faces.shape[2:])

    @property
    def image_shape(self) -> tuple:
        return tuple(self.background.shape[1:])

    @property
    def grid_shape(self) -> tuple:
        return tuple(self.prior.shape[1:])

    @property
    def weights(self) -> np.ndarray:
        """The class weights π_c = Σ_d A(c, d), shape (C,)."""
        return self.prior.sum(axis=(1, 2))

    def copy(self) -> "Params":
        return Params(self.faces.copy(), self.background.copy(), self.noise_std.copy(), self.prior.copy(),
                      self.empty_weight, *_copies(self.gains, self.offsets))

    def affine(self, scale: float, offset: float) -> "Params":
        """Parameters of the data ``scale * X + offset``: F, B map affinely, s by ``|scale|``."""
        gains, offsets = _copies(self.gains, self.offsets)
        if gains is not None:  # scale·(a μ + b) + offset = a (scale μ + offset) + scale·b + offset (1 - a)
            offsets = scale * offsets + offset * (1.0 - gains)
        return Params(scale * self.faces + offset, scale * self.background + offset,
                      abs(scale) * self.noise_std, self.prior.copy(), self.empty_weight, gains, offsets)


def _copies(*arrays):
    return tuple(None if a is None else np.array(a, copy=True) for a in arrays)


#: the per-image fields of `Stats`, concatenated (not summed) by ``+``
PER_IMAGE = ("positions", "labels", "image_loglik", "max_prob", "entropy", "class_prob", "near", "chi2",
             "empty_prob", "gains", "offsets")


@dataclass
class Stats:
    """Sufficient statistics of one pass over a set of images (MODEL.md).

    All sums are float64. Two `Stats` of disjoint image sets add with ``+``
    (many with `StatsSum`); the per-image arrays are concatenated in order.

    Attributes
    ----------
    n_images : int
        Number of images summed, K.
    N : ndarray (C, P, Q)
        ``Σ_k q_k(c, d)``.
    S_F : ndarray (C, Ch, h, w)
        ``Σ_k X_k ⋆ q_k(c, ·)`` accumulated in image space (crops).
    XC : ndarray (Ch, H, W)
        ``Σ_k X_k ∘ cov_k`` with ``cov_k = (Σ_c q_k(c, ·)) ⊛ 1_{h×w}``.
    loglik : float
        Soft EM: ``Σ_k log p(X_k | θ)``. Hard EM: ``Σ_k max_{c,d} log p(X_k, c, d | θ)``.
        This is the free energy of θ with its own optimal q, without the
        prior-smoothing term.
    entropy_sum : float
        ``Σ_k H(q_k)`` (0 for hard EM): with the sums above it gives the free
        energy of these posteriors under any θ (`emface.engine.free_energy`).
    N_empty : float
        ``Σ_k q_k(∅)``: the images' weight on the "no face" class (0 without it).
    S_F_hat : complex ndarray (C, Ch, H, W//2+1) or None
        The part of S_F accumulated in the frequency domain,
        ``Σ_k rfft2(X_k) · conj(rfft2(q_k(c)))``; the M-step turns it into image
        space with one inverse FFT per class and channel.
    SX : ndarray (Ch, H, W) or None
        ``Σ_k X_k``; constant, so the executor computes it on its first pass only.
    SXX : ndarray (Ch,) or None
        ``Σ_k ||X_k||²`` per channel.
    positions : ndarray (K, 2) of int or None
        Top-left corner of the most probable (face, position) of each image;
        (-1, -1) where "no face" is the most probable.
    labels : ndarray (K,) of int or None
        The face of that most probable (face, position); -1 for "no face".
    image_loglik : ndarray (K,) or None
        Per-image terms of `loglik`.
    max_prob : ndarray (K,) or None
        Posterior probability of the most probable (face, position).
    entropy : ndarray (K,) or None
        Posterior entropy of each image over (face, position) (nats; 0 for hard EM).
    class_prob : ndarray (K, C) or None
        Posterior probability of each face, positions summed out.
    near : ndarray (K, 8) or None
        The log-likelihood gain, prior left out, of moving each image's face
        from its most probable corner to each neighbouring corner
        (`emface.engine.kernels.NEAR_OFFSETS`); -inf off the grid. The shift
        escape reads its moves from it without another pass; -inf where "no face" is the most probable.
    chi2 : ndarray (K,) or None
        ``E_q[Σ_ch ||X_k,ch - μ_ch||² / s_ch²]``, the expected residual of
        each image under its posterior (MODEL.md, "Frames that do not fit"):
        about χ²_n, n = H·W·Ch, for an image the model explains
        (`emface.engine.misfit_z` makes it a z-score).
    empty_prob : ndarray (K,) or None
        Posterior probability of "no face" (0 without that class).
    """

    n_images: int
    N: np.ndarray
    S_F: np.ndarray
    XC: np.ndarray
    loglik: float
    entropy_sum: float = 0.0
    N_empty: float = 0.0
    S_F_hat: np.ndarray | None = None
    SX: np.ndarray | None = None
    SXX: np.ndarray | None = None
    positions: np.ndarray | None = None
    labels: np.ndarray | None = None
    image_loglik: np.ndarray | None = None
    max_prob: np.ndarray | None = None
    entropy: np.ndarray | None = None
    class_prob: np.ndarray | None = None
    near: np.ndarray | None = None
    chi2: np.ndarray | None = None
    empty_prob: np.ndarray | None = None
    #: brightness (`emface.engine.brightness`): ``NW = Σ_k a_k,ch² q_k(c, d)`` (C, Ch, P, Q) and
    #: ``KW = Σ_k a_k,ch²`` (Ch,), the normalisers of F and B; each image's updated (a, b), (K, G)
    NW: np.ndarray | None = None
    KW: np.ndarray | None = None
    #: brightness: Σ_k of what each image's (a, b) update raised its expected log-likelihood
    ecm_gain: float = 0.0
    gains: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __add__(self, other: "Stats") -> "Stats":
        if other is None or (isinstance(other, int) and other == 0):
            return self
        total = StatsSum()
        total.add(self)
        total.add(other)
        return total.result()

    def __radd__(self, other):
        # lets ``sum(list_of_stats)`` work
        if other is None or (isinstance(other, int) and other == 0):
            return self
        return other.__add__(self)

    def __sub__(self, other: "Stats") -> "Stats":
        """Remove the sums of a subset of the images (incremental EM swaps a block's share)."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in PER_IMAGE:
                out[f.name] = None
            elif f.name in ("S_F_hat", "SX", "SXX", "NW", "KW"):
                if b is None:
                    out[f.name] = a
                elif a is None:
                    out[f.name] = -b
                else:
                    out[f.name] = a - b
            else:
                out[f.name] = a - b
        return Stats(**out)

    def without_per_image(self) -> "Stats":
        """A copy without the per-image arrays (what a reduction needs to ship)."""
        return replace(self, **{k: None for k in PER_IMAGE})


class StatsSum:
    """Adds the `Stats` of disjoint image sets as they come, in order: ``a + b + c + ...`` in one pass.

    The one place where `Stats` are added (``+`` is a sum of two). The sums
    are added in place, in order, and the per-image arrays are concatenated
    once, in `result`: folding ``total = total + s`` over n chunks would copy
    the growing per-image arrays n times. Sums absent from one set (None:
    S_F_hat, SX, SXX) count as zero; a per-image array absent from one set is
    absent from the total.
    """

    def __init__(self):
        self._sums = None
        self._per_image = []

    def add(self, stats):
        """Add the `Stats` of the next image set (None adds nothing)."""
        if stats is None:
            return
        self._per_image.append([getattr(stats, k) for k in PER_IMAGE])
        if self._sums is None:
            # a copy: in-place sums never touch the caller's arrays
            self._sums = {f.name: _copy(getattr(stats, f.name)) for f in fields(stats) if f.name not in PER_IMAGE}
            return
        for name, acc in self._sums.items():
            v = getattr(stats, name)
            if v is None:
                continue
            if acc is None:
                self._sums[name] = _copy(v)
            elif isinstance(acc, np.ndarray):
                acc += v
            else:
                self._sums[name] = acc + v

    def result(self):
        """The total `Stats`, or None when nothing was added."""
        if self._sums is None:
            return None
        per_image = {}
        for i, k in enumerate(PER_IMAGE):
            vals = [row[i] for row in self._per_image]
            per_image[k] = None if any(v is None for v in vals) else (vals[0] if len(vals) == 1 else np.concatenate(vals))
        return Stats(**self._sums, **per_image)


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else v
