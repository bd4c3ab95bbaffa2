"""The single-pass statistics engine and the closed-form M-step.

``chunk_stats(chunk, plan)`` runs the E-step on one chunk of images and
returns its sufficient statistics; ``params_from(stats, ...)`` is the M-step.
Every entry point of emface -- soft and hard EM, the estimator, the course API,
the CLI and the Dask executor -- goes through these two functions.

A *chunk* is a block of raw images plus the affine map to working units
(``x' = (x - offset) * inv_scale``) and a cache of what does not change between
iterations (spectra, per-image norms, the sum of the images). A *plan* is
everything derived from θ once per iteration (log A, box sums of B², the face
spectrum, the route).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from ..model import Params, Stats
from . import costs, kernels

__all__ = [
    "Plan",
    "Chunk",
    "ChunkCache",
    "make_plan",
    "chunk_stats",
    "stats_from_q",
    "stats_from_positions",
    "params_from",
    "objective",
    "resolve_backend",
]

#: Posterior probabilities at or below this add nothing measurable to S_F or
#: XC and are skipped by the crop route: all of them together weigh less than
#: P·Q·1e-24 of an image, far below float64 rounding (1.1e-16) for any grid
#: under 10⁷ positions. N, the log-likelihood and q itself keep every term.
Q_THRESHOLD = 1e-24

_LOG_2PI = math.log(2.0 * math.pi)


def resolve_backend(backend):
    """``"numba"`` when Numba imports, else ``"numpy"``; validates explicit names (also ``"torch"``)."""
    if backend in (None, "auto"):
        try:
            from . import _numba_kernels  # noqa: F401
        except ImportError:  # pragma: no cover - numba is a dependency
            return "numpy"
        return "numba"
    if backend not in ("numba", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numba', 'numpy' or 'torch', got {backend!r}")
    return backend


@dataclass
class ChunkCache:
    """What does not change between iterations for one chunk."""

    sq: np.ndarray | None = None  # (n,) ||x'_k||²
    SX: np.ndarray | None = None  # (H, W) sum_k x'_k
    SXX: float | None = None
    spectra: np.ndarray | None = None  # (n, H, W//2+1) complex, or None when not cached
    keep_spectra: bool = True

    @property
    def nbytes(self):
        return 0 if self.spectra is None else self.spectra.nbytes


@dataclass
class Chunk:
    """A block of raw images with its map to working units and its cache."""

    data: np.ndarray  # (n, H, W), raw dtype, C-contiguous
    offset: float = 0.0
    inv_scale: float = 1.0
    cache: ChunkCache = field(default_factory=ChunkCache)

    @property
    def n(self):
        return self.data.shape[0]


@dataclass
class Plan:
    """Everything the E-step needs from θ, prepared once per iteration."""

    params: Params
    hard: bool
    dtype: np.dtype
    backend: str
    route: str
    workers: int
    logA: np.ndarray
    box_b2: np.ndarray
    face_sq: float
    bg_sq: float
    inv2s2: float
    log_const: float
    fhat_conj: np.ndarray | None
    idft_rows: np.ndarray | None
    max_sparse: int
    cache_spectra: bool
    device: str = "cpu"

    @property
    def grid_shape(self):
        return self.logA.shape

    @property
    def image_shape(self):
        return self.params.background.shape

    @property
    def face_shape(self):
        return self.params.face.shape


def make_plan(params, *, hard=False, dtype=np.float64, backend=None, route=None,
              workers=1, cache_spectra=True, device="cpu"):
    """Prepare one iteration's E-step from θ.

    Parameters
    ----------
    params : Params
        Current θ in working units.
    hard : bool
        Hard (MAP) EM: one-hot posteriors.
    dtype : {np.float64, np.float32}
        Precision of the correlations (statistics are always float64).
    backend : {"auto", "numba", "numpy"}
    route : {None, "fft", "direct"}
        Correlation route; None lets the cost model choose.
    workers : int
        Threads for the FFTs and the fused kernels.
    cache_spectra : bool
        Whether chunks may keep their image spectra between iterations.
    device : str
        The torch device for ``backend="torch"`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
    """
    dtype = np.dtype(dtype)
    H, W = params.background.shape
    h, w = params.face.shape
    P, Q = H - h + 1, W - w + 1
    backend = resolve_backend(backend)
    if backend == "torch":
        route = "fft"  # the torch kernels correlate through the FFT only
    elif route is None:
        route = costs.choose_correlation_route((H, W), (h, w), cached=cache_spectra)
    elif route not in ("fft", "direct"):
        raise ValueError(f"route must be None, 'fft' or 'direct', got {route!r}")
    s2 = params.noise_std ** 2
    with np.errstate(divide="ignore"):
        logA = np.log(params.prior)
    B = params.background
    box_b2 = kernels.box_sums(B * B, (h, w))
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    fhat = kernels.face_spectrum(params.face, (H, W), cdtype) if route == "fft" else None
    idft = kernels.partial_idft_matrix(P, H, cdtype) if (route == "fft" and costs.use_partial_idft(P, H)) else None
    return Plan(
        params=params,
        hard=bool(hard),
        dtype=dtype,
        backend=backend,
        route=route,
        workers=int(workers),
        logA=logA,
        box_b2=box_b2,
        face_sq=float(np.dot(params.face.ravel(), params.face.ravel())),
        bg_sq=float(np.dot(B.ravel(), B.ravel())),
        inv2s2=1.0 / (2.0 * s2),
        log_const=-0.5 * H * W * (_LOG_2PI + math.log(s2)),
        fhat_conj=fhat,
        idft_rows=idft,
        max_sparse=costs.max_sparse_positions((H, W), (h, w), cached=cache_spectra),
        cache_spectra=bool(cache_spectra),
        device=str(device),
    )


# ----------------------------------------------------------------------------- helpers

def _standardized(chunk, dtype, backend):
    x = chunk.data
    if backend == "numba" and x.dtype != np.bool_:
        from . import _numba_kernels as nk

        out = np.empty(x.shape, dtype=dtype)
        nk.standardize(x, chunk.offset, chunk.inv_scale, out)
        return out
    out = np.asarray(x, dtype=dtype)
    if chunk.offset != 0.0 or chunk.inv_scale != 1.0:
        out = (out - dtype.type(chunk.offset)) * dtype.type(chunk.inv_scale)
    elif out is x:
        out = out.copy()
    return out


def _ensure_moments(chunk, backend, xs=None):
    c = chunk.cache
    if c.SX is not None:
        return
    if xs is None or xs.dtype != np.float64:
        xs = _standardized(chunk, np.dtype(np.float64), backend)
    x64 = xs.astype(np.float64, copy=False)
    c.sq = np.einsum("nij,nij->n", x64, x64)
    c.SX = x64.sum(axis=0)
    c.SXX = float(c.sq.sum())


def _spectra(chunk, plan, xs=None):
    """Image spectra of the chunk in the plan's precision, from the cache when kept."""
    c = chunk.cache
    cdtype = np.complex64 if plan.dtype == np.float32 else np.complex128
    if c.spectra is not None and c.spectra.dtype == cdtype:
        return c.spectra
    if xs is None:
        xs = _standardized(chunk, plan.dtype, plan.backend)
    sp = kernels.spectra(xs.astype(plan.dtype, copy=False), plan.workers)
    if plan.cache_spectra and c.keep_spectra:
        c.spectra = sp
    return sp


def _n_blocks(n, workers):
    # one block of images per thread: each block owns its partial sums
    return max(1, min(n, workers))


def _correlations(chunk, plan):
    """x' ⋆ F for the chunk by the plan's route; also returns the standardized chunk when made."""
    P, Q = plan.grid_shape
    if plan.route == "direct":
        xs = _standardized(chunk, plan.dtype, plan.backend)
        return kernels.correlate_direct(xs, plan.params.face.astype(plan.dtype), (P, Q)), xs
    xs = None
    if chunk.cache.spectra is None and not (plan.cache_spectra and chunk.cache.keep_spectra):
        xs = _standardized(chunk, plan.dtype, plan.backend)
    sp = _spectra(chunk, plan, xs)
    corr = kernels.correlate_fft(sp, plan.fhat_conj, (P, Q), plan.image_shape,
                                 idft_rows=plan.idft_rows, workers=plan.workers)
    return corr, xs


# ----------------------------------------------------------------------------- E-step

def chunk_stats(chunk, plan, *, output=None, per_image=True):
    """E-step on one chunk and its sufficient statistics.

    Parameters
    ----------
    chunk : Chunk
    plan : Plan
    output : {None, "q", "log_joint"}
        Also return, as a second value, the chunk's posterior q (n, P, Q) or its
        log joint ``log p(x_k, d | θ)`` (n, P, Q). With ``"log_joint"`` no
        M-step sums are computed.
    per_image : bool
        Keep per-image positions, log-likelihoods, max probabilities and entropies.

    Returns
    -------
    Stats, or (Stats, ndarray) when `output` is given.
    """
    if plan.backend == "numba":
        stats, out = _chunk_stats_numba(chunk, plan, output)
    elif plan.backend == "torch":
        from .torch_kernels import chunk_stats_torch

        stats, out = chunk_stats_torch(chunk, plan, plan.device, output)
    else:
        stats, out = _chunk_stats_numpy(chunk, plan, output)
    if not per_image:
        stats = stats.without_per_image()
    return (stats, out) if output is not None else stats


def _finish_stats(chunk, plan, N, S_F, S_F_hat, XC, ll, arg, maxp, ent):
    P, Q = plan.grid_shape
    c = chunk.cache
    positions = np.stack([arg // Q, arg % Q], axis=1).astype(np.int64)
    return Stats(
        n_images=chunk.n,
        N=N,
        S_F=S_F,
        XC=XC,
        SX=c.SX.copy(),
        SXX=float(c.SXX),
        loglik=float(np.sum(ll)),
        S_F_hat=S_F_hat,
        positions=positions,
        image_loglik=ll,
        max_prob=maxp,
        entropy=ent,
    )


def _chunk_stats_numba(chunk, plan, output):
    from . import _numba_kernels as nk

    P, Q = plan.grid_shape
    H, W = plan.image_shape
    h, w = plan.face_shape
    n = chunk.n
    corr, xs = _correlations(chunk, plan)
    _ensure_moments(chunk, plan.backend, xs)
    if corr.dtype == np.float64 and corr.flags.c_contiguous:
        out = corr
    else:
        out = np.empty((n, P, Q), dtype=np.float64)
    N_part, SF_part, XC_part = _partials(chunk, (h, w), plan.workers)
    dense = np.zeros(n, dtype=np.uint8)
    arg = np.empty(n, dtype=np.int64)
    ll = np.empty(n)
    maxp = np.empty(n)
    ent = np.empty(n)
    mode = 1 if output == "log_joint" else 0
    B = plan.params.background
    rel_eps, band = (1e-6, 2.0) if corr.dtype == np.float32 else (1e-13, 40.0)
    nk.fused_pass(
        chunk.data, float(chunk.offset), float(chunk.inv_scale), corr, out, plan.logA,
        plan.box_b2, B, plan.params.face, plan.face_sq, plan.bg_sq, plan.inv2s2, plan.log_const,
        plan.hard, mode, Q_THRESHOLD, plan.max_sparse, rel_eps, band, N_part, SF_part, XC_part, dense,
        arg, ll, maxp, ent,
    )
    S_F_hat = None
    if mode == 0:
        idx = np.flatnonzero(dense)
        if idx.size:
            sp = _spectra(chunk, plan, xs)
            qd = out[idx]
            qhat = sfft.rfft2(qd.astype(plan.dtype, copy=False), s=(H, W), axes=(-2, -1), workers=plan.workers)
            S_F_hat = (sp[idx] * np.conj(qhat)).sum(axis=0, dtype=np.complex128)
            nk.coverage_xc(chunk.data, float(chunk.offset), float(chunk.inv_scale), out, idx.astype(np.int64), XC_part)
    stats = _finish_stats(chunk, plan, N_part.sum(0), SF_part.sum(0), S_F_hat, XC_part.sum(0), ll, arg, maxp, ent)
    return stats, (out if output is not None else None)


def _chunk_stats_numpy(chunk, plan, output):
    P, Q = plan.grid_shape
    h, w = plan.face_shape
    xs = _standardized(chunk, plan.dtype, plan.backend)
    _ensure_moments(chunk, plan.backend, xs)
    if plan.route == "direct":
        corr = kernels.correlate_direct(xs, plan.params.face.astype(plan.dtype), (P, Q))
    else:
        sp = _spectra(chunk, plan, xs)
        corr = kernels.correlate_fft(sp, plan.fhat_conj, (P, Q), plan.image_shape,
                                     idft_rows=plan.idft_rows, workers=plan.workers)
    B = plan.params.background
    logits, rss = kernels.logits_from_parts(corr, xs, B, plan.face_sq, plan.box_b2, plan.logA, plan.inv2s2)
    base = plan.log_const - rss * plan.inv2s2
    n = chunk.n
    if output == "log_joint":
        flat = logits.reshape(n, -1)
        arg = np.argmax(flat, axis=1)
        ll = flat[np.arange(n), arg] + base
        out = logits + base[:, None, None]
        nanv = np.full(n, np.nan)
        z = np.zeros((P, Q))
        stats = _finish_stats(chunk, plan, z, np.zeros((h, w)), None, np.zeros(plan.image_shape), ll, arg, nanv, nanv)
        return stats, out
    q, top, arg, maxp, ent = kernels.posterior(logits, plan.hard)
    ll = top + base
    if plan.hard:
        pos = np.stack([arg // Q, arg % Q], axis=1)
        N, S_F, S_F_hat, XC = kernels.accumulate_from_q(xs, q, (h, w), positions=pos)
    else:
        sp = chunk.cache.spectra if chunk.cache.spectra is not None and plan.route == "fft" else None
        N, S_F, S_F_hat, XC = kernels.accumulate_from_q(xs, q, (h, w), xhat=sp, workers=plan.workers)
    stats = _finish_stats(chunk, plan, N, S_F, S_F_hat, XC, ll, arg, maxp, ent)
    return stats, (q if output is not None else None)


def _host_backend(backend):
    """The CPU kernels for M-step sums from given posteriors (crops are cheap on the host)."""
    backend = resolve_backend(backend)
    return resolve_backend(None) if backend == "torch" else backend


def _partials(chunk, face_shape, workers):
    """Zeroed per-thread partial sums (N, S_F, XC) for a chunk."""
    h, w = face_shape
    H, W = chunk.data.shape[-2:]
    nblk = _n_blocks(chunk.n, workers)
    return np.zeros((nblk, H - h + 1, W - w + 1)), np.zeros((nblk, h, w)), np.zeros((nblk, H, W))


def _given_q_stats(chunk, N, S_F, S_F_hat, XC):
    c = chunk.cache
    return Stats(n_images=chunk.n, N=N, S_F=S_F, XC=XC, SX=c.SX.copy(), SXX=float(c.SXX), loglik=0.0,
                 S_F_hat=S_F_hat)


def stats_from_positions(chunk, positions, face_shape, *, backend=None, workers=1):
    """M-step statistics of a chunk whose posteriors are one-hot at `positions` (n, 2).

    The hard-EM statistics without an E-step: sums of crops, no FFT.
    """
    backend = _host_backend(backend)
    positions = np.asarray(positions, dtype=np.int64)
    if backend != "numba":
        H, W = chunk.data.shape[-2:]
        q = np.zeros((chunk.n, H - face_shape[0] + 1, W - face_shape[1] + 1))
        q[np.arange(chunk.n), positions[:, 0], positions[:, 1]] = 1.0
        return stats_from_q(chunk, q, face_shape, backend=backend, workers=workers)
    from . import _numba_kernels as nk

    _ensure_moments(chunk, backend)
    N_part, SF_part, XC_part = _partials(chunk, face_shape, workers)
    nk.crops_at_positions(chunk.data, float(chunk.offset), float(chunk.inv_scale),
                          np.ascontiguousarray(positions[:, 0]), np.ascontiguousarray(positions[:, 1]),
                          N_part, SF_part, XC_part)
    return _given_q_stats(chunk, N_part.sum(0), SF_part.sum(0), None, XC_part.sum(0))


def stats_from_q(chunk, q, face_shape, *, backend=None, workers=1):
    """M-step statistics of a chunk under a posterior q that is given, not computed.

    Used by the course API's ``run_m_step``. The objective fields are zero.

    Parameters
    ----------
    chunk : Chunk
    q : ndarray (n, P, Q)
    face_shape : (h, w)
    """
    backend = _host_backend(backend)
    q = np.ascontiguousarray(q, dtype=np.float64)
    if backend == "numba":
        from . import _numba_kernels as nk

        _ensure_moments(chunk, backend)
        N_part, SF_part, XC_part = _partials(chunk, face_shape, workers)
        nk.crops_from_q(chunk.data, float(chunk.offset), float(chunk.inv_scale), q, Q_THRESHOLD,
                        N_part, SF_part, XC_part)
        return _given_q_stats(chunk, N_part.sum(0), SF_part.sum(0), None, XC_part.sum(0))
    xs = _standardized(chunk, np.dtype(np.float64), backend)
    _ensure_moments(chunk, backend, xs)
    N, S_F, S_F_hat, XC = kernels.accumulate_from_q(xs, q, face_shape, workers=workers)
    return _given_q_stats(chunk, N, S_F, S_F_hat, XC)


# ----------------------------------------------------------------------------- M-step

@dataclass
class MStepInfo:
    """What the M-step had to decide on its own."""

    n_uncovered: int = 0  # background pixels the face always covered (kept from before)
    s_floored: bool = False


def params_from(stats, previous, *, face_shape, prior_smoothing=0.0, noise_floor=1e-12):
    """The closed-form M-step: A, F, B, s² from the sufficient statistics (MODEL.md).

    Parameters
    ----------
    stats : Stats
        Summed over all images.
    previous : Params or None
        The parameters of the E-step; their background is kept where the face
        covered a pixel in every image (no background evidence there).
    face_shape : (h, w)
    prior_smoothing : float
        Dirichlet pseudo-count α ≥ 0 added to every position of A.
    noise_floor : float
        Smallest s returned.

    Returns
    -------
    Params, MStepInfo
    """
    h, w = face_shape
    K = float(stats.n_images)
    H, W = stats.SX.shape
    P, Q = H - h + 1, W - w + 1
    info = MStepInfo()
    alpha = float(prior_smoothing)
    A = (stats.N + alpha) / (K + alpha * P * Q)
    S_F = stats.S_F
    if stats.S_F_hat is not None:
        S_F = S_F + sfft.irfft2(stats.S_F_hat, s=(H, W))[:h, :w]
    F = S_F / K
    C = kernels.coverage(stats.N, (h, w))
    free = K - C
    ok = free > 1e-9 * K
    B = np.empty((H, W))
    np.divide(stats.SX - stats.XC, free, out=B, where=ok)
    if not ok.all():
        info.n_uncovered = int((~ok).sum())
        if previous is not None:
            B[~ok] = previous.background[~ok]
        else:
            B[~ok] = (stats.SX / K)[~ok]
    sse = (
        stats.SXX
        - 2.0 * np.vdot(B, stats.SX)
        + K * np.vdot(B, B)
        + K * np.vdot(F, F)
        - 2.0 * np.vdot(F, S_F)
        + 2.0 * np.vdot(B, stats.XC)
        - np.vdot(B * B, C)
    )
    s2 = sse / (K * H * W)
    floor2 = float(noise_floor) ** 2
    if not np.isfinite(s2):
        raise FloatingPointError(
            "the noise variance became non-finite in the M-step; the data or the "
            "parameters hold values too large for float64"
        )
    if s2 < floor2:
        s2 = floor2
        info.s_floored = True
    return Params(F, B, math.sqrt(s2), A), info


def objective(stats, params, prior_smoothing=0.0):
    """The objective EM increases: the log-likelihood (soft) or the MAP joint (hard),
    plus ``α · Σ log A`` when prior smoothing α > 0 (a Dirichlet prior on A)."""
    val = stats.loglik
    if prior_smoothing > 0:
        with np.errstate(divide="ignore"):
            val = val + prior_smoothing * float(np.sum(np.log(params.prior)))
    return val
