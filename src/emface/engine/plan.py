"""The plan: everything the E-step derives from θ once per iteration, and the backend it runs on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .records import Params
from . import costs, kernels
from ._formulas import gaussian_log_norm
from .poses import Translations, pose_of

__all__ = ["Plan", "make_plan", "resolve_backend", "BACKENDS"]

BACKENDS = ("auto", "numba", "numpy", "torch")


def resolve_backend(backend):
    """``"numba"`` when Numba imports, else ``"numpy"``; validates explicit names (also ``"torch"``)."""
    if backend in (None, "auto"):
        try:
            from . import _numba_kernels  # noqa: F401
        except ImportError:  # pragma: no cover - numba is a dependency
            return "numpy"
        return "numba"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return backend


@dataclass
class Plan:
    """Everything the E-step needs from θ, prepared once per iteration (working units).

    The channel weights ``lam = 1 / (2 s_ch²)`` are folded into the filters,
    faces, background and constants, so the kernels never divide by s.
    """

    params: Params
    pose: Translations       # the pose axis (`poses`): the grid, the window sums, the neighbours
    hard: bool
    dtype: np.dtype
    backend: str
    route: str
    workers: int
    cache_spectra: bool
    device: str
    with_moments: bool
    lam: np.ndarray          # (Ch,)
    logA: np.ndarray         # (C, P, Q)
    log_empty: float         #          log π_∅ of the "no face" class; -inf without it
    box_b2: np.ndarray       # (P, Q)   pose.window_sums(Σ λ B²)
    face_sq: np.ndarray      # (C,)     Σ_ch λ ||F_c,ch||²
    bg_sq: float             #          Σ_ch λ ||B_ch||²
    log_const: float         #          -HW/2 Σ_ch log(2π s_ch²)
    faces_w: np.ndarray      # (C, Ch, h, w)  λ·F
    filters: np.ndarray | None  # (C, Ch, H, W//2+1)  conj(rfft2(λ·F))
    idft_rows: np.ndarray | None
    max_sparse: int
    #: the fused route's crops-or-FFT threshold per face an image reaches (`costs.max_sparse_positions` of one face)
    max_sparse_face: int = 1
    #: per-backend copies made on first use: the channels-last arrays of the
    #: fused kernels, and the arrays on a torch device (`torch_backend.device_plan`)
    device_arrays: object = field(default=None, repr=False, compare=False)
    _channels_last: tuple | None = field(default=None, repr=False, compare=False)
    #: what `sparse_faces` derives from this θ (its reference, and its changes from earlier θ's)
    sparse_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def channels_last(self):
        """(λ·B, B, F) channels last, (H, W, Ch) and (C, h, w, Ch), as the fused CPU kernels read them."""
        if self._channels_last is None:
            B = self.params.background
            self._channels_last = (np.ascontiguousarray(np.moveaxis(B * self.lam[:, None, None], 0, -1)),
                                   np.ascontiguousarray(np.moveaxis(B, 0, -1)),
                                   np.ascontiguousarray(np.moveaxis(self.params.faces, 1, -1)))
        return self._channels_last

    #: (P, Q), the pose's grid; (H, W); (h, w); C
    grid_shape = property(lambda self: self.pose.shape)
    image_shape = property(lambda self: self.params.image_shape)
    face_shape = property(lambda self: self.params.face_shape)
    n_faces = property(lambda self: self.params.n_faces)


def make_plan(params, *, hard=False, dtype=np.float64, backend=None, route=None, workers=1,
              cache_spectra=True, device="cpu", with_moments=True, pose=None):
    """Prepare one iteration's E-step from θ.

    Parameters
    ----------
    params : Params
        Current θ in working units.
    hard : bool
        Hard (MAP) EM: one-hot posteriors.
    dtype : {np.float64, np.float32}
        Precision of the correlations (statistics are always float64).
    backend : {"auto", "numba", "numpy", "torch"}
        ``numba``: the fused CPU kernels; ``numpy`` and ``torch``: the shared
        array-API kernels (torch on `device`).
    route : {None, "fft", "direct"}
        Correlation route; None lets the cost model choose (torch: always FFT).
    workers : int
        Threads for the FFTs and the fused kernels.
    cache_spectra : bool
        Whether chunks may keep their image spectra between iterations.
    device : str
        The torch device for ``backend="torch"`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
    with_moments : bool
        Also compute ``Σ_k X_k`` and ``Σ_k ||X_k||²`` (constant: an executor asks once).
    pose : pose object, optional
        The pose axis (`poses.Translations`, as the model makes it); default: θ's translations.
    """
    dtype = np.dtype(dtype)
    C, Ch, h, w = params.faces.shape
    H, W = params.image_shape
    pose = pose_of(params) if pose is None else pose
    if params.prior.shape != pose.prior_shape(C):
        raise ValueError(f"the prior's shape must be {pose.prior_shape(C)} for {pose!r}, got {params.prior.shape}")
    P = pose.shape[0]
    backend = resolve_backend(backend)
    if backend == "torch":
        route = "fft"  # the torch kernels correlate through the FFT only
    elif route is None:
        route = costs.choose_correlation_route((H, W), (h, w), cached=cache_spectra, n_faces=C, n_channels=Ch)
    elif route not in ("fft", "direct"):
        raise ValueError(f"route must be None, 'fft' or 'direct', got {route!r}")
    s2 = params.noise_std ** 2
    lam = 1.0 / (2.0 * s2)
    with np.errstate(divide="ignore"):
        logA = np.log(params.prior)
        log_empty = -math.inf if not params.empty_weight else math.log(params.empty_weight)
    B = params.background
    lamc = lam[:, None, None]
    faces_w = params.faces * lamc
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    fft = route == "fft"
    return Plan(
        params=params,
        pose=pose,
        hard=bool(hard),
        dtype=dtype,
        backend=backend,
        route=route,
        workers=int(workers),
        cache_spectra=bool(cache_spectra),
        device=str(device),
        with_moments=bool(with_moments),
        lam=lam,
        logA=logA,
        log_empty=float(log_empty),
        box_b2=pose.window_sums(np.sum(lamc * B * B, axis=0)),
        face_sq=np.einsum("cdij,cdij->c", faces_w, params.faces),
        bg_sq=float(np.sum(lamc * B * B)),
        log_const=float(gaussian_log_norm(H * W, s2)),
        faces_w=faces_w,
        filters=kernels.face_filters(faces_w, (H, W), cdtype) if fft else None,
        idft_rows=kernels.partial_idft_matrix(P, H, cdtype) if (fft and costs.use_partial_idft(P, H)) else None,
        max_sparse=costs.max_sparse_positions((H, W), (h, w), cached=cache_spectra, n_faces=C, n_channels=Ch),
        max_sparse_face=costs.max_sparse_positions((H, W), (h, w), cached=cache_spectra, n_faces=1, n_channels=Ch),
    )
