"""`FaceEM`: the scikit-learn-style estimator.

A façade: it validates its settings and the data, and delegates the rest --
the schedule (runs, starts, batch or incremental blocks) to `emface.schedule`
and the EM driver `emface.em`, the engine's passes to the executors
(`emface.distributed.make_executor`), progress and checkpoints to
`emface.callbacks`, and its fitted state to one record, `emface.fitted.FittedState`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace

import numpy as np

from . import _validation as v
from . import schedule
from ._layout import public_params
from .callbacks import FitReporter
from .distributed import is_dask, make_executor
from .em import ConvergenceWarning, fit_restarts
from .engine import costs
from .engine.brightness import brightness_test, probe_frames, probe_sample, start_gains
from .errors import MisfitWarning, ModelFileError, one_line
from .executor import EngineConfig, single_threaded_blas
from .fitted import FittedState, bad_value, read_state, write_state
from . import rotation_model
from .model import FaceMixture
from .options import BaseEstimator, init_from_table, numpydoc
from .persistence import atomic_save
from .posterior import PosteriorMixin, PosteriorSummary, public_brightness
from .schedule import INCREMENTAL_MIN_IMAGES

__all__ = ["FaceEM", "PosteriorSummary", "INCREMENTAL_MIN_IMAGES"]

#: `fit` warns (`MisfitWarning`) when more than this share of the training
#: frames have a misfit z above `MISFIT_Z`: under the model a frame's z is
#: about N(0, 1), so z > 5 happens to fewer than 1 in 10⁶ frames that follow it
MISFIT_Z = 5.0
MISFIT_SHARE = 0.01


class FaceEM(PosteriorMixin, BaseEstimator):
    """Recover faces (any objects) seen at unknown positions in noisy images, by EM.

    Each image ``X[k]`` (H×W, or H×W×Ch in colour) is the background B with
    one of C faces F_c (h×w) pasted at an unknown top-left corner d_k, plus
    Gaussian noise of standard deviation s; the face and its corner are drawn
    from a prior A over the C×P×Q possibilities (P = H-h+1, Q = W-w+1).
    `fit` learns F, B, s and A by expectation-maximisation.

    Parameters
    ----------
    (one entry per option of `emface.options.OPTIONS`, filled in from that table)

    Attributes
    ----------
    face_shape_ : (h, w)
        The face size fitted (chosen, with ``face_shape="auto"`` or ranges).
    face_shape_scores_ : list of dict
        Each size the search tried: ``shape``, ``score`` (its criterion per
        image, higher is better) and ``stage``; empty for a given size.
    faces_ : ndarray (C, h, w) or (C, h, w, Ch)
    face_ : ndarray (h, w) or (h, w, Ch)
        The face, when ``n_faces=1``.
    background_ : ndarray (H, W) or (H, W, Ch)
    noise_std_ : float, or ndarray (Ch,) with ``noise="per_channel"``
    prior_ : ndarray (P, Q) for one face, (C, P, Q) for several
        With ``empty_frames=True`` it sums to ``1 - empty_weight_``.
    empty_weight_ : float or None
        π_∅, the fitted share of frames without a face (None without ``empty_frames``).
    gains_, offsets_ : ndarray (K,) or (K, Ch), or None
        Each training image's fitted gain a_k and offset b_k, in the data's
        units (``X_k ≈ a_k·μ + b_k``; mean gain 1, mean offset 0); (K, Ch)
        with ``brightness="per_channel"``; None for the note's model.
    brightness_ : {"fixed", "per_image", "per_channel"}
        The brightness model fitted (what ``"auto"`` chose).
    angles_ : ndarray (R,) or None
        With rotations: the angle grid, degrees (None without rotations).
    angle_prior_ : ndarray (R,) or None
        With rotations: ρ, the fitted share of images at each angle; the prior
        over (face, angle, position) is ``prior_ · angle_prior_[r]``.
    brightness_test_ : dict or None
        ``"auto"``'s test: ``statistic``, ``dof``, ``p_value``, ``significant``
        (None when no test was made).
    misfit_ : ndarray (K,)
        Each training image's misfit z-score (`PosteriorSummary.misfit`) under
        the fitted θ, from the fit's last E-step (None after `load`).
    weights_ : ndarray (C,)
        The prior summed over positions: how often each face appears.
    prior_predictive_ : ndarray, shaped as `prior_`
        The prior that `predict`, `predict_proba`, `score_samples` and
        `posterior_summary(X)` give a new image's (face, position): the
        posterior predictive of A, ``(N + α + 1) / (K + (α + 1)·C·P·Q)`` from
        the K training images' counts N (docs/MODEL.md, "Predicting on new
        frames"). The fitted `prior_` is right for the training images and
        zero wherever none of them had a face; `positions_`, `labels_` and
        `posterior_summary()` keep the training fit's own answers.
    n_images_fit_ : int or None
        K, the images the model was fitted on (None for a file saved without it).
    lower_bound_ : float
        Mean per-image objective of the best run: log p(X_k | θ) for soft EM,
        max log p(X_k, c, d | θ) for hard EM, plus α Σ log A / K with smoothing.
    lower_bounds_ : list of float
        The same after each iteration of the best run.
    n_iter_ : int
    converged_ : bool
    positions_ : ndarray (K, 2)
        Most probable top-left corner of each training image (None after `load`).
    labels_ : ndarray (K,)
        Most probable face of each training image (None after `load`).
    runs_ : list of dict
        Every run: ``objectives`` (the start's first; -inf for a start
        incremental EM did not evaluate), ``n_iter``, ``converged`` and the
        ``moves`` that escaped local optima.
    best_run_ : int
        The run kept.
    algorithm_ : {"batch", "incremental"}
        The schedule used.
    fit_time_ : float
        Seconds the last `fit` took.
    image_shape_ : (H, W)
    n_features_in_ : int
        H·W·Ch.
    """

    __init__ = init_from_table()  # one parameter per option of emface.options.OPTIONS, in its order

    # ------------------------------------------------------------------ settings
    def __getattr__(self, name):
        # face_ exists for one face only; say so instead of a bare AttributeError
        if name == "face_" and "faces_" in self.__dict__:
            raise AttributeError(f"face_ is defined for n_faces=1; this model has {len(self.faces_)} faces: "
                                 "use faces_")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _compute_dtype(self):
        """The correlations' precision: `dtype`, or float64 on the CPU and float32 on a GPU."""
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(np.float32 if self.device != "cpu" else np.float64)

    def _config(self):
        return EngineConfig(dtype=self._compute_dtype(), backend=self.backend,
                            workers=costs.default_workers(self.n_jobs), device=self.device)

    def _make_executor(self, X, face_shape, *, moments=None, chunk_size=None):
        return make_executor(X, face_shape, self._config(), scheduler=self.scheduler, max_memory=self.max_memory,
                             n_faces=int(self.n_faces), moments=moments, chunk_size=chunk_size)

    def _model(self, face_shape, src, brightness_groups=0):
        floor = float(self.noise_floor) * (src.working_std() if src.working_std() > 0 else 1.0)
        if self.rotations is not None:  # in-plane rotations: emface.rotation_model
            return rotation_model.RotationMixture(
                tuple(face_shape), int(self.n_faces), hard=bool(self.hard), prior_smoothing=float(self.prior_smoothing),
                noise=self.noise, noise_floor=floor, angles=rotation_model.check_settings(self),
                angle_search=self.angle_search, stall=float(self.tol), brightness_groups=int(brightness_groups),
                n_images=int(src.n_images))
        return FaceMixture(tuple(face_shape), int(self.n_faces), hard=bool(self.hard),
                           prior_smoothing=float(self.prior_smoothing), noise=self.noise, noise_floor=floor,
                           shift_escape=bool(self.shift_escape), split_merge=bool(self.split_merge),
                           empty_frames=bool(self.empty_frames), brightness_groups=int(brightness_groups),
                           n_images=int(src.n_images))

    def _brightness_groups(self, X, n_channels, warm):
        """Gains per image of the first fit: 0 (the note's model; also "auto"'s first fit), 1 or Ch."""
        if warm:
            g = self._theta.gains
            return 0 if g is None else g.shape[1]
        mode = self.brightness
        if mode in ("per_image", "per_channel") and (is_dask(X) or self.scheduler is not None):
            raise ValueError(f"brightness={mode!r} runs on this machine only, not on a Dask cluster: use "
                             "brightness='fixed' there, or a local array")
        return {"per_image": 1, "per_channel": n_channels}.get(mode, 0)

    @staticmethod
    def _brightness_auto(executor, model, best):
        """"auto"'s test at the fitted θ of the note's model (`emface.engine.brightness.brightness_test`),
        on a sample of the frames (`emface.engine.brightness.probe_frames`): its cost does not grow with K.
        With rotations, its statistic comes from one pass over all angles from a = 1, b = 0."""
        if isinstance(model, rotation_model.RotationMixture):
            return brightness_test(model.brightness_gain(executor, best.params), executor.n_images, 1)
        st, bounds = best.stats, executor.source.bounds
        if st is None or st.positions is None:  # no per-image answers kept: one brightness pass from a = 1, b = 0
            ids = [i for i, _ in probe_frames(bounds)]  # over the sample's whole chunks
            gains, offsets = start_gains(executor.n_images, 1)
            probe = replace(best.params, gains=gains, offsets=offsets)
            gain = executor.pass_stats(probe, hard=model.hard, per_image=False, chunks=ids).ecm_gain
            return brightness_test(gain, sum(bounds[i][1] - bounds[i][0] for i in ids), 1)
        with single_threaded_blas():  # a thin product per chunk: BLAS threads cost more than they give
            gain, n = probe_sample(executor.source, best.params, st.positions, st.labels)
        return brightness_test(gain, n, 1)

    def _saved_settings(self):
        settings = {k: val for k, val in self.get_params().items()
                    if k not in ("face_init", "background_init", "prior_init", "noise_std_init", "callback",
                                 "checkpoint", "scheduler")}
        settings["dtype"] = self._compute_dtype().name
        return settings

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Estimate F, B, s and A from images X of shape (K, H, W) or (K, H, W, Ch).

        Parameters
        ----------
        X : array-like (K, H, W) or (K, H, W, Ch)
            Any real or integer dtype; memory maps, zarr and dask arrays stream.
        y : ignored

        Returns
        -------
        self
        """
        self._validate_settings()
        X = v.check_stack(X)
        rotation_model.check_settings(self, X)
        K, H, W = (int(n) for n in X.shape[:3])
        _check_faces_vs_images(int(self.n_faces), K)
        colour = X.ndim == 4
        warm = self.warm_start and hasattr(self, "faces_")
        scores = []
        (h, w) = self._face_shape(X, warm, scores)
        user = v.check_params_arrays(
            (H, W), (h, w), n_faces=int(self.n_faces), n_channels=int(X.shape[3]) if colour else 1, colour=colour,
            face=self.face_init, background=self.background_init, noise_std=self.noise_std_init,
            prior=self.prior_init, noise=self.noise)
        if warm:
            self._check_warm(X, (h, w))
        groups = self._brightness_groups(X, int(X.shape[3]) if colour else 1, warm)
        algorithm = schedule.choose_algorithm(self.algorithm, K, distributed=is_dask(X) or self.scheduler is not None)
        if groups:
            algorithm = "batch"  # each pass updates every image's (a, b): incremental EM's kept sums would go stale
        # incremental EM updates θ after every block: chunks no larger than a block
        cap = (schedule.chunk_cap(X.shape, (h, w), self._compute_dtype().itemsize, n_faces=int(self.n_faces))
               if algorithm == "incremental" else None)
        executor = self._make_executor(X, (h, w), chunk_size=cap)
        src = executor.source
        model = self._model((h, w), src, groups)
        settings = schedule.em_settings(executor, algorithm, max_iter=self.max_iter, tol=self.tol,
                                        accelerate=self.accelerate, n_faces=self.n_faces,
                                        max_memory=costs.parse_memory(self.max_memory))
        most, always = schedule.run_counts(self.n_init, executor.n_images, user_faces=self.face_init is not None)
        if warm:
            starts = [model.start(src.to_working(self._theta))]
        else:
            starts = schedule.make_starts(src, model, user, v.check_random_state(self.random_state), n_runs=most,
                                          init=self.init)
        reporter = FitReporter(src, colour=colour, per_channel=self.noise == "per_channel", algorithm=algorithm,
                               settings=self._saved_settings(), user=self.callback, verbose=self.verbose,
                               interval=self.verbose_interval, checkpoint=self.checkpoint,
                               every=self.checkpoint_every, face_shape_scores=scores)
        store = dict(src=src, colour=colour, algorithm=algorithm, scores=scores, brightness_test=None)
        t0 = time.perf_counter()
        try:
            best, runs = fit_restarts(
                executor, model, starts, settings, callback=reporter,
                history=[src.loglik_to_working(o) for o in self._history_full] if warm else None,
                should_restart=(schedule.RestartRule(always, executor, model) if self.rotations is None
                                else lambda runs: len(runs) < always),  # the rule's draws know no angles
                accel=getattr(self, "_accel", None) if warm else None)
            # the test is calibrated at the note's converged fit (its maximum-likelihood θ): a fit stopped
            # by max_iter, a warm start or a cluster's fit keeps the note's model
            if (self.brightness == "auto" and best.converged and not groups and not warm
                    and not (is_dask(X) or self.scheduler)):
                store["brightness_test"] = test = self._brightness_auto(executor, model, best)
                if test["significant"]:  # refit from the starts with a gain and an offset per image
                    model = self._model((h, w), src, 1)
                    settings = replace(settings, algorithm="batch", block_chunks=[])
                    store["algorithm"] = "batch"
                    starts = schedule.make_starts(src, model, user, v.check_random_state(self.random_state),
                                                  n_runs=most, init=self.init)
                    best, runs = fit_restarts(executor, model, starts, settings, callback=reporter,
                                              should_restart=(schedule.RestartRule(always, executor, model)
                                                              if self.rotations is None
                                                              else lambda runs: len(runs) < always))
        except KeyboardInterrupt as exc:
            best = getattr(exc, "emface_best", None)
            if best is not None:
                self._store(best, getattr(exc, "emface_runs", [best]), **store)
                self.converged_ = False
            raise
        finally:
            executor.close()
        self.fit_time_ = time.perf_counter() - t0
        self._store(best, runs, **store)
        self.__dict__.pop("_resume_images", None)  # resumed: later warm fits may take other stacks
        self._report_fit(best, settings)
        return self

    def _face_shape(self, X, warm, record):
        """(h, w) for X: the fitted size for a warm start, the given size, or one chosen from the data."""
        spec = v.check_face_shape_spec(self.face_shape, tuple(int(n) for n in X.shape[1:3]))
        if warm:
            return tuple(self.face_shape_)
        if isinstance(spec, tuple) and isinstance(spec[0], int):
            return spec
        from .face_size import search

        rng = v.check_random_state(self.random_state)
        return search(X, self._config(), n_faces=int(self.n_faces), face_shape=spec, noise=self.noise,
                      noise_floor=float(self.noise_floor), random_state=int(rng.integers(2**31)), record=record)

    def _check_warm(self, X, face_shape):
        """A warm (or resumed) fit continues on images and faces of the fitted shapes."""
        _check_resumed_stack(getattr(self, "_resume_images", None), int(X.shape[0]))
        C, Ch = int(self.n_faces), int(X.shape[3]) if X.ndim == 4 else 1
        if self._theta.faces.shape != (C, Ch) + tuple(face_shape) or self._theta.image_shape != tuple(X.shape[1:3]):
            raise ValueError(
                f"warm_start needs images of shape {self.background_.shape} and faces of shape "
                f"{self.faces_.shape}, got images {tuple(X.shape[1:])} and {C} face(s) of {tuple(face_shape)}"
            )

    def _store(self, best, runs, *, src, colour, algorithm, scores, brightness_test=None):
        FittedState.from_run(best, runs, src, colour, algorithm, hard=bool(self.hard), face_shape_scores=scores,
                             brightness_test=brightness_test).apply_to(self, self.noise == "per_channel")
        self._fit_smoothing = float(self.prior_smoothing)

    def _report_fit(self, best, settings):
        """The verbose line and the fit's warnings: uncovered pixels, frames that do not fit, no convergence."""
        if self.verbose:
            print(f"FaceEM: best objective {self.lower_bound_:.6g} per image after {self.n_iter_} iterations "
                  f"({'converged' if self.converged_ else 'not converged'}) in {self.fit_time_:.2f} s")
        if best.n_uncovered:
            warnings.warn(f"{best.n_uncovered} background pixel(s) are covered by a face in every image: "
                          "they have no background evidence and keep their starting values", UserWarning,
                          stacklevel=3)
        _warn_misfit(self.misfit_, self.empty_frames)
        # tol=0 runs every iteration: no warning when the last one left the objective exactly unchanged
        settled = len(best.objectives) >= 2 and best.objectives[-1] == best.objectives[-2]
        if not self.converged_ and settings.max_iter > 0 and not settled:
            warnings.warn(f"Best EM run did not converge in max_iter={self.max_iter} iterations (tol={self.tol}). "
                          "Try a larger max_iter or tol, or more restarts.", ConvergenceWarning, stacklevel=3)

    def _set_theta(self, theta, colour, per_channel=None):
        """Keep θ (data units, engine layout) and expose it in the user's layout."""
        per_channel = self.noise == "per_channel" if per_channel is None else per_channel
        self._theta = theta
        self._colour = bool(colour)
        self.face_shape_ = tuple(theta.face_shape)
        p = public_params(theta, colour, per_channel)
        self.faces_ = p.faces
        if theta.n_faces == 1:
            self.face_ = self.faces_[0]
        else:
            self.__dict__.pop("face_", None)
        self.background_ = p.background
        self.noise_std_ = p.noise_std
        self.prior_ = p.prior
        self.weights_ = theta.weights
        self.empty_weight_ = p.empty_weight
        self.angles_ = getattr(theta, "angles", None)
        self.angle_prior_ = getattr(theta, "angle_prior", None)
        g = theta.gains
        self.brightness_ = "fixed" if g is None else ("per_channel" if g.shape[1] > 1 else "per_image")
        self.gains_, self.offsets_ = (None, None) if g is None else public_brightness(g, theta.offsets)

    def fit_predict(self, X, y=None):
        """Fit, then return the most probable position of each training image."""
        return self.fit(X).predict(X)

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Save the fitted model (parameters, history and settings) to ``.npz``, atomically: a failure
        leaves an earlier file at `path` intact, and a symlink at `path` is replaced, never followed."""
        self._check_fitted()
        state, settings = FittedState.read_from(self), self._saved_settings()
        atomic_save(path, lambda out: write_state(out, state, settings, kind="model"), numpy_name=True)

    @classmethod
    def load(cls, path):
        """A fitted `FaceEM` from a file written by `save` (or a checkpoint).

        A model file is untrusted input: θ is validated by
        `emface.persistence.load_model` (shapes, dtypes, finite values, s > 0, a
        prior >= 0 summing to 1), and the settings and history beside it
        by `emface.fitted.read_state` and here (types, ranges, the map to
        working units), before anything computes with them.

        Raises
        ------
        emface.errors.ModelFileError
            A file that is not a usable emface model (a ValueError; one line, naming the file).
        OSError
            A file that cannot be opened.
        """
        state, settings, name = read_state(path)
        est = cls(tuple(state.theta.face_shape), **_loaded_settings(cls, state.theta, settings, name))
        state.apply_to(est, est.noise == "per_channel")
        est._fit_smoothing = float(est.prior_smoothing)
        return est

    @classmethod
    def resume(cls, path):
        """An estimator that continues the run saved in a checkpoint: call ``fit(X)`` on the same data.

        The checkpoint records how many images its run fitted; ``fit`` refuses
        a stack of another length (a ValueError: resuming continues that run,
        its history and over-relaxation state, on its own images). To start a
        new fit from a saved model's parameters, pass them as ``face_init``,
        ``background_init``, ``noise_std_init`` and ``prior_init``. Files
        written before emface recorded the count are resumed on any stack of
        images of the right shape.
        """
        est = cls.load(path)
        est.warm_start = True
        est._resume_images = est.n_images_fit_
        return est


# the parameters' documentation comes from the one table of options
_PARAMETERS = "    (one entry per option of `emface.options.OPTIONS`, filled in from that table)"
FaceEM.__doc__ = FaceEM.__doc__.replace(_PARAMETERS, numpydoc(indent=4))


def _warn_misfit(z, empty_frames):
    """`MisfitWarning` when more than `MISFIT_SHARE` of the training frames have z > `MISFIT_Z`."""
    if z is None or len(z) == 0:
        return
    bad = int(np.count_nonzero(z > MISFIT_Z))
    if bad <= MISFIT_SHARE * len(z):
        return
    hint = ("some frames may show no face: try empty_frames=True; " if not empty_frames else "")
    warnings.warn(
        f"{bad} of {len(z)} frames ({100.0 * bad / len(z):.1f}%) do not fit the model (misfit z > {MISFIT_Z:g}; "
        f"frames that follow it stay below about 3). Their positions and probabilities are the best of bad "
        f"options. What to try: {hint}look at the worst frames (misfit_, posterior_summary(X).misfit, the "
        "report's misfit section); other objects, occlusions, changes of brightness or rotations are not "
        "modelled; a different face_shape or n_faces may explain them.",
        MisfitWarning,
        stacklevel=4,
    )


def _check_faces_vs_images(n_faces, n_images):
    if n_faces > n_images:
        raise ValueError(f"n_faces={n_faces} is more than the number of images ({n_images}): each face needs "
                         "images to be learnt from; use n_faces <= the number of images")


def _check_resumed_stack(expected, n_images):
    if expected is not None and expected != n_images:
        raise ValueError(f"this checkpoint's run fitted {expected} images, but fit was given {n_images}: "
                         "a resumed run continues on the same stack (to start a new fit from its parameters, "
                         "pass them as face_init, background_init, noise_std_init and prior_init)")


#: settings `save` writes that describe the machine that fitted, not the model: the loaded model
#: computes with this machine's defaults
_MACHINE_SETTINGS = ("face_shape", "device", "backend", "dtype", "n_jobs", "max_memory", "scheduler", "checkpoint")
#: settings never saved (arrays and callables): a file that holds them is not trusted with them
_UNSAVED_SETTINGS = ("face_init", "background_init", "noise_std_init", "prior_init", "callback", "n_faces")


def _loaded_settings(cls, params, settings, name):
    """The settings saved beside θ that a loaded estimator takes, validated (one-line `ModelFileError`)."""
    names = set(cls._get_param_names()) - set(_MACHINE_SETTINGS) - set(_UNSAVED_SETTINGS)
    settings = {k: val for k, val in settings.items() if k in names}
    settings["n_faces"] = params.n_faces
    rs = settings.get("random_state")
    if not (rs is None or (isinstance(rs, int) and not isinstance(rs, bool) and rs >= 0)):
        raise bad_value(name, "random_state", rs, "null or an int >= 0")
    try:
        cls(tuple(params.face_shape), **settings)._validate_settings()
    except ValueError as exc:
        raise ModelFileError(one_line(f"{name}: its settings are not valid: {exc}")) from None
    if bool(settings.get("empty_frames", False)) != (params.empty_weight is not None):
        raise bad_value(name, "'empty_frames' setting", settings.get("empty_frames", False),
                        "true exactly when the file holds the 'no face' class's weight ('empty_weight')")
    angles = rotation_model.check_settings(cls(tuple(params.face_shape), **settings))
    if (angles is None) != (getattr(params, "angles", None) is None) or (
            angles is not None and not np.allclose(angles, params.angles, rtol=0.0, atol=1e-9)):
        raise bad_value(name, "'angles'", getattr(params, "angles", None),
                        "the grid of its 'rotations' setting (and no angles without rotations)")
    if settings.get("noise", "shared") != "per_channel" and not np.all(params.noise_std == params.noise_std[0]):
        raise bad_value(name, "noise_std", params.noise_std.tolist(),
                        "one shared value (its settings say noise='shared')")
    return settings
