"""The EM driver: the one loop of emface.

It calls a model's steps -- ``e_step``, ``m_step``, ``objective`` -- until the
objective settles, restarts from several starting points, lets the model's
moves (escapes from its local optima) take over after convergence, reports
progress through callbacks and keeps the best run. It knows nothing about the
shape of the parameters or screens: a model does the mathematics, an
executor does the passes, callbacks do the reporting, as
``sklearn.mixture.BaseMixture.fit_predict`` calls ``_e_step`` and ``_m_step``.

Two schedules share the loop:

- ``batch``: every iteration is one E-step over all images and one M-step;
  once EM crawls, the steps are over-relaxed (the model's ``extrapolate``),
  each stretched step kept only if it raises the objective;
- ``incremental`` (Neal and Hinton, 1998): the first sweeps visit the images
  block by block and do an M-step after each block, with each block's latest
  sums swapped into the total -- the free energy never decreases -- then batch
  iterations finish, so the answer is the batch answer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EMSettings", "EMRun", "run_em", "fit_restarts", "ConvergenceWarning", "ALGORITHMS"]

ALGORITHMS = ("auto", "batch", "incremental")


#: over-relaxation: η grows by this factor per accepted step, up to ETA_MAX; it starts once a step
#: gains more than _SLOW times what the previous one did (EM converging slowly)
_ETA_GROWTH = 1.5
ETA_MAX = 16.0
_SLOW = 0.5


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective settled (as in scikit-learn)."""


@dataclass
class EMSettings:
    """When EM stops, and how it schedules its passes.

    Attributes
    ----------
    max_iter : int
        Most iterations per run (an incremental sweep counts as one).
    tol : float
        Stop when the mean per-image objective changes by less than this
        (the course API divides its total tolerance by K).
    algorithm : {"batch", "incremental"}
    block_chunks : list of list of int
        Incremental EM: the chunks of each block.
    incremental_sweeps : int
        Incremental sweeps at most before the batch iterations; they stop
        sooner when one raises the free energy by less than `tol` per image.
    accelerate : bool
        Adaptive over-relaxation (Salakhutdinov and Roweis, 2003) of the batch
        iterations once EM crawls: the step from θ to its M-step is stretched
        by η > 1 (the model's ``extrapolate``), η grows while the stretched
        steps raise the objective, and a step that does not is replaced by the
        plain EM step (one more pass). The objective still never decreases,
        and the fixed point is EM's.
    """

    max_iter: int = 100
    tol: float = 1e-3
    algorithm: str = "batch"
    block_chunks: list = field(default_factory=list)
    incremental_sweeps: int = 50
    accelerate: bool = True


@dataclass
class EMRun:
    """One EM run: its parameters, history and final statistics (working units).

    `objectives[t]` is the objective after iteration t (``objectives[0]`` is
    the start's, -inf when incremental EM began without spending a pass on
    it); `objective` is that of `params`.
    """

    params: object
    objective: float
    objectives: list
    n_iter: int
    converged: bool
    stats: object = None
    init_index: int = 0
    n_uncovered: int = 0
    moves: list = field(default_factory=list)
    accel: tuple = (1.0, None)


def _check_finite(value, params):
    if math.isnan(value):
        raise FloatingPointError(
            "the EM objective became NaN; the data or the starting parameters hold "
            f"values that float64 cannot handle (noise_std={params.noise_std!r})"
        )


def _incremental_sweeps(executor, model, params, settings, callback, run_index, history):
    """Neal and Hinton's incremental EM: an M-step after every block, the block's sums swapped in.

    The first sweep grows the total block by block (each M-step then fits F,
    B and s to the images seen so far, and keeps the start's A: an A fitted to
    part of the stack is zero wherever only unseen images have their faces,
    and a zero of A is never left again); later sweeps replace a block's old
    sums by its new ones and update A too. Each block keeps only its
    image-independent sums, compactly (its frequency-domain part already
    turned into image space). Blocks are visited in a new random order every
    sweep, so that images stored in order (the frames of a video) do not pull
    θ one way for a whole sweep. Sweeps stop once one raises the free energy
    by less than `tol` per image.

    Returns (params, iterations done).
    """
    blocks = settings.block_chunks
    K = executor.n_images
    kept = [None] * len(blocks)
    total = None
    sweeps = 0
    t0 = time.perf_counter()
    processed = 0
    order_rng = np.random.default_rng(run_index)
    for _ in range(settings.incremental_sweeps):
        if len(history) - 1 >= settings.max_iter:
            break
        for b in order_rng.permutation(len(blocks)):
            # the first sweep's M-steps fit the blocks seen so far: they need those blocks' own SX and SXX
            # (a later run of the same executor knows the whole stack's and would not compute them)
            st = model.compact(model.e_step(executor, params, chunks=blocks[b], per_image=False,
                                            with_moments=True if kept[b] is None else None))
            if kept[b] is None:
                total = st if total is None else total + st
            else:
                moments = (total.SX, total.SXX)  # constant: the block's new sums do not carry them
                total = total - kept[b] + st
                total.SX, total.SXX = moments
            kept[b] = st
            processed += st.n_images
            # first sweep: A waits for every block (see the docstring)
            params, _ = model.m_step(total, params, update_prior=sweeps > 0)
            if callback is not None:
                callback(dict(run=run_index, iter=len(history) - 1, block=int(b), n_blocks=len(blocks),
                              images=processed, seconds=time.perf_counter() - t0,
                              objective=model.free_energy(total, params) / total.n_images,
                              params=params, history=history, stats=None))
        if sweeps == 0:
            executor.remember_moments(total.SX, total.SXX)
        sweeps += 1
        obj = model.free_energy(total, params) / K
        _check_finite(obj, params)
        change = obj - history[-1]
        history.append(obj)
        if callback is not None:
            callback(dict(run=run_index, iter=len(history) - 1, objective=obj, params=params, history=history,
                          stats=None))
        if change < settings.tol:
            break
    return params, sweeps


def run_em(executor, model, params, settings, *, callback=None, run_index=0, history=None, stats=None,
           accel=None):
    """Run EM from `params` until the objective settles or `max_iter` iterations.

    Parameters
    ----------
    executor : LocalExecutor or DaskExecutor
    model : an object with ``e_step``, ``m_step``, ``objective``, and
        ``extrapolate`` (over-relaxation), ``free_energy`` and ``compact``
        (incremental EM), such as `emface.model.FaceMixture`
    params : starting point, working units
    settings : EMSettings
    callback : callable(dict), optional
        Called after every pass with ``run``, ``iter``, ``objective`` (per
        image), ``params``, ``history`` and ``stats``; during incremental
        sweeps also after every block, with ``block``, ``n_blocks``, ``images``
        and ``seconds``.
    run_index : int
        Passed through to the callback (the restart's number).
    history : list, optional
        Objectives of an earlier part of this run, when resuming.
    stats : Stats, optional
        The E-step statistics of `params` when already computed.
    accel : (float, float or None), optional
        The over-relaxation's state (η, last gain) when resuming, so that a
        resumed run takes the steps the uninterrupted one would have.

    Returns
    -------
    EMRun
    """
    history = list(history) if history else []
    K = executor.n_images
    swept = False
    if (settings.algorithm == "incremental" and stats is None and not history and settings.max_iter > 0
            and len(settings.block_chunks) > 1):
        history.append(-math.inf)  # the start's objective is not computed: no pass is spent on it
        params, n = _incremental_sweeps(executor, model, params, settings, callback, run_index, history)
        swept = n > 0
    if stats is None:
        stats = model.e_step(executor, params)
    obj = model.objective(stats, params) / K
    _check_finite(obj, params)
    if not history:
        history.append(obj)
    elif swept:
        # the batch objective of the θ the sweeps ended with: never below their free energy
        history[-1] = obj
    start_iter = len(history) - 1
    n_uncov = 0
    converged = False
    it = start_iter
    if callback is not None:
        callback(dict(run=run_index, iter=it, objective=obj, params=params, history=history, stats=stats,
                      accel=accel or (1.0, None)))
    eta, last_change = accel or (1.0, None)
    while it < settings.max_iter:
        new_params, info = model.m_step(stats, params)
        n_uncov = info.n_uncovered
        new_stats = None
        if eta > 1.0:
            # over-relaxed step: kept only if it raises the objective, else the plain EM step
            cand = model.extrapolate(params, new_params, eta)
            cand_stats = model.e_step(executor, cand)
            cand_obj = model.objective(cand_stats, cand) / K
            if np.isfinite(cand_obj) and cand_obj > obj:
                new_params, new_stats, new_obj = cand, cand_stats, cand_obj
                eta = min(eta * _ETA_GROWTH, ETA_MAX)
            else:
                eta = 1.0
        if new_stats is None:
            new_stats = model.e_step(executor, new_params)
            new_obj = model.objective(new_stats, new_params) / K
        _check_finite(new_obj, new_params)
        it += 1
        history.append(new_obj)
        change = new_obj - obj
        params, stats, obj = new_params, new_stats, new_obj
        if abs(change) < settings.tol:
            # a model with a sparse search may first want one more full pass (rotations: all angles)
            converged = getattr(model, "confirm_converged", lambda: True)()
        elif (settings.accelerate and eta == 1.0 and last_change is not None and 0 < change
                and change > _SLOW * last_change):
            eta = _ETA_GROWTH  # EM crawls: each step gains nearly what the last did; try longer ones
        last_change = change
        if callback is not None:
            callback(dict(run=run_index, iter=it, objective=obj, params=params, history=history, stats=stats,
                          accel=(eta, last_change)))
        if converged:
            break
    if settings.max_iter == 0 or (it == start_iter and start_iter >= settings.max_iter):
        converged = False
    return EMRun(params=params, objective=obj, objectives=history, n_iter=it, converged=converged,
                 stats=stats, init_index=run_index, n_uncovered=n_uncov, accel=(eta, last_change))


def fit_restarts(executor, model, starts, settings, *, callback=None, history=None, should_restart=None,
                 accel=None):
    """EM from each starting point, then the model's moves; keep the best run.

    Parameters
    ----------
    executor : LocalExecutor or DaskExecutor
    model : the model (see `run_em`); ``model.moves()`` lists its escapes,
        each ``move(executor, model, run, resume) -> EMRun`` where
        ``resume(params, stats, history)`` continues EM from a candidate
    starts : iterable of params or of callables returning params
    settings : EMSettings
    callback : callable(dict), optional
    history : list, optional
        Objectives of an earlier part of the first run, which this call continues.
    accel : tuple, optional
        That earlier part's over-relaxation state (see `run_em`).
    should_restart : callable(list of EMRun) -> bool, optional
        Asked before every start after the first: False ends the restarts
        (the model's judgement whether the runs so far look like the optimum).

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
    current = {"run": None}

    def _track(info):
        if info.get("stats") is not None or "block" not in info:
            current["run"] = info
        if callback is not None:
            callback(info)

    try:
        with executor.running():
            best = _restarts(executor, model, starts, settings, _track, history, runs, should_restart, accel)
    except KeyboardInterrupt as exc:
        best = max(runs, key=lambda r: r.objective) if runs else None
        info = current["run"]
        if info is not None:
            partial = EMRun(params=info["params"], objective=info["objective"],
                            objectives=list(info["history"]), n_iter=info["iter"], converged=False,
                            stats=info.get("stats"), init_index=info["run"], accel=info.get("accel", (1.0, None)))
            runs.append(partial)
            if best is None or partial.objective > best.objective:
                best = partial
        if best is not None:
            best.converged = False
        exc.emface_best = best
        exc.emface_runs = runs
        raise
    return best, runs


def _restarts(executor, model, starts, settings, callback, history, runs, should_restart, accel):
    best = None
    for i, start in enumerate(starts):
        if i > 0 and should_restart is not None and not should_restart(runs):
            break
        params = start() if callable(start) else start
        r = run_em(executor, model, params, settings, callback=callback, run_index=i,
                   history=history if i == 0 else None, accel=accel if i == 0 else None)

        def resume(p, stats, hist, _i=i):
            return run_em(executor, model, p, settings, callback=callback, run_index=_i, history=hist,
                          stats=stats)

        for move in model.moves():
            r = move(executor, model, r, resume)
        runs.append(r)
        if best is None or r.objective > best.objective:
            best = r
    return best
