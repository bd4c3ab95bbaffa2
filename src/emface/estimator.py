"""`FaceEM`: the scikit-learn-style estimator."""

from __future__ import annotations

import inspect
import numbers
import os
import time
import warnings

import numpy as np

from . import _validation as v
from .em import ConvergenceWarning, EMSettings, atomic_save, fit_restarts
from .executor import EngineConfig, LocalExecutor
from .engine import costs
from .init import INIT_METHODS, auto_start, random_start, user_start
from .model import Params, load_model, save_model
from .sources import ArraySource

__all__ = ["FaceEM"]


def _check_random_state(seed):
    if seed is None or isinstance(seed, (numbers.Integral, np.integer)):
        return np.random.default_rng(seed)
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(0, 2**31 - 1))
    raise ValueError(f"random_state must be None, an int or a numpy Generator, got {seed!r}")


def _is_dask(X):
    return type(X).__module__.startswith("dask.")


class FaceEM:
    """Recover a face (any object) seen at unknown positions in noisy images, by EM.

    Each image ``X[k]`` (H×W) is the background B with the face F (h×w) pasted
    at an unknown top-left corner d_k, plus Gaussian noise of standard
    deviation s; d_k is drawn from a prior A over the P×Q possible corners
    (P = H-h+1, Q = W-w+1). `fit` learns F, B, s and A by expectation-maximisation.

    Parameters
    ----------
    face_shape : tuple of int (h, w)
        Size of the face.
    hard : bool, default=False
        Hard (MAP) EM: each image's posterior is one-hot at its most probable position.
    n_init : int or "auto", default="auto"
        Number of EM runs from different starts; the one with the best objective
        is kept. The first run starts from `init`, the others from the note's
        random start. ``"auto"``: ``clip(round(2000 / K), 1, 8)`` runs -- small
        stacks, where a single run most often stops in a local optimum, get
        more restarts, which are cheap there (see ``benchmarks/accuracy.py``).
    max_iter : int, default=100
        Most EM iterations per run.
    tol : float, default=1e-3
        Convergence threshold on the change of the mean per-image objective.
    prior_smoothing : float, default=0.0
        Dirichlet pseudo-count α added to every position of A in the M-step
        (the note uses about K/10 with hard EM).
    init : {"auto", "random"}, default="auto"
        ``"auto"``: a data-driven start (per-pixel median background, the face
        from the windows that depart most from it). ``"random"``: the note's
        start (F and B uniform over the data's range).
    face_init, background_init : ndarray, optional
        Starting F (h, w) and B (H, W), in data units; override `init`.
    noise_std_init : float, optional
        Starting s.
    prior_init : ndarray (P, Q), optional
        Starting A: non-negative, summing to 1. Zeros stay zero without smoothing.
    random_state : int, numpy Generator or None
    warm_start : bool, default=False
        Start from the fitted parameters of the previous `fit` and continue its history.
    verbose : int, default=0
        1: a line when the fit ends; 2: also one every `verbose_interval` iterations.
    verbose_interval : int, default=10
    shift_escape : bool, default=True
        After convergence, try the face shifted by a few pixels (all images, or
        the group of images whose second choice lies in one direction) and keep
        moves that raise the objective; EM then continues.
    dtype : {None, np.float64, np.float32}, default=None
        Precision of the correlations; statistics are always float64. None:
        float64 on the CPU, float32 on a GPU.
    n_jobs : int or None, default=None
        Threads; None or -1 for all cores.
    backend : {"auto", "numba", "numpy"}, default="auto"
    max_memory : int or str, optional
        Bound on what the engine holds besides the data, e.g. ``"2GB"``.
    checkpoint : path, optional
        Save the best state so far every `checkpoint_every` iterations (atomically).
    checkpoint_every : int, default=10
    noise_floor : float, default=1e-6
        Smallest s, relative to the data's standard deviation.
    callback : callable(dict), optional
        Called after every iteration with ``run``, ``iter``, ``objective``, ``params``.
    device : str, default="cpu"
        ``"cuda"`` (or ``"cuda:N"``) runs the engine on an NVIDIA GPU through
        PyTorch (the ``gpu`` extra); ``"cpu"`` uses the fused CPU kernels.
    scheduler : str or distributed.Client, optional
        Fit on this Dask cluster (an address such as ``"tcp://host:8786"``).
        A dask array is fitted on the active client when there is one.

    Attributes
    ----------
    face_ : ndarray (h, w)
    background_ : ndarray (H, W)
    noise_std_ : float
    prior_ : ndarray (P, Q)
    lower_bound_ : float
        Mean per-image objective of the best run: log p(X_k | θ) for soft EM,
        max_d log p(X_k, d | θ) for hard EM, plus α Σ log A / K with smoothing.
    lower_bounds_ : list of float
        The same after each iteration of the best run.
    n_iter_ : int
    converged_ : bool
    positions_ : ndarray (K, 2)
        Most probable top-left corner of each training image.
    runs_ : list of dict
        History of every run (for reports).
    """

    def __init__(self, face_shape, *, hard=False, n_init="auto", max_iter=100, tol=1e-3, prior_smoothing=0.0,
                 init="auto", face_init=None, background_init=None, noise_std_init=None, prior_init=None,
                 random_state=None, warm_start=False, verbose=0, verbose_interval=10, shift_escape=True,
                 dtype=np.float64, n_jobs=None, backend="auto", max_memory=None, checkpoint=None,
                 checkpoint_every=10, noise_floor=1e-6, callback=None, scheduler=None, device="cpu"):
        self.face_shape = face_shape
        self.hard = hard
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.prior_smoothing = prior_smoothing
        self.init = init
        self.face_init = face_init
        self.background_init = background_init
        self.noise_std_init = noise_std_init
        self.prior_init = prior_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.shift_escape = shift_escape
        self.dtype = dtype
        self.n_jobs = n_jobs
        self.backend = backend
        self.max_memory = max_memory
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.noise_floor = noise_floor
        self.callback = callback
        self.scheduler = scheduler
        self.device = device

    # ------------------------------------------------------------------ sklearn plumbing
    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep=True):
        """Parameters of this estimator (scikit-learn convention)."""
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters (scikit-learn convention); returns self."""
        valid = set(self._get_param_names())
        for k, val in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for FaceEM; valid ones are {sorted(valid)}")
            setattr(self, k, val)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        parts = [repr(self.face_shape)]
        for k in self._get_param_names()[1:]:
            val = getattr(self, k)
            d = defaults.get(k)
            same = False
            try:
                same = val is d or (not isinstance(val, np.ndarray) and val == d)
            except Exception:
                same = False
            if not same:
                parts.append(f"{k}={'<array>' if isinstance(val, np.ndarray) else repr(val)}")
        return f"FaceEM({', '.join(parts)})"

    # ------------------------------------------------------------------ validation
    def _validate_settings(self):
        if not (isinstance(self.n_init, str) and self.n_init == "auto"):
            v.check_int(self.n_init, "n_init", low=1)
        v.check_int(self.max_iter, "max_iter", low=0)
        v.check_real(self.tol, "tol", low=0.0)
        v.check_real(self.prior_smoothing, "prior_smoothing", low=0.0)
        v.check_choice(self.init, "init", INIT_METHODS)
        v.check_int(self.verbose, "verbose", low=0)
        v.check_int(self.verbose_interval, "verbose_interval", low=1)
        v.check_int(self.checkpoint_every, "checkpoint_every", low=1)
        v.check_real(self.noise_floor, "noise_floor", low=0.0, low_inclusive=False)
        if self.dtype is not None and np.dtype(self.dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be None, numpy.float64 or numpy.float32, got {self.dtype!r}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.n_jobs is not None:
            n = v.check_int(self.n_jobs, "n_jobs")
            if n == 0:
                raise ValueError("n_jobs must be a positive int, -1 or None (all cores), got 0")
        v.check_choice(self.backend, "backend", ("auto", "numba", "numpy", "torch"))
        costs.parse_memory(self.max_memory)
        if self.checkpoint is not None:
            folder = os.path.dirname(os.path.abspath(os.fspath(self.checkpoint)))
            if not os.path.isdir(folder):
                raise ValueError(f"checkpoint folder {folder!r} does not exist")
            if not os.access(folder, os.W_OK):
                raise ValueError(f"checkpoint folder {folder!r} is not writable")

    def _compute_dtype(self):
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(np.float32 if self.device != "cpu" else np.float64)

    def _config(self):
        return EngineConfig(dtype=self._compute_dtype(), backend=self.backend,
                            workers=costs.default_workers(self.n_jobs), device=self.device)

    def _settings(self):
        return EMSettings(
            hard=bool(self.hard),
            prior_smoothing=float(self.prior_smoothing),
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            noise_floor=float(self.noise_floor),
            shift_escape=bool(self.shift_escape),
        )

    def _make_executor(self, X, face_shape, *, moments=None):
        if _is_dask(X) or self.scheduler is not None:
            from .distributed import DaskExecutor, get_client

            client = get_client(self.scheduler)
            if client is not None:
                if not _is_dask(X):
                    import dask.array as da

                    n = costs.chunk_size(tuple(X.shape[1:3]), face_shape, self._compute_dtype().itemsize,
                                         target_bytes=64 * 2**20)
                    X = da.from_array(X, chunks=(n, -1, -1))
                return DaskExecutor(X, face_shape, config=self._config(), client=client,
                                    max_memory=self.max_memory, moments=moments)
            # a dask array without a cluster: its slices are computed here, chunk by chunk
        source = ArraySource(X, face_shape, compute_dtype=self._compute_dtype(), max_memory=self.max_memory,
                             moments=moments)
        return LocalExecutor(source, self._config())

    def _check_fitted(self):
        if not hasattr(self, "face_"):
            raise AttributeError(
                "This FaceEM instance is not fitted yet. Call 'fit' with appropriate arguments first."
            )

    def _check_X_predict(self, X):
        X = v.check_stack(X)
        self._check_fitted()
        if tuple(X.shape[1:3]) != self.background_.shape:
            raise ValueError(
                f"X has images of shape {tuple(X.shape[1:3])}, but this FaceEM was fitted on images "
                f"of shape {self.background_.shape}"
            )
        return X

    # ------------------------------------------------------------------ fitting
    def _n_init(self, n_images):
        if isinstance(self.n_init, str):
            return int(np.clip(round(2000 / max(n_images, 1)), 1, 8))
        return int(self.n_init)

    def _starts(self, executor, user, rng):
        src = executor.source
        n_init = self._n_init(src.n_images)
        if self.warm_start and hasattr(self, "face_"):
            p = src.to_working(self._params())
            return [p]
        starts = []
        for i in range(n_init):
            seed = rng.integers(2**63)

            def make(i=i, seed=seed):
                r = np.random.default_rng(seed)
                if self.init == "auto" and i == 0:
                    base = auto_start(src, r)
                else:
                    base = random_start(src, r)
                return user_start(src, base, **user)

            starts.append(make)
        return starts

    def fit(self, X, y=None):
        """Estimate F, B, s and A from images X of shape (K, H, W).

        Parameters
        ----------
        X : array-like (K, H, W)
            Any real or integer dtype; memory maps, zarr and dask arrays stream.
        y : ignored

        Returns
        -------
        self
        """
        self._validate_settings()
        X = v.check_stack(X)
        H, W = int(X.shape[1]), int(X.shape[2])
        h, w = v.check_face_shape(self.face_shape, (H, W))
        user = v.check_params_arrays(
            (H, W), (h, w), face=self.face_init, background=self.background_init,
            noise_std=self.noise_std_init, prior=self.prior_init,
        )
        history = None
        warm = self.warm_start and hasattr(self, "face_")
        if warm:
            if self.background_.shape != (H, W) or self.face_.shape != (h, w):
                raise ValueError(
                    f"warm_start needs images of shape {self.background_.shape} and a face of shape "
                    f"{self.face_.shape}, got images {(H, W)} and face {(h, w)}"
                )
        executor = self._make_executor(X, (h, w))
        src = executor.source
        settings = self._settings()
        settings.noise_floor = float(self.noise_floor) * src.working_std() if src.working_std() > 0 \
            else float(self.noise_floor)
        rng = _check_random_state(self.random_state)
        starts = self._starts(executor, user, rng)
        if warm:
            history = [src.loglik_to_working(o) for o in getattr(self, "_history_full", [])]
        callback = self._make_callback(src)
        t0 = time.perf_counter()
        try:
            best, runs = fit_restarts(executor, starts, settings, callback=callback, history=history)
        except KeyboardInterrupt as exc:
            best = getattr(exc, "emface_best", None)
            if best is not None:
                self._store(best, getattr(exc, "emface_runs", [best]), src, settings)
                self.converged_ = False
            raise
        self.fit_time_ = time.perf_counter() - t0
        self._store(best, runs, src, settings)
        if self.verbose:
            print(f"FaceEM: best objective {self.lower_bound_:.6g} per image after {self.n_iter_} iterations "
                  f"({'converged' if self.converged_ else 'not converged'}) in {self.fit_time_:.2f} s")
        if best.n_uncovered:
            warnings.warn(
                f"{best.n_uncovered} background pixel(s) are covered by the face in every image: "
                "they have no background evidence and keep their starting values",
                UserWarning,
                stacklevel=2,
            )
        if not self.converged_ and settings.max_iter > 0:
            warnings.warn(
                f"Best EM run did not converge in max_iter={self.max_iter} iterations (tol={self.tol}). "
                "Try a larger max_iter or tol, or more restarts.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _make_callback(self, src):
        user_cb = self.callback
        verbose = int(self.verbose)
        interval = int(self.verbose_interval)
        ckpt = self.checkpoint
        every = int(self.checkpoint_every)
        state = {"best": None}
        def cb(info):
            obj = src.loglik_to_data(info["objective"])
            if state["best"] is None or obj > state["best"][0]:
                state["best"] = (obj, info)
            if verbose >= 2 and info["iter"] % interval == 0:
                print(f"  run {info['run']} iteration {info['iter']}: objective {obj:.6g}")
            if ckpt is not None and info["iter"] > 0 and info["iter"] % every == 0:
                self._write_checkpoint(ckpt, src, state["best"][1], info)
            if user_cb is not None:
                user_cb(dict(info, objective=obj, params=src.to_data(info["params"])))

        return cb

    def _write_checkpoint(self, path, src, best_info, current):
        p = src.to_data(best_info["params"])
        hist = src.loglik_to_data(np.asarray(best_info["history"]))
        settings = {k: val for k, val in self.get_params().items()
                    if k not in ("face_init", "background_init", "prior_init", "callback", "checkpoint")}
        settings["dtype"] = self._compute_dtype().name

        def write(tmp):
            save_model(tmp, p, history=hist, n_iter=int(best_info["iter"]), run=int(best_info["run"]),
                       settings=settings, kind="checkpoint")

        atomic_save(path, write)

    def _store(self, best, runs, src, settings):
        H, W = src.image_shape
        to_data = src.loglik_to_data
        p = src.to_data(best.params)
        self.face_ = p.face
        self.background_ = p.background
        self.noise_std_ = p.noise_std
        self.prior_ = p.prior
        self.lower_bound_ = to_data(best.objective)
        self._history_full = [to_data(o) for o in best.objectives]
        self.lower_bounds_ = self._history_full[1:]
        self.n_iter_ = best.n_iter
        self.converged_ = best.converged
        self.positions_ = None if best.stats is None else best.stats.positions
        self.best_run_ = best.init_index
        self.runs_ = [dict(run=r.init_index, objectives=[to_data(o) for o in r.objectives],
                           n_iter=r.n_iter, converged=r.converged, escapes=list(r.escapes)) for r in runs]
        self.n_features_in_ = H * W
        self.image_shape_ = (H, W)
        self._moments = (src.offset, src.scale)
        self._last_stats = best.stats

    def _params(self):
        return Params(self.face_, self.background_, self.noise_std_, self.prior_)

    # ------------------------------------------------------------------ inference
    def _pass(self, X, output=None):
        X = self._check_X_predict(X)
        h, w = self.face_.shape
        ex = self._make_executor(X, (h, w), moments=self._moments)
        params = ex.source.to_working(self._params())
        if output is None:
            return ex, ex.pass_stats(params, hard=False), None
        stats, full = ex.collect(params, hard=False, output=output)
        return ex, stats, full

    def predict(self, X):
        """Most probable top-left corner of the face in each image.

        Returns
        -------
        ndarray of int, shape (K, 2): row and column.
        """
        _, stats, _ = self._pass(X)
        return stats.positions

    def predict_proba(self, X):
        """Posterior over positions for each image, shape (K, P, Q)."""
        _, _, q = self._pass(X, output="q")
        return q

    def score_samples(self, X):
        """log p(X_k | θ) of each image, shape (K,)."""
        ex, stats, _ = self._pass(X)
        return ex.source.loglik_to_data(stats.image_loglik)

    def score(self, X, y=None):
        """Mean per-image log-likelihood of X."""
        return float(np.mean(self.score_samples(X)))

    def fit_predict(self, X, y=None):
        """Fit, then return the most probable position of each training image."""
        return self.fit(X).predict(X)

    def sample(self, n_samples=1, random_state=None):
        """Draw images from the fitted model.

        Returns
        -------
        X : ndarray (n_samples, H, W)
        positions : ndarray of int (n_samples, 2)
        """
        self._check_fitted()
        n_samples = v.check_int(n_samples, "n_samples", low=1)
        rng = _check_random_state(random_state)
        P, Q = self.prior_.shape
        h, w = self.face_.shape
        flat = rng.choice(P * Q, size=n_samples, p=self.prior_.ravel() / self.prior_.sum())
        pos = np.stack([flat // Q, flat % Q], axis=1)
        X = np.broadcast_to(self.background_, (n_samples,) + self.background_.shape).copy()
        for k, (i, j) in enumerate(pos):
            X[k, i:i + h, j:j + w] = self.face_
        X += rng.normal(0.0, self.noise_std_, size=X.shape)
        return X, pos

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Save the fitted model (parameters, history and settings) to ``.npz``."""
        self._check_fitted()
        settings = {k: val for k, val in self.get_params().items()
                    if k not in ("face_init", "background_init", "prior_init", "callback")}
        settings["dtype"] = self._compute_dtype().name
        save_model(path, self._params(), history=np.asarray(self._history_full),
                   n_iter=int(self.n_iter_), converged=bool(self.converged_), settings=settings,
                   moments=list(self._moments), kind="model", runs=self.runs_)

    @classmethod
    def load(cls, path):
        """A fitted `FaceEM` from a file written by `save` (or a checkpoint)."""
        params, extra = load_model(path)
        settings = dict(extra.get("settings", {}))
        settings.pop("face_shape", None)
        if "dtype" in settings:
            settings["dtype"] = np.dtype(settings["dtype"])
        settings = {k: val for k, val in settings.items() if k in cls._get_param_names()}
        est = cls(tuple(params.face.shape), **settings)
        est.face_ = params.face
        est.background_ = params.background
        est.noise_std_ = params.noise_std
        est.prior_ = params.prior
        hist = list(np.asarray(extra.get("history", [])).tolist())
        est._history_full = hist
        est.lower_bounds_ = hist[1:]
        est.lower_bound_ = hist[-1] if hist else float("nan")
        est.n_iter_ = int(extra.get("n_iter", 0))
        est.converged_ = bool(extra.get("converged", False))
        est.image_shape_ = params.background.shape
        est.n_features_in_ = int(np.prod(params.background.shape))
        mom = extra.get("moments")
        est._moments = tuple(mom) if mom is not None else _default_moments(params)
        est.runs_ = extra.get("runs", [])
        return est

    @classmethod
    def resume(cls, path):
        """An estimator that continues the run saved in a checkpoint: call ``fit(X)`` on the same data."""
        est = cls.load(path)
        est.warm_start = True
        return est


def _default_moments(params):
    # a model saved without its map to working units: any affine map works
    # (results are equivariant); use the background's own spread.
    B = params.background
    s = float(B.std()) or 1.0
    return float(B.mean()), s
