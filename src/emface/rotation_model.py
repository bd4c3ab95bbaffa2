"""The model with in-plane rotations, behind the seam the EM loop calls (MODEL.md, "In-plane rotations").

`RotationMixture` is `FaceMixture` with an angle per image: C faces, each
seen turned by one of R angles inside the disc inscribed in its square
window. Its E-step is `emface.engine.rotstep.chunk_pass`, mapped over the
executor's chunks (`LocalExecutor.map_stats`); its M-step solves the faces'
normal equations.

**The sparse angle search** (``angle_search="sparse"``; Neal and Hinton,
1998). The model keeps, per image, the centre of its angle window (K small
ints; -1: all angles). The schedule:

- a pass sweeps all angles when the previous M-step says so: the first pass,
  every `sweep_every`-th pass after a sweep, after an iteration whose gain per
  image was below `stall` (the bound stalls), and before EM may stop (the
  loop asks `confirm_converged`: a run never ends on a sparse pass);
- a sweep scores every angle and gives each image the window of
  ``2·width + 1`` angles about its best one when its posterior leaves at most
  `emface.engine.rotstep.SETTLE` outside it (hard EM: always), else all angles;
- the other passes score each image's window only, q = 0 elsewhere.

The windows an M-step adopts are those of the pass whose statistics it is
given (an over-relaxed candidate that is rejected changes nothing). The bound
is that of the restricted posteriors: it never decreases (see `rotstep`).
Incremental sweeps and passes without per-image output score all angles.

The moves of `FaceMixture` (shift escape, split and merge) are translation
moves; with rotations there are none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .engine.rotations import RotParams
from .engine.rotstep import chunk_pass, make_rot_plan, rot_free_energy, rot_objective, rot_params_from
from .mixture import FaceMixture

__all__ = ["RotationMixture", "ANGLE_SEARCHES"]

ANGLE_SEARCHES = ("sparse", "full")


@dataclass
class RotationMixture(FaceMixture):
    """C faces turned by R in-plane angles at unknown positions (see the module docstring).

    Parameters (beyond `FaceMixture`'s)
    ----------
    angles : ndarray (R,)
        The angle grid, degrees.
    angle_search : {"sparse", "full"}
    width : int
        Half-width of an image's angle window, in grid steps.
    sweep_every : int
        With the sparse search, every this many passes sweep all angles.
    stall : float
        A gain of the objective per image below this makes the next pass a sweep.
    """

    angles: np.ndarray = None
    angle_search: str = "sparse"
    width: int = 2
    sweep_every: int = 5
    stall: float = 0.0
    _state: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.angles = np.asarray(self.angles, dtype=np.float64).reshape(-1)
        if self.angle_search not in ANGLE_SEARCHES:
            raise ValueError(f"angle_search must be one of {list(ANGLE_SEARCHES)}, got {self.angle_search!r}")
        self.shift_escape = False
        self.split_merge = False
        self.reset()

    def reset(self):
        """Forget the images' angle windows (a new stack, or a new run)."""
        self._state.update(centres=None, next_full=True, since_full=0, passes=[], last_full=True,
                           last_loglik=None)

    # ------------------------------------------------------------------ the steps
    def e_step(self, executor, params, *, chunks=None, per_image=True, with_moments=None):
        """One pass of the rotation E-step over the executor's chunks (all, or those numbered `chunks`)."""
        st = self._state
        K = executor.n_images
        if st["centres"] is None or len(st["centres"]) != K:
            st["centres"] = np.full(K, -1, dtype=np.int64)
        batch = chunks is None and per_image
        full = not batch or self.angle_search == "full" or st["next_full"]
        cached = getattr(executor.source, "cache_budget", 0) > 0
        plan = make_rot_plan(params, hard=self.hard, dtype=executor.config.dtype, workers=executor.config.workers,
                             cache_spectra=cached)
        pending = st["centres"].copy()

        def one(chunk, bounds, wm):
            a, b = bounds
            stats, cen = chunk_pass(chunk, plan, st["centres"][a:b], full=full, width=self.width,
                                    per_image=per_image, with_moments=wm)
            pending[a:b] = cen
            return stats

        stats = executor.map_stats(one, chunks=chunks, with_moments=with_moments)
        if batch:
            st["passes"] = (st["passes"] + [(stats, pending, full)])[-3:]
            st["last_full"] = full
        return stats

    def m_step(self, stats, previous, *, update_prior=True):
        """The closed-form M-step with rotations (A, ρ, F by its normal equations, B, s); adopts the angle
        windows of the pass that gave `stats` and schedules the next pass."""
        previous = self.start(previous)
        params, info = rot_params_from(stats, previous, prior_smoothing=self.prior_smoothing,
                                       noise_floor=self.noise_floor, noise=self.noise)
        if not update_prior:
            params.prior = np.array(previous.prior, copy=True)
            params.angle_prior = np.array(previous.angle_prior, copy=True)
        self._schedule(stats)
        return params, info

    def _schedule(self, stats):
        st = self._state
        match = [p for p in st["passes"] if p[0] is stats]
        if not match:
            return
        _, centres, full = match[-1]
        st["centres"] = centres
        st["since_full"] = 0 if full else st["since_full"] + 1
        gain = None if st["last_loglik"] is None else (stats.loglik - st["last_loglik"]) / max(stats.n_images, 1)
        st["last_loglik"] = stats.loglik
        stalled = gain is not None and gain < self.stall
        st["next_full"] = (self.angle_search == "full" or st["since_full"] + 1 >= self.sweep_every
                           or (stalled and not full))
        st["passes"] = []

    def confirm_converged(self):
        """Whether EM may stop now: only after a pass over all angles (else the next pass sweeps them)."""
        st = self._state
        if st["last_full"] or self.angle_search == "full":
            return True
        st["next_full"] = True
        return False

    def start(self, params):
        """θ with the angle grid and prior: a `Params` start gets ρ uniform."""
        if isinstance(params, RotParams) and np.array_equal(params.angles, self.angles):
            return params
        return RotParams.from_params(params, self.angles)

    def objective(self, stats, params):
        return rot_objective(stats, params, self.prior_smoothing)

    def free_energy(self, stats, params):
        return rot_free_energy(stats, params, self.prior_smoothing)

    def extrapolate(self, old, new, eta):
        """`FaceMixture.extrapolate`, and ρ moved in log space as A is."""
        base = super().extrapolate(old, new, eta)
        pos = (new.angle_prior > 0) & (old.angle_prior > 0)
        lr = np.full(new.angle_prior.shape, -np.inf)
        lr[pos] = np.log(old.angle_prior[pos]) + eta * (np.log(new.angle_prior[pos]) - np.log(old.angle_prior[pos]))
        keep = (new.angle_prior > 0) & ~pos
        lr[keep] = np.log(new.angle_prior[keep])
        rho = np.exp(lr - lr.max())
        return RotParams.from_params(base, new.angles, rho / rho.sum())

    def moves(self):
        return []
