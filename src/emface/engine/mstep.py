"""The closed-form M-step and the objectives, from sufficient statistics (MODEL.md).

One place for the formulas of A, F_c, B and s², for the expected sum of squared
residuals, for the objective EM reports, and for the free energy of any
posterior under any θ (what incremental EM increases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from ._formulas import gaussian_log_norm
from .brightness import weighted_normalisers
from .poses import Translations
from .records import Params

__all__ = ["MStepInfo", "params_from", "prior_from_counts", "predictive_prior", "face_sums", "expected_sse",
           "objective", "free_energy", "misfit_z", "NOISE_MODELS"]

NOISE_MODELS = ("shared", "per_channel")

@dataclass
class MStepInfo:
    """What the M-step had to decide on its own."""

    n_uncovered: int = 0      # background pixels the face always covered (kept from before)
    s_floored: bool = False
    empty_faces: tuple = ()   # faces with no images (kept from before)


def face_sums(stats):
    """``S_F,c = Σ_k X_k ⋆ q_k(c)`` in image space, (C, Ch, h, w): crops plus the frequency-domain part."""
    S_F = stats.S_F
    if stats.S_F_hat is not None:
        h, w = S_F.shape[-2:]
        H, W = stats.XC.shape[-2:]
        S_F = S_F + sfft.irfft2(stats.S_F_hat, s=(H, W), axes=(-2, -1))[..., :h, :w]
    return S_F


def prior_from_counts(N, n_images, alpha, N_empty=None):
    """``A = (N + α) / (K + α·cells)``: the prior from the expected counts N (C, P, Q) of K images.

    With α = 0 the maximum-likelihood A; with α > 0 the mode of A's posterior
    under a Dirichlet(α + 1) prior on every (face, position): the M-step's
    prior smoothing (MODEL.md, "M-step from sufficient statistics"). With the
    "no face" class (`N_empty`, its expected count, not None) A and π_∅ share
    the simplex: each is its count plus α over ``K + α·(C·P·Q + 1)``, since
    ``Σ N + N_∅ = K``.

    Returns
    -------
    A : ndarray (C, P, Q)
    pi_empty : float or None
        π_∅, None without the "no face" class.
    """
    N = np.asarray(N, dtype=np.float64)
    den = float(n_images) + alpha * (N.size + (N_empty is not None))
    pi0 = None if N_empty is None else (max(float(N_empty), 0.0) + alpha) / den
    return (N + alpha) / den, pi0


def predictive_prior(prior, n_images, prior_smoothing=0.0, empty_weight=None):
    """The prior of a NEW image's (face, position): the posterior predictive of A (MODEL.md).

    The fitted A is the mode of A's posterior under a Dirichlet(α + 1) prior
    (α: the fit's `prior_smoothing`; 0 is the maximum likelihood, a flat
    Dirichlet). A new image's (face, position) is drawn from A itself, so its
    prior is that posterior's mean, ``(N + α + 1) / (K + (α + 1)·cells)``
    (Laplace's rule of succession at α = 0), where ``N = A·(K + α·cells) - α``
    are the expected counts of the K training images the fitted A encodes
    (cells: C·P·Q, plus one for the "no face" class of weight `empty_weight`).
    Nothing a new image can show is then forbidden because no training image
    happened to show it.

    Returns
    -------
    A : ndarray (C, P, Q)
    pi_empty : float or None
    """
    A = np.asarray(prior, dtype=np.float64)
    K = float(n_images)
    alpha = float(prior_smoothing)
    scale = K + alpha * (A.size + (empty_weight is not None))
    N = np.maximum(A * scale - alpha, 0.0)
    N_empty = None if empty_weight is None else max(float(empty_weight) * scale - alpha, 0.0)
    return prior_from_counts(N, K, alpha + 1.0, N_empty)


def _pose(stats, pose):
    """The pose object of the sums: the one given, or the translations of their face over their frame."""
    return Translations(stats.XC.shape[-2:], stats.S_F.shape[-2:]) if pose is None else pose


def expected_sse(stats, faces, background, S_F=None, cover=None, pose=None):
    """``E_q[Σ_k ||X_k - μ_(c,d)||²]`` per channel, (Ch,), for the posteriors summed in `stats`.

    ``SXX - 2<B,SX> + K||B||² + Σ_c (N_c||F_c||² - 2<F_c,S_F,c>) + 2<B,XC> - <B²,C>``,
    valid for any F and B, not only the M-step's. `pose` (default: the
    translations of the face) gives the coverage C when `cover` is not given.
    """
    if S_F is None:
        S_F = face_sums(stats)
    # N_c, C and K; with brightness the a_k²-weighted ones, per channel (`brightness.weighted_normalisers`)
    Nc, cover, K = weighted_normalisers(stats, background.shape[0], _pose(stats, pose), cover)
    B = background
    return (
        stats.SXX
        - 2.0 * np.einsum("dij,dij->d", B, stats.SX)
        + K * np.einsum("dij,dij->d", B, B)
        + np.einsum("cd,cdij->d", Nc, faces * faces)
        - 2.0 * np.einsum("cdij,cdij->d", faces, S_F)
        + 2.0 * np.einsum("dij,dij->d", B, stats.XC)
        - np.einsum("dij,dij->d", B * B, np.broadcast_to(cover, B.shape))
    )


def misfit_z(chi2, n_values):
    """Each image's misfit z-score ``(chi2 - n) / sqrt(2 n)`` (MODEL.md, "Frames that do not fit").

    Parameters
    ----------
    chi2 : ndarray (K,)
        ``E_q[Σ_ch ||X_k,ch - μ_ch||² / s_ch²]`` (`Stats.chi2`): each channel
        weighed by its own 1/s_ch², so with one s per channel too it is about
        χ²_n for an image the model explains.
    n_values : int
        n = H·W·Ch, the values per image.

    Returns
    -------
    ndarray (K,): about N(0, 1) for images that follow the model; large for
    images it does not explain.
    """
    n = float(n_values)
    return (np.asarray(chi2, dtype=np.float64) - n) / math.sqrt(2.0 * n)


def params_from(stats, previous, *, prior_smoothing=0.0, noise_floor=1e-12, noise="shared", empty_frames=None,
                pose=None):
    """The closed-form M-step: A, F_c, B, s² from the sufficient statistics (MODEL.md).

    Parameters
    ----------
    stats : Stats
        Summed over all images (with SX and SXX).
    previous : Params or None
        The parameters of the E-step. A face with no images (N_c = 0) keeps its
        previous value, and so does the background where the faces covered a
        pixel in every image (no background evidence there).
    prior_smoothing : float
        Dirichlet pseudo-count α ≥ 0 added to every (face, position) of A.
    noise_floor : float
        Smallest s returned.
    noise : {"shared", "per_channel"}
        One s for all channels (the note's model), or one per channel.
    empty_frames : bool, optional
        Whether the model has the "no face" class (its weight π_∅ is then
        updated with A); None: as `previous` has. The "no face" images add to
        B and s through SX and SXX alone (their coverage is 0), so those
        formulas keep their form.
    pose : pose object, optional
        The pose axis (`poses.Translations`) whose coverage the background's
        update needs; default: the translations of the face over the frame.

    Returns
    -------
    Params, MStepInfo
    """
    if stats.SX is None or stats.SXX is None:
        raise ValueError("the M-step needs SX and SXX: run the pass with with_moments=True")
    C, Ch, h, w = stats.S_F.shape
    K = float(stats.n_images)
    H, W = stats.SX.shape[-2:]
    info = MStepInfo()
    alpha = float(prior_smoothing)
    if empty_frames is None:
        empty_frames = previous is not None and previous.empty_weight is not None
    # incremental EM swaps blocks' sums in and out: N may carry -1e-16 where it should be 0
    N = np.maximum(stats.N, 0.0)
    A, pi0 = prior_from_counts(N, K, alpha, stats.N_empty if empty_frames else None)
    S_F = face_sums(stats)
    Nc = N.reshape(C, -1).sum(axis=1)
    # a face no image chose keeps its last value: S_F,c = 0 there, so no NaN
    full = Nc > 1e-12 * max(K, 1.0)
    Nw, cover, Kw = weighted_normalisers(stats, Ch, _pose(stats, pose))  # a_k²-weighted with brightness
    full &= (Nw > 0).all(axis=1)
    F = np.empty_like(S_F)
    F[full] = S_F[full] / Nw[full, :, None, None]
    if not full.all():
        info.empty_faces = tuple(int(c) for c in np.flatnonzero(~full))
        F[~full] = previous.faces[~full] if previous is not None else 0.0
    B = _background_from(stats, cover, Kw, previous, info)
    sse = expected_sse(stats, F, B, S_F, cover, pose)
    s2 = _noise_from(sse, K, H, W, noise, noise_floor, info)
    return Params(F, B, np.sqrt(s2), A, pi0), info


def _background_from(stats, cover, Kw, previous, info):
    """``B = (SX - XC) / (K - C)``, (Ch, H, W): the background's closed form from the sums and the coverage C.

    `Kw` is K, or with brightness the a_k²-weighted K per channel (Ch,). A
    pixel the faces covered in every image (no background evidence) keeps
    `previous`'s background (``SX / K`` without `previous`), counted in
    ``info.n_uncovered``.
    """
    Ch, H, W = stats.SX.shape
    Kw = np.asarray(Kw, dtype=np.float64).reshape(-1, 1, 1)
    free = np.broadcast_to(Kw - cover, (Ch, H, W))
    ok = (free > 1e-9 * Kw).all(axis=0)
    B = np.empty((Ch, H, W))
    np.divide(stats.SX - stats.XC, free, out=B, where=np.broadcast_to(ok, B.shape))
    if not ok.all():
        info.n_uncovered = int((~ok).sum())
        B[:, ~ok] = (previous.background if previous is not None else stats.SX / float(stats.n_images))[:, ~ok]
    return B


def _noise_from(sse, K, H, W, noise, noise_floor, info):
    """s², (Ch,): the noise's closed form from the expected SSE per channel of K images of H×W.

    One s² for all channels (``noise="shared"``) or one per channel; at
    least ``noise_floor²`` (``info.s_floored`` says when that bound bit).
    """
    Ch = sse.shape[0]
    if noise == "per_channel":
        s2 = sse / (K * H * W)
    elif noise == "shared":
        s2 = np.full(Ch, sse.sum() / (K * H * W * Ch))
    else:
        raise ValueError(f"noise must be one of {list(NOISE_MODELS)}, got {noise!r}")
    if not np.isfinite(s2).all():
        raise FloatingPointError(
            f"the noise variance became non-finite in the M-step (s² = {s2}); the data or the "
            "parameters hold values too large for float64"
        )
    floor2 = float(noise_floor) ** 2
    if (s2 < floor2).any():
        s2 = np.maximum(s2, floor2)
        info.s_floored = True
    return s2


def _smoothing_term(prior_smoothing, *priors):
    """``α Σ log p`` over every probability of `priors` (A, and π_∅ or the angles' ρ): the Dirichlet prior's term."""
    if prior_smoothing > 0:
        with np.errstate(divide="ignore"):
            total = 0.0
            for p in priors:
                total += float(np.sum(np.log(p)))
            return prior_smoothing * total
    return 0.0


def _priors(params):
    """The probabilities the Dirichlet prior smooths: A, and π_∅ with the "no face" class."""
    return (params.prior,) if params.empty_weight is None else (params.prior, params.empty_weight)


def _expected_log(N, log_p):
    """``Σ N log p`` over the cells with N > 0 (a cell no image uses adds 0, even where p = 0)."""
    return float(np.sum(np.where(N > 0, N * log_p, 0.0)))


def _gaussian_term(sse, s2, n_pixels):
    """``E_q[log p(X | c, d, θ)]``: the Gaussian log normaliser of `n_pixels` per channel minus ``Σ SSE / 2s²``."""
    return float(gaussian_log_norm(n_pixels, s2)) - float(np.sum(sse / (2.0 * s2)))


def objective(stats, params, prior_smoothing=0.0):
    """The objective EM increases, for the θ whose E-step gave `stats`.

    The log-likelihood (soft EM) or the MAP joint (hard EM), plus
    ``α · Σ log A`` when prior smoothing α > 0 (a Dirichlet prior on A).
    """
    return stats.loglik + _smoothing_term(prior_smoothing, *_priors(params))


def free_energy(stats, params, prior_smoothing=0.0, pose=None):
    """The free energy ``E_q[log p(X, c, d | θ)] + H(q)`` of the posteriors summed in `stats`, under any θ.

    With the posteriors of θ itself it equals `objective`; incremental EM,
    which keeps older posteriors for most images, never decreases it.
    """
    K = float(stats.n_images)
    H, W = params.image_shape
    s2 = params.noise_std ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        logA = np.log(params.prior)
        prior_term = _expected_log(stats.N, logA)
        if stats.N_empty > 0:  # the "no face" class: N_∅ log π_∅ (-inf without the class)
            prior_term += float(stats.N_empty * np.log(params.empty_weight or 0.0))
    sse = expected_sse(stats, params.faces, params.background, pose=pose)
    gauss = _gaussian_term(sse, s2, K * H * W)
    return prior_term + gauss + stats.entropy_sum + _smoothing_term(prior_smoothing, *_priors(params))
