"""The E-step: one chunk of images in, its posteriors' sufficient statistics out, in a single pass.

``chunk_stats(chunk, plan)`` runs the E-step on one chunk and returns its
`Stats`; `emface.engine.mstep.params_from` is the M-step. Every entry point of
emface -- soft and hard EM, batch and incremental, the estimator, the course
API, the CLI and the Dask executor -- goes through these.

Two routes compute the same formulas:

- the shared array-API kernels (`kernels`), for numpy and for torch devices;
- the fused Numba sweep (`_numba_kernels`), the CPU's fast path.

Each returns raw arrays, which `_build_stats` alone turns into `Stats`
(`_given_q_stats` builds those of the sums from given posteriors).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from .records import Stats
from . import kernels, sparse_faces
from .chunk import chunk_spectra, standardized
from .plan import resolve_backend
from .poses import Translations

__all__ = ["chunk_stats", "stats_from_q", "stats_from_positions", "Q_THRESHOLD"]

#: Posterior probabilities at or below this add nothing measurable to S_F or
#: XC and are skipped by the crop route: all of them together weigh less than
#: C·P·Q·1e-24 of an image, far below float64 rounding (1.1e-16) for any grid
#: under 10⁷ (face, position) pairs. The dense (FFT) route likewise leaves out
#: an image's faces whose every probability is at or below it (it keeps every
#: term of the faces it transforms). N, the log-likelihood and q keep every term.
Q_THRESHOLD = 1e-24


def _host(a):
    """A numpy array from a numpy array or a torch tensor (None stays None)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _build_stats(chunk, plan, raw, per_image):
    """`Stats` from the raw arrays of a backend (numpy or torch): the one place they are assembled."""
    r = {k: _host(v) for k, v in vars(raw).items()}
    ent = r["ent"]
    stats = Stats(
        n_images=chunk.n,
        N=r["N"],
        S_F=r["S_F"],
        XC=r["XC"],
        loglik=float(np.sum(r["ll"])),
        entropy_sum=float(np.sum(ent)) if np.isfinite(ent).all() else 0.0,
        N_empty=float(np.sum(r["qe"])) if np.isfinite(r["qe"]).all() else 0.0,
        S_F_hat=r["S_F_hat"],
        SX=r["SX"],
        SXX=r["SXX"],
    )
    if per_image:
        arg = r["arg"].astype(np.int64)
        labels, rows, cols = plan.pose.decode(arg)
        stats.labels = labels
        stats.positions = np.stack([rows, cols], axis=1)
        empty = labels >= plan.n_faces  # "no face" chosen: face -1 at (-1, -1)
        stats.labels[empty] = -1
        stats.positions[empty] = -1
        stats.image_loglik = r["ll"]
        stats.max_prob = r["maxp"]
        stats.entropy = ent
        stats.class_prob = r["cprob"]
        stats.near = r["near"]
        stats.chi2 = r["chi2"]
        stats.empty_prob = r["qe"]
    return stats


def chunk_stats(chunk, plan, *, output=None, per_image=True, brightness=None, fit_steps=0):
    """E-step on one chunk and its sufficient statistics.

    Parameters
    ----------
    chunk : Chunk
    plan : Plan
    output : {None, "q", "log_joint"}
        Also return, as a second value, the chunk's posterior q (n, C, P, Q) or
        its log joint ``log p(x_k, c, d | θ)`` (n, C, P, Q). With
        ``"log_joint"`` no M-step sums are computed.
    per_image : bool
        Keep per-image positions, faces, log-likelihoods, probabilities and entropies.
    brightness : (gains, offsets), optional
        Each image's gain and offset, (n, G) each: the pass of
        `emface.engine.brightness` (E-step given them, their ECM update, the
        weighted sums); the `Stats` then carry the updated ones.
    fit_steps : int
        With `brightness`: alternations of the E-step and the (a, b) update first (new images).

    Returns
    -------
    Stats, or (Stats, ndarray) when `output` is given.
    """
    if brightness is not None:
        from .brightness import brightness_pass

        # this module's crops of given posteriors sum the sparse ones (brightness imports nothing from here)
        raw, out = brightness_pass(chunk, plan, *brightness, output=output, fit_steps=fit_steps,
                                   crop_sums=(stats_from_q, Q_THRESHOLD))
    elif plan.backend == "numba":
        raw, out = _numba_pass(chunk, plan, output)
    else:
        raw, out = _array_pass(chunk, plan, output)
    stats = _build_stats(chunk, plan, raw, per_image)
    if brightness is not None:  # the weighted normalisers and the updated (a, b) ride beside the sums
        stats = replace(stats, NW=raw.NW, KW=raw.KW, gains=raw.gains, offsets=raw.offsets, ecm_gain=raw.ecm_gain)
    return (stats, _host(out)) if output is not None else stats


# ----------------------------------------------------------------------------- the shared kernels

def _host_arrays(plan):
    p = plan.params
    return SimpleNamespace(lam=plan.lam, logA=plan.logA, box_b2=plan.box_b2, face_sq=plan.face_sq,
                           background=p.background, filters=plan.filters, faces_w=plan.faces_w,
                           idft_rows=plan.idft_rows)


def _array_pass(chunk, plan, output):
    """The E-step and sums through the array-API kernels, on numpy or on a torch device."""
    if plan.backend == "torch":
        from . import torch_backend as tb

        arrs = tb.device_plan(plan)
        x = tb.to_device(chunk, plan)
        xhat = tb.device_spectra(chunk, plan, x)
    else:
        arrs = _host_arrays(plan)
        x = standardized(chunk, plan.dtype, use_numba=False)
        xhat = chunk_spectra(chunk, plan, x) if plan.route == "fft" else None
    xp = kernels.get_namespace(x)
    P, Q = plan.grid_shape
    if plan.route == "fft":
        corr = kernels.correlate_fft(xhat, arrs.filters, (P, Q), plan.image_shape, idft_rows=arrs.idft_rows,
                                     workers=plan.workers)
    else:
        corr = kernels.correlate_direct(x, xp.astype(arrs.faces_w, x.dtype), (P, Q))
    lg, base, loss = kernels.logits(corr, x, arrs.background, arrs.lam, arrs.face_sq, arrs.box_b2, arrs.logA,
                                    plan.log_const, plan.pose)
    SX, SXX = kernels.moments(x) if plan.with_moments else (None, None)
    n = chunk.n
    C = plan.n_faces
    Ch = x.shape[1]
    H, W = plan.image_shape
    h, w = plan.face_shape
    if output == "log_joint":
        out = lg + base[:, None, None, None]
        flat = xp.reshape(lg, (n, -1))
        arg = xp.argmax(flat, axis=1)
        ll = xp.take_along_axis(flat, arg[:, None], axis=1)[:, 0] + base
        nan = np.full(n, np.nan)
        near = kernels.neighbour_gains(loss, arg, plan.pose.neighbours)
        raw = SimpleNamespace(N=np.zeros(plan.pose.prior_shape(C)), S_F=np.zeros((C, Ch, h, w)), S_F_hat=None,
                              XC=np.zeros((Ch, H, W)), SX=SX, SXX=SXX, ll=ll, arg=arg, maxp=nan, ent=nan,
                              cprob=np.full((n, C), np.nan), near=near, chi2=nan, qe=nan)
        return raw, out
    q, top, arg, maxp, ent, cprob, qe = kernels.posterior(lg, plan.hard, plan.log_empty)
    near = kernels.neighbour_gains(loss, arg, plan.pose.neighbours)
    chi2 = kernels.expected_residual(q, loss, base, plan.log_const)
    if plan.hard:
        labels, rows, cols = plan.pose.decode(arg)
        N, S_F, S_F_hat, XC = kernels.accumulate(x, q, plan.pose, positions=xp.stack([rows, cols], axis=1),
                                                 labels=labels)
    else:
        if xhat is None:
            xhat = chunk_spectra(chunk, plan, x)
        N, S_F, S_F_hat, XC = kernels.accumulate(x, q, plan.pose, xhat=xhat, workers=plan.workers)
    raw = SimpleNamespace(N=N, S_F=S_F, S_F_hat=S_F_hat, XC=XC, SX=SX, SXX=SXX, ll=top + base, arg=arg,
                          maxp=maxp, ent=ent, cprob=cprob, near=near, chi2=chi2, qe=qe)
    return raw, (q if output == "q" else None)


# ----------------------------------------------------------------------------- the fused CPU route

def _n_blocks(n, workers):
    # one block of images per thread: each block owns its partial sums
    return max(1, min(n, workers))


def _partials(n, workers, n_faces, n_channels, pose, with_moments):
    """Zeroed per-thread partial sums (N, S_F, XC, SX, SXX) for a chunk, channels last as the kernels write them.

    Without moments SX is a (blocks, 1, 1, Ch) stand-in that the kernels do not touch.
    """
    H, W = pose.image_shape
    h, w = pose.face_shape
    nb = _n_blocks(n, workers)
    C, Ch = n_faces, n_channels
    HX, WX = (H, W) if with_moments else (1, 1)
    return (np.zeros((nb,) + pose.prior_shape(C)), np.zeros((nb, C, h, w, Ch)), np.zeros((nb, H, W, Ch)),
            np.zeros((nb, HX, WX, Ch)), np.zeros((nb, Ch)))


def _sum_partials(parts, with_moments):
    """The partial sums added up, with the channels moved first: N, S_F (C, Ch, h, w), XC, SX (Ch, H, W), SXX."""
    N, SF, XC = (p.sum(axis=0) for p in parts[:3])
    SF = np.ascontiguousarray(np.moveaxis(SF, -1, 1))
    XC = np.ascontiguousarray(np.moveaxis(XC, -1, 0))
    if not with_moments:
        return N, SF, XC, None, None
    SX = np.ascontiguousarray(np.moveaxis(parts[3].sum(axis=0), -1, 0))
    return N, SF, XC, SX, parts[4].sum(axis=0)


def _fused_product(xhat, filters):
    """The channel-summed spectral product by the fused kernel (see `kernels.correlate_fft`)."""
    from . import _numba_kernels as nk

    n, Ch, H, Wr = xhat.shape
    out = np.empty((n, filters.shape[0], H, Wr), dtype=np.result_type(xhat.dtype, filters.dtype))
    nk.pick("spectral_product", out.size * Ch, 2)(xhat, filters, out)
    return out


def _pair_correlations(sp, plan, skip):
    """`kernels.correlate_fft` for the (image, face) pairs not skipped (`sparse_faces`), (n, C, P, Q).

    The skipped pairs' entries are left unset: the fused pass does not read them.
    """
    from . import _numba_kernels as nk

    n, C = skip.shape
    kk, cc = np.nonzero(skip == 0)
    H, W = plan.image_shape
    P, Q = plan.grid_shape
    Wr = sp.shape[-1]

    def product(xhat, filters):
        y = np.empty((kk.size, H, Wr), dtype=np.result_type(xhat.dtype, filters.dtype))
        nk.pick("spectral_product_pairs", y.size * xhat.shape[1], 2)(xhat, filters, kk, cc, y)
        return y

    z = kernels.correlate_fft(sp, plan.filters, (P, Q), (H, W), idft_rows=plan.idft_rows, workers=plan.workers,
                              product=product)
    corr = np.empty((n, C, P, Q), dtype=z.dtype)
    corr[kk, cc] = z
    return corr


def _numba_pass(chunk, plan, output):
    from . import _numba_kernels as nk

    P, Q = plan.grid_shape
    H, W = plan.image_shape
    n, Ch = chunk.data.shape[0], chunk.data.shape[3]
    C = plan.n_faces
    xs = None
    mode = 1 if output == "log_joint" else 0
    # the FFT route (the only one with bounds) correlates in the plan's precision
    bounded = mode == 0 and sparse_faces.applies(plan, C)
    skip_eps = 1e-6 if plan.dtype == np.float32 else 1e-13
    skip, carried = sparse_faces.skip_mask(chunk, plan, skip_eps) if bounded else (None, None)
    if plan.route == "direct":
        xs = standardized(chunk, plan.dtype)
        corr = kernels.correlate_direct(xs, plan.faces_w.astype(plan.dtype), (P, Q))
    else:
        if chunk.cache.spectra is None and not (plan.cache_spectra and chunk.cache.keep_spectra):
            xs = standardized(chunk, plan.dtype)
        sp = chunk_spectra(chunk, plan, xs)
        if skip is None:
            corr = kernels.correlate_fft(sp, plan.filters, (P, Q), (H, W), idft_rows=plan.idft_rows,
                                         workers=plan.workers, product=_fused_product)
        else:
            corr = _pair_correlations(sp, plan, skip)
    # never `corr` itself, though the direct route's is float64 and contiguous: the neighbour gains read the
    # correlations after the logits are written (over them, the gains came out wrong on that route)
    out = np.empty((n,) + plan.pose.prior_shape(C))
    parts = _partials(n, plan.workers, C, Ch, plan.pose, plan.with_moments)
    dense = np.zeros(n, dtype=np.uint8)
    arg = np.empty(n, dtype=np.int64)
    ll, maxp, ent, chi2, qe = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    cprob = np.empty((n, C))
    offsets = plan.pose.neighbours
    near = np.empty((n, len(offsets)))
    Bw_last, B_last, F_last = plan.channels_last()
    rel_eps, band = (1e-6, 2.0) if corr.dtype == np.float32 else (1e-13, 40.0)
    work = n * (C * P * Q + Ch * H * W)
    have_sq = chunk.cache.sq is not None and chunk.cache.sq.shape == (n, Ch)
    sq = chunk.cache.sq if have_sq else np.empty((n, Ch))
    skip_arr = np.zeros((n, C), dtype=np.uint8) if skip is None else skip
    gain = np.full((n, C), np.nan) if carried is None else carried  # the kernel writes the faces it computes
    best, best_gain = np.empty(n, dtype=np.int64), np.empty(n)
    dense_faces = np.zeros((n, C), dtype=np.uint8)
    nk.pick("fused_pass", work, parts[0].shape[0])(
        chunk.data, float(chunk.offset), float(chunk.inv_scale), corr, out, plan.logA, plan.box_b2,
        Bw_last, B_last, plan.lam, F_last, plan.face_sq, plan.bg_sq, plan.log_const, plan.log_empty, plan.hard,
        mode, Q_THRESHOLD, plan.max_sparse_face, rel_eps, band, plan.with_moments, sq, have_sq, offsets, *parts, dense,
        arg, ll,
        maxp, ent, cprob, near, chi2, qe, skip_arr, gain, best, best_gain, dense_faces,
    )
    chunk.cache.sq = sq
    if bounded:
        sparse_faces.remember(chunk, plan, skip_eps, gain, best, best_gain)
    S_F_hat = None
    if mode == 0:
        idx = np.flatnonzero(dense)
        if idx.size:
            sp = chunk_spectra(chunk, plan, xs)
            kk, cc = np.nonzero(dense_faces[idx])
            S_F_hat = kernels.frequency_face_sums_at(sp[idx], out[idx], (H, W), kk, cc, workers=plan.workers)
            nk.pick("coverage_xc", idx.size * (C * P * Q + Ch * H * W), parts[2].shape[0])(
                chunk.data, float(chunk.offset), float(chunk.inv_scale), out, idx.astype(np.int64), *plan.face_shape,
                parts[2])
    N, S_F, XC, SX, SXX = _sum_partials(parts, plan.with_moments)
    raw = SimpleNamespace(N=N, S_F=S_F, S_F_hat=S_F_hat, XC=XC, SX=SX, SXX=SXX, ll=ll, arg=arg, maxp=maxp,
                          ent=ent, cprob=cprob, near=near, chi2=chi2, qe=qe)
    return raw, (out if output is not None else None)


# ----------------------------------------------------------------------------- sums from given posteriors

def _host_backend(backend):
    """The CPU kernels for M-step sums from given posteriors (crops are cheap on the host)."""
    backend = resolve_backend(backend)
    return resolve_backend(None) if backend == "torch" else backend


def _as_pose(face_shape, image_shape):
    """A pose object given as one, or the translations of a face of shape (h, w)."""
    return face_shape if hasattr(face_shape, "window_sums") else Translations(image_shape, face_shape)


def _given_q_stats(chunk, N, S_F, S_F_hat, XC, SX, SXX):
    return Stats(n_images=chunk.n, N=N, S_F=S_F, XC=XC, loglik=0.0, S_F_hat=S_F_hat, SX=SX, SXX=SXX)


def stats_from_positions(chunk, positions, labels, face_shape, n_faces, *, backend=None, workers=1,
                         with_moments=True):
    """M-step statistics of a chunk whose posteriors are one-hot at (labels[k], positions[k]).

    The hard-EM statistics without an E-step: sums of crops, no FFT. The
    objective fields are zero. A negative label is "no face": the image counts
    in N_empty (and in SX, SXX) only. `face_shape` is (h, w), or the pose
    object (`poses.Translations`) itself.
    """
    backend = _host_backend(backend)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    labels = np.zeros(chunk.n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    n_empty = float(np.count_nonzero(labels < 0))
    if n_empty:
        positions = np.where(labels[:, None] < 0, 0, positions)
    n, H, W, Ch = chunk.data.shape
    pose = _as_pose(face_shape, (H, W))
    h, w = pose.face_shape
    if backend != "numba":
        x = standardized(chunk, np.float64, use_numba=False)
        q = np.zeros((n,) + pose.prior_shape(n_faces))
        face = labels >= 0
        q[np.flatnonzero(face), labels[face], positions[face, 0], positions[face, 1]] = 1.0
        N, S_F, _, XC = kernels.accumulate(x, q, pose, positions=positions, labels=labels)
        SX, SXX = kernels.moments(x) if with_moments else (None, None)
        return replace(_given_q_stats(chunk, N, S_F, None, XC, SX, SXX), N_empty=n_empty)
    from . import _numba_kernels as nk

    parts = _partials(n, workers, n_faces, Ch, pose, with_moments)
    work = n * Ch * (h * w + (H * W if with_moments else 0))
    nk.pick("accumulate_at_positions", work, parts[0].shape[0])(
        chunk.data, float(chunk.offset), float(chunk.inv_scale), labels, np.ascontiguousarray(positions[:, 0]),
        np.ascontiguousarray(positions[:, 1]), with_moments, *parts)
    N, S_F, XC, SX, SXX = _sum_partials(parts, with_moments)
    return replace(_given_q_stats(chunk, N, S_F, None, XC, SX, SXX), N_empty=n_empty)


def stats_from_q(chunk, q, face_shape, *, backend=None, workers=1, with_moments=True):
    """M-step statistics of a chunk under a posterior q (n, C, P, Q) that is given, not computed.

    Used by the course API's ``run_m_step``. The objective fields are zero.
    `face_shape` is (h, w), or the pose object (`poses.Translations`) itself.
    """
    backend = _host_backend(backend)
    q = np.ascontiguousarray(q, dtype=np.float64)
    n, H, W, Ch = chunk.data.shape
    pose = _as_pose(face_shape, (H, W))
    if backend == "numba":
        from . import _numba_kernels as nk

        parts = _partials(n, workers, q.shape[1], Ch, pose, with_moments)
        nk.pick("accumulate", q.size + (n * Ch * H * W if with_moments else 0), parts[0].shape[0])(
            chunk.data, float(chunk.offset), float(chunk.inv_scale), q, Q_THRESHOLD, with_moments, *parts)
        N, S_F, XC, SX, SXX = _sum_partials(parts, with_moments)
        return _given_q_stats(chunk, N, S_F, None, XC, SX, SXX)
    x = standardized(chunk, np.float64, use_numba=False)
    N, S_F, S_F_hat, XC = kernels.accumulate(x, q, pose, workers=workers)
    SX, SXX = kernels.moments(x) if with_moments else (None, None)
    return _given_q_stats(chunk, N, S_F, S_F_hat, XC, SX, SXX)
