"""The EM driver: the one loop of emface.

It iterates E-step passes and closed-form M-steps until the objective settles,
restarts from several starting points, escapes shifted optima, reports progress
through callbacks and writes checkpoints. It knows nothing about files formats
or screens: an executor does the passes, callbacks do the reporting.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np

from .engine import objective, params_from
from .model import Params

__all__ = ["EMSettings", "EMRun", "run_em", "escape_shifts", "fit_restarts", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective settled (as in scikit-learn)."""


@dataclass
class EMSettings:
    """What EM optimises and when it stops.

    Attributes
    ----------
    hard : bool
        Hard (MAP) EM instead of soft EM.
    prior_smoothing : float
        Dirichlet pseudo-count α added to every position of A in the M-step.
    max_iter : int
        Most M-steps per run.
    tol : float
        Stop when the objective changes by less than this.
    tol_per_image : bool
        Whether `tol` applies to the mean per-image objective (scikit-learn) or
        to the total (the course API).
    noise_floor : float
        Smallest s, in working units.
    shift_escape : bool
        After convergence, try the face shifted by up to `max_shift` pixels.
    max_shift : int
    """

    hard: bool = False
    prior_smoothing: float = 0.0
    max_iter: int = 100
    tol: float = 1e-3
    tol_per_image: bool = True
    noise_floor: float = 1e-6
    shift_escape: bool = False
    max_shift: int = 2
    max_escape_rounds: int = 3


@dataclass
class EMRun:
    """One EM run: its parameters, history and final statistics (working units).

    `objectives[t]` is the objective of the parameters after iteration t
    (``objectives[0]`` is the start); `objective` is that of `params`.
    """

    params: Params
    objective: float
    objectives: list
    n_iter: int
    converged: bool
    stats: object = None
    init_index: int = 0
    n_uncovered: int = 0
    escapes: list = field(default_factory=list)

    @property
    def lower_bounds(self):
        """Objective after each iteration (the start excluded), per image."""
        return self.objectives[1:]


def _per_image(value, stats):
    return value / max(stats.n_images, 1)


def _check_finite(value, params):
    if math.isnan(value):
        raise FloatingPointError(
            "the EM objective became NaN; the data or the starting parameters hold "
            f"values that float64 cannot handle (noise_std={params.noise_std!r})"
        )


def run_em(executor, params, settings, *, callback=None, run_index=0, history=None, stats=None):
    """Run EM from `params` until the objective settles or `max_iter` M-steps.

    Parameters
    ----------
    executor : LocalExecutor or DaskExecutor
    params : Params
        Starting point, working units.
    settings : EMSettings
    callback : callable(dict), optional
        Called after every pass with ``run``, ``iter``, ``objective`` (per
        image), ``params``, ``history`` and ``stats``.
    run_index : int
        Passed through to the callback (the restart's number).
    history : list, optional
        Objectives of an earlier part of this run, when resuming.
    stats : Stats, optional
        The E-step statistics of `params` when already computed.

    Returns
    -------
    EMRun
    """
    a = settings.prior_smoothing
    face_shape = params.face.shape
    if stats is None:
        stats = executor.pass_stats(params, hard=settings.hard)
    obj = _per_image(objective(stats, params, a), stats)
    _check_finite(obj, params)
    history = list(history) if history else []
    if not history:
        history.append(obj)
    start_iter = len(history) - 1
    n_uncov = 0
    converged = False
    it = start_iter
    if callback is not None:
        callback(dict(run=run_index, iter=it, objective=obj, params=params, history=history, stats=stats))
    while it < settings.max_iter:
        new_params, info = params_from(stats, params, face_shape=face_shape, prior_smoothing=a,
                                       noise_floor=settings.noise_floor)
        n_uncov = info.n_uncovered
        new_stats = executor.pass_stats(new_params, hard=settings.hard)
        new_obj = _per_image(objective(new_stats, new_params, a), new_stats)
        _check_finite(new_obj, new_params)
        it += 1
        history.append(new_obj)
        change = new_obj - obj
        params, stats, obj = new_params, new_stats, new_obj
        if callback is not None:
            callback(dict(run=run_index, iter=it, objective=obj, params=params, history=history, stats=stats))
        tol_change = change if settings.tol_per_image else change * stats.n_images
        if abs(tol_change) < settings.tol:
            converged = True
            break
    if settings.max_iter == 0 or (it == start_iter and start_iter >= settings.max_iter):
        converged = False
    return EMRun(params=params, objective=obj, objectives=history, n_iter=it, converged=converged,
                 stats=stats, init_index=run_index, n_uncovered=n_uncov)


def _shift_prior(A, di, dj):
    """A'(p) = A(p + δ); positions that come from outside the grid get the mean level."""
    P, Q = A.shape
    out = np.full_like(A, A.mean())
    src_r = slice(max(di, 0), P + min(di, 0))
    dst_r = slice(max(-di, 0), P + min(-di, 0))
    src_c = slice(max(dj, 0), Q + min(dj, 0))
    dst_c = slice(max(-dj, 0), Q + min(-dj, 0))
    out[dst_r, dst_c] = A[src_r, src_c]
    return out / out.sum()


def _hard_score(stats, params, H, W):
    """Objective of hard assignments after their own M-step: the fitted noise level decides."""
    K = stats.n_images
    s2 = params.noise_std ** 2
    return -0.5 * K * H * W * (math.log(2 * math.pi * s2) + 1.0)


def _offsets(P, Q, m):
    return [(di, dj) for di in range(-m, m + 1) for dj in range(-m, m + 1)
            if (di, dj) != (0, 0) and abs(di) < P and abs(dj) < Q]


def _inside(pos, P, Q):
    return (pos[:, 0] >= 0) & (pos[:, 0] < P) & (pos[:, 1] >= 0) & (pos[:, 1] < Q)


def _otsu_upper(g):
    """The upper class of the best two-class split of the values g (Otsu's threshold)."""
    order = np.sort(g)
    n = len(order)
    if n < 2 or order[0] == order[-1]:
        return None
    csum = np.cumsum(order)
    k = np.arange(1, n)
    m0 = csum[:-1] / k
    m1 = (csum[-1] - csum[:-1]) / (n - k)
    between = k * (n - k) * (m1 - m0) ** 2
    cut = order[int(np.argmax(between))]
    return g > cut


def _escape_candidates(executor, run, settings):
    """Moves to try from a converged run: (label, positions, prior).

    - global shifts: every image moves by -δ, |δ| <= max_shift, the prior moves along;
    - partial shifts: for each neighbouring offset δ, the images whose second
      choice lies in direction δ (by Otsu's split of the log-joint gains, and the
      better half) move by +δ -- the escape from optima where the images split
      into two groups a pixel apart and F is their blend.
    """
    H, W = executor.image_shape
    h, w = run.params.face.shape
    P, Q = H - h + 1, W - w + 1
    pos = run.stats.positions
    for di, dj in _offsets(P, Q, settings.max_shift):
        newpos = pos - np.array([di, dj])
        if _inside(newpos, P, Q).mean() < 0.9:
            continue
        newpos[:, 0] = np.clip(newpos[:, 0], 0, P - 1)
        newpos[:, 1] = np.clip(newpos[:, 1], 0, Q - 1)
        yield ("shift", (di, dj)), newpos, _shift_prior(run.params.prior, di, dj)
    near = _offsets(P, Q, 1)
    if not near or len(pos) < 2:
        return
    # rank by likelihood alone: a learned A that collapsed onto the current
    # positions would otherwise hide every move
    flat = Params(run.params.face, run.params.background, run.params.noise_std,
                  np.full((P, Q), 1.0 / (P * Q)))
    values = executor.gather_log_joint(flat, pos, [(0, 0)] + near)
    for t, (di, dj) in enumerate(near, start=1):
        gain = values[:, t] - values[:, 0]
        ok = np.isfinite(gain)
        if ok.sum() < 2:
            continue
        subsets = []
        upper = _otsu_upper(gain[ok])
        if upper is not None:
            subsets.append(upper)
        subsets.append(gain[ok] >= np.median(gain[ok]))
        idx = np.flatnonzero(ok)
        for sub in subsets:
            moved = idx[sub]
            if 0 < len(moved) < len(pos):
                newpos = pos.copy()
                newpos[moved] += np.array([di, dj])
                yield ("split", (di, dj), len(moved)), newpos, run.params.prior


def escape_shifts(executor, run, settings, *, callback=None):
    """Escape shifted optima: try moving the face by small offsets, keep what raises the objective.

    Each candidate (see `_escape_candidates`) is a new set of hard positions;
    the face, background and noise are re-estimated from them by one M-step
    (which fills a revealed strip of the face from the data and hands an
    uncovered strip back to the background). The candidate whose refitted
    noise is smallest is evaluated by a full E-step and kept if the objective
    rises, and EM continues from it. Repeats while moves help.

    Returns
    -------
    EMRun
    """
    H, W = executor.image_shape
    h, w = run.params.face.shape
    a = settings.prior_smoothing
    for _ in range(settings.max_escape_rounds):
        if not run.converged:  # only from a settled optimum, within the iteration budget
            break
        base_stats = executor.stats_from_positions(run.stats.positions)
        base_params, _ = params_from(base_stats, run.params, face_shape=(h, w), prior_smoothing=a,
                                     noise_floor=settings.noise_floor)
        best_score = _hard_score(base_stats, base_params, H, W)
        best = None
        for label, newpos, prior in _escape_candidates(executor, run, settings):
            st = executor.stats_from_positions(newpos)
            cand, _ = params_from(st, run.params, face_shape=(h, w), prior_smoothing=a,
                                  noise_floor=settings.noise_floor)
            score = _hard_score(st, cand, H, W)
            if score > best_score:
                best_score = score
                if a > 0:  # the smoothed M-step's A has full support already
                    A = cand.prior
                else:
                    # the moved images' new positions may have A ~ 0 under the old
                    # prior: give the candidate both the old support and the new counts
                    A = 0.5 * prior + 0.5 * st.N / st.n_images
                best = (label, Params(cand.face, cand.background, cand.noise_std, A))
        if best is None:
            break
        label, cand = best
        cand_stats = executor.pass_stats(cand, hard=settings.hard)
        cand_obj = _per_image(objective(cand_stats, cand, a), cand_stats)
        if not cand_obj > run.objective:
            break
        history = run.objectives + [cand_obj]
        new = run_em(executor, cand, settings, callback=callback, run_index=run.init_index,
                     history=history, stats=cand_stats)
        new.escapes = run.escapes + [label]
        if not new.objective > run.objective:
            break
        run = new
    return run


def fit_restarts(executor, starts, settings, *, callback=None, history=None):
    """EM from each starting point (with shift escape when enabled); keep the best.

    Parameters
    ----------
    executor : LocalExecutor or DaskExecutor
    starts : iterable of Params or of callables returning Params
    settings : EMSettings
    callback : callable(dict), optional
    history : list, optional
        Objectives of an earlier part of the first run, which this call continues.

    Returns
    -------
    best : EMRun
    runs : list of EMRun
        Every run, in order (the history of each is kept for reports).

    Raises
    ------
    KeyboardInterrupt
        Re-raised after an interruption, with the best run so far attached as
        ``exc.emface_best`` (or None) and all runs as ``exc.emface_runs``.
    """
    runs = []
    best = None
    current = {"run": None}

    def _track(info):
        current["run"] = info
        if callback is not None:
            callback(info)

    try:
        with executor.running():
            best, runs = _restarts(executor, starts, settings, _track, history, runs)
    except KeyboardInterrupt as exc:
        best = max(runs, key=lambda r: r.objective) if runs else None
        info = current["run"]
        if info is not None:
            partial = EMRun(params=info["params"], objective=info["objective"],
                            objectives=list(info["history"]), n_iter=info["iter"], converged=False,
                            stats=info["stats"], init_index=info["run"])
            runs.append(partial)
            if best is None or partial.objective > best.objective:
                best = partial
        if best is not None:
            best.converged = False
        exc.emface_best = best
        exc.emface_runs = runs
        raise
    return best, runs


def _restarts(executor, starts, settings, callback, history, runs):
    best = None
    for i, start in enumerate(starts):
        params = start() if callable(start) else start
        r = run_em(executor, params, settings, callback=callback, run_index=i,
                   history=history if i == 0 else None)
        if settings.shift_escape:
            r = escape_shifts(executor, r, settings, callback=callback)
        runs.append(r)
        if best is None or r.objective > best.objective:
            best = r
    return best, runs


def atomic_save(path, save_fn):
    """Write through a temporary file in the same folder, then rename it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
