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
  every pass while half the images or more have no window yet (they score
  every angle anyway), every `sweep_every`-th pass after a sweep, after an
  iteration whose gain per image was below `stall` (the bound stalls: the
  estimator sets it to its `tol`), and before EM may stop (the loop asks
  `confirm_converged`: a run never ends on a sparse pass);
- a sweep scores every angle and gives each image the narrowest window of
  ``2·half + 1`` angles (half ≤ width) about its best one whose posterior
  leaves at most `emface.engine.rotstep.SETTLE` outside it (hard EM: always,
  half = width), else all angles;
- the other passes score each image's window only, q = 0 elsewhere;
- an over-relaxed candidate (`emface.em.run_em`) whose pass would sweep
  scores the windows instead: if it is rejected the plain EM step's pass
  sweeps, else a later pass does, at the latest after ``2·sweep_every``
  passes without a sweep (a rejected candidate no longer costs a sweep of all
  angles; a candidate is kept only if its restricted bound is higher, so the
  bound still never decreases). The sweep that confirms convergence is not
  deferred (the run is about to stop).

The windows an M-step adopts are those of the pass whose statistics it is
given (an over-relaxed candidate that is rejected changes nothing). The bound
is that of the restricted posteriors: it never decreases (see `rotstep`).
Incremental sweeps and passes without per-image output score all angles.

**Per-image brightness** (``brightness_groups=1``: one gain a_k and one offset
b_k per image; not per channel): the pass is `emface.engine.rotbright.chunk_pass`
(the E-step given (a, b), their ECM update, the sums with the new (a, b)), and
the M-step fixes mean(a) = 1 by scaling F and B. The offsets' mean is not fixed
(see `emface.engine.rotbright`). ``brightness="auto"``'s likelihood-ratio test
runs as for translations, its statistic from one pass over all angles from
a = 1, b = 0 (`RotationMixture.brightness_gain`).

The moves of `FaceMixture` (shift escape, split and merge) are translation
moves; with rotations there are none.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .engine.brightness import normalize
from .model import FaceMixture

__all__ = ["RotationMixture", "ANGLE_SEARCHES"]

ANGLE_SEARCHES = ("sparse", "full")


def _rotstep():
    """The rotation engine, imported when a model with rotations runs (scipy.sparse and numba load then:
    ``from emface import FaceEM`` stays as light as without rotations)."""
    from .engine import rotstep

    return rotstep


def _rotbright():
    from .engine import rotbright

    return rotbright


def _rot_params():
    from .engine.rotations import RotParams

    return RotParams


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
    sweep_every: int = 8
    stall: float = 0.0
    _state: dict = field(default_factory=dict, repr=False)
    #: passes made so far over all angles, and over windows only (for reports and tests)
    full_passes: int = field(default=0, repr=False)
    sparse_passes: int = field(default=0, repr=False)

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
                           last_loglik=None, candidate=False, confirming=False)

    # ------------------------------------------------------------------ the steps
    def e_step(self, executor, params, *, chunks=None, per_image=True, with_moments=None):
        """One pass of the rotation E-step over the executor's chunks (all, or those numbered `chunks`)."""
        st = self._state
        K = executor.n_images
        if st["centres"] is None or len(st["centres"]) != K:
            st["centres"] = np.full(K, -1, dtype=np.int64)
        batch = chunks is None and per_image
        # an over-relaxed candidate defers a due sweep (the plain step sweeps if it is rejected), up to
        # 2·sweep_every passes without one, and not the sweep that confirms convergence
        defer = (st.pop("candidate", False) and st["next_full"] and not st["confirming"]
                 and st["since_full"] + 1 < 2 * self.sweep_every)
        full = not batch or self.angle_search == "full" or (st["next_full"] and not defer)
        st["confirming"] = st["confirming"] and not full
        cached = getattr(executor.source, "cache_budget", 0) > 0
        plan = _rotstep().make_rot_plan(params, hard=self.hard, dtype=executor.config.dtype, workers=executor.config.workers,
                             cache_spectra=cached)
        pending = st["centres"].copy()

        terms = None if params.gains is None else _rotbright().bright_terms(plan)

        def one(chunk, bounds, wm):
            a, b = bounds
            ab = executor._brightness(params, a, b)
            if ab is None:
                stats, cen = _rotstep().chunk_pass(chunk, plan, st["centres"][a:b], full=full, width=self.width,
                                                   per_image=per_image, with_moments=wm)
            else:  # per-image brightness: the E-step given (a, b), their ECM update, the weighted sums
                stats, cen = _rotbright().chunk_pass(chunk, plan, st["centres"][a:b], *ab, full=full,
                                                     width=self.width, per_image=per_image, terms=terms)
            pending[a:b] = cen
            return stats

        stats = executor.map_stats(one, chunks=chunks, with_moments=with_moments)
        if full:
            self.full_passes += 1
        else:
            self.sparse_passes += 1
        if batch:
            st["passes"] = (st["passes"] + [(stats, pending, full)])[-3:]
            st["last_full"] = full
        return stats

    def m_step(self, stats, previous, *, update_prior=True):
        """The closed-form M-step with rotations (A, ρ, F by its normal equations, B, s); adopts the angle
        windows of the pass that gave `stats` and schedules the next pass."""
        previous = self.start(previous)
        params, info = _rotstep().rot_params_from(stats, previous, prior_smoothing=self.prior_smoothing,
                                       noise_floor=self.noise_floor, noise=self.noise)
        if not update_prior:
            params.prior = np.array(previous.prior, copy=True)
            params.angle_prior = np.array(previous.angle_prior, copy=True)
        self._schedule(stats)
        return self._with_brightness(params, stats, previous), info

    def _with_brightness(self, params, stats, previous):
        """θ with the (a, b) of the E-step's images, mean gain 1 (F and B scaled: exact), or `previous`'s.

        The offsets' mean is not fixed with rotations (`emface.engine.rotbright`'s docstring: a common
        shift of F, B and the offsets is no exact reparametrisation on the disc's interpolated rim).
        """
        if self.brightness_groups and stats.gains is not None and len(stats.gains) == self.n_images:
            F, B, a, _ = normalize(params.faces, params.background, stats.gains, np.zeros_like(stats.offsets))
            return replace(params, faces=F, background=B, gains=a, offsets=np.array(stats.offsets, copy=True))
        return super()._with_brightness(params, stats, previous)

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
        # images without a window score every angle anyway: while they are most, every pass sweeps
        unsettled = float(np.mean(centres < 0)) if len(centres) else 1.0
        st["next_full"] = (self.angle_search == "full" or st["since_full"] + 1 >= self.sweep_every
                           or (stalled and not full) or unsettled >= 0.5)
        st["passes"] = []

    def confirm_converged(self):
        """Whether EM may stop now: only after a pass over all angles (else the next pass sweeps them)."""
        st = self._state
        if st["last_full"] or self.angle_search == "full":
            return True
        st["next_full"] = st["confirming"] = True
        return False

    def start(self, params):
        """θ with the angle grid and prior (a `Params` start gets ρ uniform) and, with per-image
        brightness, every image's (a, b) (a = 1, b = 0 when it has none)."""
        params = super().start(params)
        RotParams = _rot_params()
        if isinstance(params, RotParams) and np.array_equal(params.angles, self.angles):
            return params
        return RotParams.from_params(params, self.angles)

    def objective(self, stats, params):
        return _rotstep().rot_objective(stats, params, self.prior_smoothing)

    def free_energy(self, stats, params):
        return _rotstep().rot_free_energy(stats, params, self.prior_smoothing)

    def extrapolate(self, old, new, eta):
        """`FaceMixture.extrapolate`, and ρ moved in log space as A is (the next pass is a candidate's)."""
        self._state["candidate"] = True
        base = super().extrapolate(old, new, eta)
        pos = (new.angle_prior > 0) & (old.angle_prior > 0)
        lr = np.full(new.angle_prior.shape, -np.inf)
        lr[pos] = np.log(old.angle_prior[pos]) + eta * (np.log(new.angle_prior[pos]) - np.log(old.angle_prior[pos]))
        keep = (new.angle_prior > 0) & ~pos
        lr[keep] = np.log(new.angle_prior[keep])
        rho = np.exp(lr - lr.max())
        return _rot_params().from_params(base, new.angles, rho / rho.sum())

    def moves(self):
        return []

    def brightness_gain(self, executor, params):
        """What fitting a gain and an offset per image gains at θ (working units): the summed ECM gain
        (`Stats.ecm_gain`) of one pass over all angles from a = 1, b = 0, for
        `emface.engine.brightness.brightness_test` (brightness="auto")."""
        from .engine.brightness import start_gains

        gains, offsets = start_gains(executor.n_images, 1)
        probe = replace(self.start(params), gains=gains, offsets=offsets)
        return float(rotation_pass(executor, probe)[0].ecm_gain)


# ----------------------------------------------------------------------------- what the estimator asks

def check_settings(est, X=None):
    """Validate an estimator's ``rotations`` and ``angle_search`` (and what rotations rule out).

    Returns the angle grid (degrees), or None without rotations.
    """
    if est.angle_search not in ANGLE_SEARCHES:
        raise ValueError(f"angle_search must be one of {list(ANGLE_SEARCHES)}, got {est.angle_search!r}")
    if est.rotations is None:
        return None
    from .engine.rotations import angle_grid

    angles = angle_grid(est.rotations)
    fs = est.face_shape
    if not (isinstance(fs, (tuple, list)) and len(fs) == 2 and all(isinstance(v, (int, np.integer)) for v in fs)):
        raise ValueError(f"rotations need a fixed square face_shape (h, h), got {fs!r}")
    if int(fs[0]) != int(fs[1]):
        raise ValueError(f"rotations need a square face_shape: the face is the disc inscribed in its window, "
                         f"got {tuple(fs)}")
    if est.empty_frames:
        raise ValueError("rotations do not support empty_frames=True yet")
    if getattr(est, "brightness", "fixed") == "per_channel":
        raise ValueError("rotations fit one gain and one offset per image, not per channel: use "
                         "brightness='per_image' (or 'auto') with rotations")
    if est.device != "cpu" or est.backend == "torch":
        raise ValueError("rotations run on the CPU (numpy and scipy): the torch backend does not support them")
    if est.scheduler is not None or (X is not None and type(X).__module__.startswith("dask.")):
        raise ValueError("rotations run on this machine: Dask arrays and clusters do not support them yet")
    return angles


def rotation_pass(executor, params, *, output=None, fit_steps=0):
    """One soft pass over all angles under θ (`RotParams`): Stats, and with `output` ("q" or "log_joint")
    the array (K, C, R, P, Q) of every image.

    With per-image brightness (``params.gains``, one row per image of the pass) `fit_steps`
    alternations of the E-step and the (a, b) update come first (new images, from a = 1, b = 0)."""
    rs = _rotstep()
    plan = rs.make_rot_plan(params, dtype=executor.config.dtype, workers=executor.config.workers,
                         cache_spectra=False)
    C, R = params.n_faces, params.angles.size
    P, Q = params.grid_shape
    full = None if output is None else np.empty((executor.n_images, C, R, P, Q))
    terms = None if params.gains is None else _rotbright().bright_terms(plan)

    def one(chunk, bounds, wm):
        a, b = bounds
        ab = executor._brightness(params, a, b)
        if ab is None:
            res = rs.chunk_pass(chunk, plan, np.full(b - a, -1), full=True, output=output, with_moments=wm)
        else:
            res = _rotbright().chunk_pass(chunk, plan, np.full(b - a, -1), *ab, full=True, output=output,
                                          fit_steps=fit_steps, terms=terms)
        if output is not None:
            full[a:b] = res[2]
        return res[0]

    return executor.map_stats(one), full


def draw_means(theta, n, rng):
    """n mean images of θ with rotations: (face, corner) from A, the angle from ρ, the turned face in
    the disc. Returns X (n, H, W, Ch) float64, labels (n,), positions (n, 2), angle indices (n,)."""
    from .engine.rotations import Rotations

    C, Ch, h, _ = theta.faces.shape
    P, Q = theta.grid_shape
    flat = rng.choice(C * P * Q, size=n, p=theta.prior.ravel() / theta.prior.sum())
    labels, rem = np.divmod(flat, P * Q)
    pos = np.stack(np.divmod(rem, Q), axis=1)
    r = rng.choice(theta.angles.size, size=n, p=theta.angle_prior / theta.angle_prior.sum())
    rot = Rotations(theta.image_shape, (h, h), theta.angles)
    T = rot.templates(theta.faces)  # (C, R, Ch, h, h)
    X = np.repeat(np.moveaxis(theta.background, 0, -1)[None], n, axis=0)
    D = rot.mask
    for k in range(n):
        win = X[k, pos[k, 0]:pos[k, 0] + h, pos[k, 1]:pos[k, 1] + h]
        win[D] = np.moveaxis(T[labels[k], r[k]], 0, -1)[D]
    return X, labels, pos, r
