"""`FaceEM`: the scikit-learn-style estimator."""

from __future__ import annotations

import inspect
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np

from . import _validation as v
from ._layout import public_background, public_faces, public_noise, public_prior
from .datasets import draw_assignments, render
from .em import _ETA_MAX, ALGORITHMS, ConvergenceWarning, EMSettings, fit_restarts
from .engine import costs
from .engine.brightness import BRIGHTNESS, brightness_test, probe_gains, start_gains
from .engine.mstep import misfit_z, predictive_prior
from .engine.plan import BACKENDS
from .errors import MisfitWarning, ModelFileError, one_line
from .executor import EngineConfig, LocalExecutor
from .init import INIT_METHODS, auto_start, random_start, user_start
from .mixture import NOISE_MODELS, FaceMixture
from .model import Params, _file_name, atomic_save, load_model, save_model
from .sources import ArraySource

__all__ = ["FaceEM", "PosteriorSummary", "INCREMENTAL_MIN_IMAGES"]

#: ``algorithm="auto"`` fits stacks of at least this many images by incremental
#: EM: a conservative threshold, its gain measured at 60,000 and 200,000 images
#: (``benchmarks/incremental.py``); small stacks take a few passes, the first
#: of which (it computes the spectra) costs the same either way.
INCREMENTAL_MIN_IMAGES = 20_000

#: images per block of incremental EM (about; whole chunks are grouped): on
#: 60,000 images of 64x64 at noise 6x, blocks of 250 reached the batch optimum
#: in 7 sweeps (32 s); smaller blocks mean more M-steps per sweep, each block
#: keeping a few face-sized sums (``benchmarks/incremental.py``)
_BLOCK_IMAGES = 250
#: share of `max_memory` the blocks' kept sums may take (blocks grow past
#: `_BLOCK_IMAGES` images to stay within it), and their bound without one
_BLOCK_SHARE = 0.15
_BLOCK_BYTES_DEFAULT = 512 * 2**20

#: n_init="auto": at most this many runs; always two below `_SMALL_STACK`
#: images; more only while the best run's mean posterior probability of the
#: chosen position is below `_CONFIDENT` AND below what the fitted model
#: predicts for its own images (`_DECISIVE_SAMPLES` of them, drawn from it) by
#: more than `_DECISIVE_GAP` or three standard errors: posteriors split by the
#: noise are no sign of a poor optimum, and a restart cannot make them decisive
_AUTO_MAX_RUNS = 4
_SMALL_STACK = 300
_CONFIDENT = 0.95
_DECISIVE_SAMPLES = 1000
_DECISIVE_BYTES = 64 * 2**20
_DECISIVE_GAP = 0.02

#: `fit` warns (`MisfitWarning`) when more than this share of the training
#: frames have a misfit z above `MISFIT_Z`: under the model a frame's z is
#: about N(0, 1), so z > 5 happens to fewer than 1 in 10⁶ frames that follow it
MISFIT_Z = 5.0

#: alternations of the E-step and the (a, b) solve that fit a new image's brightness before its posterior
PREDICT_BRIGHTNESS_STEPS = 4
MISFIT_SHARE = 0.01


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


@dataclass
class PosteriorSummary:
    """What the posterior says about each image, in a few numbers per image.

    Attributes
    ----------
    positions : int ndarray (K, 2)
        Top-left corner (row, column) of the most probable (face, position).
    faces : int ndarray (K,)
        The face of that most probable (face, position).
    probability : ndarray (K,)
        Its posterior probability.
    entropy : ndarray (K,)
        The posterior's entropy over (face, position), in nats.
    face_probability : ndarray (K,)
        The posterior probability of that face, positions summed out.
    log_likelihood : ndarray (K,)
        ``log p(X_k | θ)``.
    misfit : ndarray (K,)
        How badly the model explains each image: the z-score
        ``(E_q[Σ_ch ||X_k,ch - μ_ch||² / s_ch²] - n) / sqrt(2n)``, n = H·W·Ch,
        each channel weighed by its own 1/s_ch² (MODEL.md, "Frames that do
        not fit"). About N(0, 1) for images that follow the model; above 5
        the image is very unlikely under it, whatever `probability` says (a
        high probability then means "the best of bad options").
    no_face_probability : ndarray (K,)
        The posterior probability of "no face" (0 without ``empty_frames=True``).
        Where it wins, `faces` is -1 and `positions` (-1, -1).
    gain, offset : ndarray (K,) or (K, Ch), or None
        Each image's gain a_k and offset b_k (data units) with per-image
        brightness: the fitted ones of the training images, and for new images
        those fitted by `PREDICT_BRIGHTNESS_STEPS` alternations of the E-step
        and the 2×2 solve from a = 1, b = 0, then one more solve under the
        final posterior. None for the note's model.
    """

    positions: np.ndarray
    faces: np.ndarray
    probability: np.ndarray
    entropy: np.ndarray
    face_probability: np.ndarray
    log_likelihood: np.ndarray
    misfit: np.ndarray | None = None
    no_face_probability: np.ndarray | None = None
    gain: np.ndarray | None = None
    offset: np.ndarray | None = None


class FaceEM:
    """Recover faces (any objects) seen at unknown positions in noisy images, by EM.

    Each image ``X[k]`` (H×W, or H×W×Ch in colour) is the background B with
    one of C faces F_c (h×w) pasted at an unknown top-left corner d_k, plus
    Gaussian noise of standard deviation s; the face and its corner are drawn
    from a prior A over the C×P×Q possibilities (P = H-h+1, Q = W-w+1).
    `fit` learns F, B, s and A by expectation-maximisation.

    Parameters
    ----------
    face_shape : (h, w), "auto", or ((h_min, h_max), (w_min, w_max))
        Size of the faces. ``"auto"`` or a pair of ranges chooses it from the
        data (`emface.face_size`: a coarse search on shrunk images, then each
        side of the window moved with the positions held, by a penalised
        likelihood), then fits at the chosen size.
    n_faces : int, default=1
        C, the number of different faces (objects).
    hard : bool, default=False
        Hard (MAP) EM: each image's posterior is one-hot at its most probable (face, position).
    n_init : int or "auto", default="auto"
        Number of EM runs from different starts; the one with the best
        objective is kept. The first run starts from `init`, the others from
        the note's random start (one face) or data-driven starts on random
        halves of the images (several faces). ``"auto"``: one run from the
        data-driven start, and up to 3 more only when it looks like a poor
        optimum: a mean posterior probability of the chosen position below
        0.95 and clearly below what the fitted model predicts for images
        drawn from itself (at low SNR the noise splits the posteriors at the
        optimum too, and a restart cannot help); never for hard EM, whose
        posteriors are one-hot. A second run always when the stack is small
        (fewer than 300 images, where runs cost little): the data-driven start
        and the escapes find the optimum of every stack of
        ``benchmarks/accuracy.py`` in one run. One run when `face_init` is given.
    max_iter : int, default=100
        Most EM iterations per run.
    tol : float, default=1e-3
        Convergence threshold on the change of the mean per-image objective.
        ``tol=0`` runs every one of `max_iter` iterations (``converged_`` is
        then False); the ConvergenceWarning is left out when the last
        iteration left the objective exactly unchanged.
    prior_smoothing : float, default=0.0
        Dirichlet pseudo-count α added to every (face, position) of A in the
        M-step (the note uses about K/10 with hard EM).
    init : {"auto", "random"}, default="auto"
        ``"auto"``: a data-driven start (per-pixel median background, the faces
        from the windows that depart most from it, clustered by k-means++ for
        several faces). ``"random"``: the note's start (F and B uniform over the data's range).
    face_init : ndarray, optional
        Starting faces in data units: (h, w), (C, h, w), (h, w, Ch) or
        (C, h, w, Ch). Overrides `init` for the faces.
    background_init : ndarray (H, W) or (H, W, Ch), optional
    noise_std_init : float or ndarray (Ch,), optional
        Starting s.
    prior_init : ndarray (P, Q) or (C, P, Q), optional
        Starting A: non-negative, summing to 1. Zeros stay zero without smoothing.
    noise : {"shared", "per_channel"}, default="shared"
        One s for every channel (the note's model; right when the channels
        share a sensor and a gain, as RGB cameras roughly do), or one s per
        channel (channels from different detectors or with different gains,
        such as fluorescence channels).
    algorithm : {"auto", "batch", "incremental"}, default="auto"
        ``"batch"``: every iteration reads all images once. ``"incremental"``:
        Neal and Hinton's incremental EM, an M-step after every block of about
        250 images for the first sweeps, then batch iterations until `tol`
        holds (the same answer, in fewer passes on large noisy stacks).
        ``"auto"``: incremental for stacks of at least `INCREMENTAL_MIN_IMAGES`
        images on this machine; batch on a Dask cluster.
    accelerate : bool, default=True
        Over-relax the batch iterations once EM crawls (Salakhutdinov and
        Roweis, 2003): steps stretched past the M-step while that raises the
        objective, a plain EM step when it would not. Same fixed point, fewer
        passes at high noise; the objective still never decreases. False: plain EM.
    random_state : int, numpy Generator or None
    warm_start : bool, default=False
        Start from the fitted parameters of the previous `fit` and continue its history.
    verbose : int, default=0
        1: a line when the fit ends; 2: also one every `verbose_interval` iterations.
    verbose_interval : int, default=10
    shift_escape : bool, default=True
        After convergence, try each face shifted by a few pixels (all its
        images, or the group of its images whose second choice lies in one
        direction) and keep moves that raise the objective; EM then continues.
    split_merge : bool, default=True
        With several faces, after convergence try merging the two most similar
        faces and splitting the one that fits its images worst, keeping moves
        that raise the objective.
    dtype : {None, np.float64, np.float32}, default=None
        Precision of the correlations; statistics are always float64. None:
        float64 on the CPU, float32 on a GPU.
    n_jobs : int or None, default=None
        Threads; None or -1 for all cores.
    backend : {"auto", "numba", "numpy", "torch"}, default="auto"
        ``"auto"``: the fused Numba kernels on the CPU, torch on a GPU.
        ``"numpy"`` and ``"torch"`` run the shared array-API kernels (torch
        also on the CPU).
    max_memory : int or str, optional
        Bound on what the engine holds besides the data, e.g. ``"2GB"``. None:
        cache every image's spectra while they fit in 1 GiB, else up to four
        fifths of the data's size (`emface.engine.costs.default_cache_budget`).
    checkpoint : path, optional
        Save the best state so far every `checkpoint_every` iterations (atomically).
    checkpoint_every : int, default=10
    noise_floor : float, default=1e-6
        Smallest s, relative to the data's standard deviation.
    callback : callable(dict), optional
        Called after every iteration with ``run``, ``iter``, ``objective``,
        ``params``; during incremental sweeps also after every block, with
        ``block``, ``n_blocks``, ``images`` and ``seconds``.
    device : str, default="cpu"
        ``"cuda"`` (or ``"cuda:N"``) runs the engine on an NVIDIA GPU through
        PyTorch (the ``gpu`` extra; `backend` must then be "auto" or "torch");
        ``"cpu"`` runs the backend's kernels on this machine's cores.
    scheduler : str or distributed.Client, optional
        Fit on this Dask cluster (an address such as ``"tcp://host:8786"``).
        A dask array is fitted on the active client when there is one.
    empty_frames : bool, default=False
        Add a "no face" class: a frame may show the background alone
        (``X_k = B + noise``), with a weight π_∅ fitted with the rest
        (`empty_weight_`). `predict` then returns (-1, -1) and `predict_face`
        -1 for frames where "no face" is the most probable.
    brightness : {"auto", "fixed", "per_image", "per_channel"}, default="auto"
        Brightness that changes from frame to frame, ``X_k = a_k·μ + b_k +
        noise`` (MODEL.md): ``"fixed"`` is the note's model (every a = 1,
        b = 0); ``"per_image"`` fits a gain a_k and an offset b_k per image,
        ``"per_channel"`` one per image and channel (white balance). With
        ``"auto"`` the fit is the note's model, then a likelihood-ratio test
        at the fitted θ asks whether a gain and offset per image explain the
        frames better (2ΔlogL against χ² with 2K degrees of freedom, level
        1e-3); only if they do is the stack refitted with ``"per_image"``
        (`brightness_`, `brightness_test_`). Frames whose brightness does
        not change thus cost one pass more than ``"fixed"``. Per-image
        brightness runs batch EM on this machine (not on a Dask cluster).

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
    brightness_test_ : dict or None
        The ``"auto"`` test: ``statistic``, ``dof``, ``p_value``, ``significant``.
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

    def __init__(self, face_shape, *, n_faces=1, hard=False, n_init="auto", max_iter=100, tol=1e-3,
                 prior_smoothing=0.0, init="auto", face_init=None, background_init=None, noise_std_init=None,
                 prior_init=None, noise="shared", algorithm="auto", accelerate=True, random_state=None,
                 warm_start=False,
                 verbose=0, verbose_interval=10, shift_escape=True, split_merge=True, dtype=None, n_jobs=None,
                 backend="auto", max_memory=None, checkpoint=None, checkpoint_every=10, noise_floor=1e-6,
                 callback=None, scheduler=None, device="cpu",
                 empty_frames=False, brightness="auto"):
        self.face_shape = face_shape
        self.n_faces = n_faces
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
        self.noise = noise
        self.algorithm = algorithm
        self.accelerate = accelerate
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.shift_escape = shift_escape
        self.split_merge = split_merge
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
        self.empty_frames = empty_frames
        self.brightness = brightness

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
        v.check_int(self.n_faces, "n_faces", low=1)
        if not (isinstance(self.n_init, str) and self.n_init == "auto"):
            v.check_int(self.n_init, "n_init", low=1)
        v.check_int(self.max_iter, "max_iter", low=0)
        v.check_real(self.tol, "tol", low=0.0)
        v.check_real(self.prior_smoothing, "prior_smoothing", low=0.0)
        v.check_choice(self.init, "init", INIT_METHODS)
        v.check_choice(self.noise, "noise", NOISE_MODELS)
        v.check_choice(self.algorithm, "algorithm", ALGORITHMS)
        v.check_choice(self.brightness, "brightness", BRIGHTNESS)
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
        v.check_choice(self.backend, "backend", BACKENDS)
        costs.parse_memory(self.max_memory)
        if self.checkpoint is not None:
            folder = os.path.dirname(os.path.abspath(os.fspath(self.checkpoint)))
            if not os.path.isdir(folder):
                raise ValueError(f"checkpoint folder {folder!r} does not exist")
            if not os.access(folder, os.W_OK):
                raise ValueError(f"checkpoint folder {folder!r} is not writable")

    def _compute_dtype(self):
        """The correlations' precision: `dtype`, or float64 on the CPU and float32 on a GPU."""
        if self.dtype is not None:
            return np.dtype(self.dtype)
        return np.dtype(np.float32 if self.device != "cpu" else np.float64)

    def _config(self):
        return EngineConfig(dtype=self._compute_dtype(), backend=self.backend,
                            workers=costs.default_workers(self.n_jobs), device=self.device)

    def _make_executor(self, X, face_shape, *, moments=None, chunk_size=None):
        if _is_dask(X) or self.scheduler is not None:
            from .distributed import DaskExecutor, get_client

            client = get_client(self.scheduler)
            owned = isinstance(self.scheduler, str)  # made here for an address: closed after the pass
            if client is not None:
                if not _is_dask(X):
                    import dask.array as da

                    n = costs.chunk_size(tuple(X.shape[1:3]), face_shape, self._compute_dtype().itemsize,
                                         target_bytes=64 * 2**20)
                    X = da.from_array(X, chunks=(n,) + (-1,) * (X.ndim - 1))
                return DaskExecutor(X, face_shape, config=self._config(), client=client,
                                    max_memory=self.max_memory, moments=moments, owns_client=owned)
            # a dask array without a cluster: its slices are computed here, chunk by chunk
        source = ArraySource(X, face_shape, compute_dtype=self._compute_dtype(), max_memory=self.max_memory,
                             moments=moments, n_faces=int(self.n_faces), chunk_size=chunk_size)
        return LocalExecutor(source, self._config())

    def _check_fitted(self):
        if not hasattr(self, "faces_"):
            raise AttributeError(
                "This FaceEM instance is not fitted yet. Call 'fit' with appropriate arguments first."
            )

    def _check_X_predict(self, X):
        X = v.check_stack(X)
        self._check_fitted()
        shape = tuple(int(s) for s in X.shape[1:])
        want = tuple(self.background_.shape)
        if shape != want:
            raise ValueError(
                f"X has images of shape {shape}, but this FaceEM was fitted on images of shape {want}"
            )
        th = self._theta  # what the kernels read: the same geometry, whatever was set by hand
        if tuple(shape[:2]) != th.image_shape or (shape[2] if len(shape) == 3 else 1) != th.n_channels:
            raise ValueError(f"X has images of shape {shape}, but this FaceEM's parameters are for images of "
                             f"{th.image_shape[0]}x{th.image_shape[1]} with {th.n_channels} channel(s)")
        return X

    def __getattr__(self, name):
        # face_ exists for one face only; say so instead of a bare AttributeError
        if name == "face_" and "faces_" in self.__dict__:
            raise AttributeError(f"face_ is defined for n_faces=1; this model has {len(self.faces_)} faces: "
                                 "use faces_")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ fitting
    def _n_init(self, n_images):
        """(most runs, runs always made) for `n_images` images: ``n_init``, or its "auto" rule."""
        if isinstance(self.n_init, str):
            if self.face_init is not None:
                return 1, 1  # the user's start: restarts would replace the faces they chose
            return _AUTO_MAX_RUNS, (2 if n_images < _SMALL_STACK else 1)
        return int(self.n_init), int(self.n_init)

    def _should_restart(self, runs_made, runs, executor=None, model=None):
        """The "auto" rule's question before another run: do the runs so far look like a poor optimum?

        Yes when the best run's images are less decisive (a lower mean
        posterior probability of the chosen position) than the fitted model's
        own images would be: see `_model_decisiveness`. Posteriors that the
        noise splits are split under the right θ too, and no restart helps.
        """
        if len(runs) < runs_made:
            return True
        best = max(runs, key=lambda r: r.objective)
        maxp = None if best.stats is None else best.stats.max_prob
        if maxp is None or float(np.mean(maxp)) >= _CONFIDENT:
            return False
        if executor is None or model is None:
            return True
        seen = float(np.mean(maxp))
        expected, se = _model_decisiveness(executor, model, best.params, np.random.default_rng(len(runs)))
        se = float(np.hypot(se, np.std(maxp) / np.sqrt(len(maxp))))
        return seen < expected - max(_DECISIVE_GAP, 3.0 * se)

    def _model(self, face_shape, src, brightness_groups=0):
        floor = float(self.noise_floor) * (src.working_std() if src.working_std() > 0 else 1.0)
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
        if mode in ("per_image", "per_channel") and (_is_dask(X) or self.scheduler is not None):
            raise ValueError(f"brightness={mode!r} runs on this machine only, not on a Dask cluster: use "
                             "brightness='fixed' there, or a local array")
        return {"per_image": 1, "per_channel": n_channels}.get(mode, 0)

    def _brightness_auto(self, executor, model, best):
        """"auto"'s test at the fitted θ of the note's model (`emface.engine.brightness.brightness_test`)."""
        K = executor.n_images
        st = best.stats
        if st is None or st.positions is None:  # no per-image answers kept: one brightness pass from a = 1, b = 0
            gains, offsets = start_gains(K, 1)
            probe = replace(best.params, gains=gains, offsets=offsets)
            return brightness_test(executor.pass_stats(probe, hard=model.hard, per_image=False).ecm_gain, K, 1)
        src = executor.source
        gain = sum(float(probe_gains(src.chunk(i), best.params, st.positions[a:b], st.labels[a:b]).sum())
                   for i, (a, b) in enumerate(src.bounds))
        return brightness_test(gain, K, 1)

    def _algorithm(self, X):
        """"batch" or "incremental" for these images: `algorithm`, or its "auto" rule."""
        if _is_dask(X) or self.scheduler is not None:
            if self.algorithm == "incremental":
                warnings.warn("algorithm='incremental' runs on this machine only: a Dask cluster fits by batch "
                              "EM (each iteration one pass of the workers over their blocks)", UserWarning,
                              stacklevel=3)
            return "batch"  # Dask fits by batch EM: see the README's "Large stacks and clusters"
        if self.brightness in ("per_image", "per_channel"):
            return "batch"  # each pass updates every image's (a, b): incremental EM's kept sums would go stale
        if self.algorithm == "auto":
            return "incremental" if int(X.shape[0]) >= INCREMENTAL_MIN_IMAGES else "batch"
        return self.algorithm

    def _settings(self, executor, algorithm):
        blocks = []
        if algorithm == "incremental":
            src = executor.source
            per_block = _block_images(executor.n_images, src.image_shape, src.face_shape, int(self.n_faces),
                                      src.n_channels, costs.parse_memory(self.max_memory))
            cur, size = [], 0
            for i, (a, b) in enumerate(executor.bounds):
                cur.append(i)
                size += b - a
                if size >= per_block:
                    blocks.append(cur)
                    cur, size = [], 0
            if cur:
                blocks.append(cur)
        return EMSettings(max_iter=int(self.max_iter), tol=float(self.tol), algorithm=algorithm,
                          block_chunks=blocks, accelerate=bool(self.accelerate))

    def _starts(self, src, model, user, rng):
        n_init, _ = self._n_init(src.n_images)
        if self.warm_start and hasattr(self, "faces_"):
            return [model.start(src.to_working(self._theta))]
        starts = []
        for i in range(n_init):
            seed = rng.integers(2**63)

            def make(i=i, seed=seed):
                r = np.random.default_rng(seed)
                if self.init == "auto" and i == 0:
                    base = auto_start(src, model, r)
                elif self.init == "auto" and model.n_faces > 1:
                    base = auto_start(src, model, r, fraction=0.5)
                else:
                    base = random_start(src, model, r)
                return model.start(user_start(src, base, **user))

            starts.append(make)
        return starts

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
        H, W = int(X.shape[1]), int(X.shape[2])
        _check_faces_vs_images(int(self.n_faces), int(X.shape[0]))
        colour = X.ndim == 4
        Ch = int(X.shape[3]) if colour else 1
        spec = v.check_face_shape_spec(self.face_shape, (H, W))
        C = int(self.n_faces)
        scores = []
        if self.warm_start and hasattr(self, "faces_"):
            h, w = self.face_shape_
        elif isinstance(spec, tuple) and isinstance(spec[0], int):
            h, w = spec
        else:
            h, w = self._choose_face_shape(X, spec, scores)
        user = v.check_params_arrays(
            (H, W), (h, w), n_faces=C, n_channels=Ch, colour=colour, face=self.face_init,
            background=self.background_init, noise_std=self.noise_std_init, prior=self.prior_init,
            noise=self.noise,
        )
        warm = self.warm_start and hasattr(self, "faces_")
        if warm:
            _check_resumed_stack(getattr(self, "_resume_images", None), int(X.shape[0]))
        if warm and (self._theta.faces.shape != (C, Ch, h, w) or self._theta.image_shape != (H, W)):
            raise ValueError(
                f"warm_start needs images of shape {self.background_.shape} and faces of shape "
                f"{self.faces_.shape}, got images {tuple(X.shape[1:])} and {C} face(s) of {(h, w)}"
            )
        algorithm = self._algorithm(X)
        # incremental EM updates θ after every block: chunks no larger than a block
        executor = self._make_executor(X, (h, w), chunk_size=_chunk_cap(X, (h, w), self) if algorithm == "incremental"
                                       else None)
        src = executor.source
        groups = self._brightness_groups(X, Ch, warm)
        model = self._model((h, w), src, groups)
        settings = self._settings(executor, algorithm if not groups else "batch")
        rng = _check_random_state(self.random_state)
        starts = self._starts(src, model, user, rng)
        history = [src.loglik_to_working(o) for o in self._history_full] if warm else None
        accel = getattr(self, "_accel", None) if warm else None
        callback = self._make_callback(src)
        t0 = time.perf_counter()
        made = self._n_init(executor.n_images)[1]
        try:
            best, runs = fit_restarts(executor, model, starts, settings, callback=callback, history=history,
                                      should_restart=lambda runs: self._should_restart(made, runs, executor, model),
                                      accel=accel)
            self.brightness_test_ = None
            if self.brightness == "auto" and not groups and not warm and not (_is_dask(X) or self.scheduler):
                self.brightness_test_ = self._brightness_auto(executor, model, best)
                if self.brightness_test_["significant"]:  # refit from the starts with a gain and offset per image
                    model = self._model((h, w), src, 1)
                    settings = replace(settings, algorithm="batch", block_chunks=[])
                    best, runs = fit_restarts(executor, model, self._starts(src, model, user, rng), settings,
                                              callback=callback, should_restart=lambda runs: self._should_restart(
                                                  made, runs, executor, model))
        except KeyboardInterrupt as exc:
            best = getattr(exc, "emface_best", None)
            if best is not None:
                self._store(best, getattr(exc, "emface_runs", [best]), src, colour, settings)
                self.converged_ = False
            raise
        finally:
            executor.close()
        self.fit_time_ = time.perf_counter() - t0
        self._store(best, runs, src, colour, settings)
        self.__dict__.pop("_resume_images", None)  # resumed: later warm fits may take other stacks
        self.face_shape_scores_ = scores
        if self.verbose:
            print(f"FaceEM: best objective {self.lower_bound_:.6g} per image after {self.n_iter_} iterations "
                  f"({'converged' if self.converged_ else 'not converged'}) in {self.fit_time_:.2f} s")
        if best.n_uncovered:
            warnings.warn(
                f"{best.n_uncovered} background pixel(s) are covered by a face in every image: "
                "they have no background evidence and keep their starting values",
                UserWarning,
                stacklevel=2,
            )
        self._warn_misfit()
        # tol=0 runs every iteration: no warning when the last one left the objective exactly unchanged
        settled = len(best.objectives) >= 2 and best.objectives[-1] == best.objectives[-2]
        if not self.converged_ and settings.max_iter > 0 and not settled:
            warnings.warn(
                f"Best EM run did not converge in max_iter={self.max_iter} iterations (tol={self.tol}). "
                "Try a larger max_iter or tol, or more restarts.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _choose_face_shape(self, X, spec, record):
        """The face size for X by `emface.face_size.search`, with this estimator's engine settings."""
        from .face_size import search

        rng = _check_random_state(self.random_state)
        return search(X, self._config(), n_faces=int(self.n_faces), face_shape=spec, noise=self.noise,
                      noise_floor=float(self.noise_floor), random_state=int(rng.integers(2**31)), record=record)

    def _make_callback(self, src):
        user_cb = self.callback
        verbose = int(self.verbose)
        interval = int(self.verbose_interval)
        ckpt = self.checkpoint
        every = int(self.checkpoint_every)
        state = {"best": None}

        def cb(info):
            obj = src.loglik_to_data(info["objective"])
            if "block" not in info and (state["best"] is None or obj > state["best"][0]):
                state["best"] = (obj, info)
            if verbose >= 2 and "block" not in info and info["iter"] % interval == 0:
                print(f"  run {info['run']} iteration {info['iter']}: objective {obj:.6g}")
            if ckpt is not None and "block" not in info and info["iter"] > 0 and info["iter"] % every == 0:
                self._write_checkpoint(ckpt, src, state["best"][1])
            if user_cb is not None:
                user_cb(dict(info, objective=obj, params=src.to_data(info["params"])))

        return cb

    def _saved_settings(self):
        settings = {k: val for k, val in self.get_params().items()
                    if k not in ("face_init", "background_init", "prior_init", "noise_std_init", "callback",
                                 "checkpoint", "scheduler")}
        settings["dtype"] = self._compute_dtype().name
        return settings

    def _write_checkpoint(self, path, src, best_info):
        p = src.to_data(best_info["params"])
        hist = src.loglik_to_data(np.asarray(best_info["history"]))

        def write(tmp):
            save_model(tmp, p, history=hist, n_iter=int(best_info["iter"]), run=int(best_info["run"]),
                       settings=self._saved_settings(), moments=[src.offset, src.scale], kind="checkpoint",
                       n_images=int(src.n_images),
                       colour=len(src.data.shape) == 4, accel=list(best_info.get("accel", (1.0, None))))

        try:
            atomic_save(path, write)
        except OSError as exc:  # a full disk must not end a long fit: warn, and the fit goes on
            warnings.warn(f"could not write the checkpoint {path}: {exc.strerror or exc}; the fit goes on",
                          UserWarning, stacklevel=2)

    def _store(self, best, runs, src, colour, settings):
        to_data = src.loglik_to_data
        self._set_theta(src.to_data(best.params), colour)
        self.lower_bound_ = to_data(best.objective)
        self._history_full = [to_data(o) for o in best.objectives]
        self.lower_bounds_ = self._history_full[1:]
        self.n_iter_ = best.n_iter
        self.converged_ = best.converged
        self._accel = best.accel
        st = best.stats
        self.positions_ = None if st is None else st.positions
        self.labels_ = None if st is None else st.labels
        self.misfit_ = None if st is None or st.chi2 is None else misfit_z(st.chi2, self._n_values(src))
        self._train_summary = None
        if st is not None and st.positions is not None and not self.hard:
            self._train_summary = _summary(st, src, best.params)
            self.misfit_ = self._train_summary.misfit
        self.best_run_ = best.init_index
        self.algorithm_ = settings.algorithm
        self.runs_ = [dict(run=r.init_index, objectives=[to_data(o) for o in r.objectives],
                           n_iter=r.n_iter, converged=r.converged, moves=[list(m) for m in r.moves])
                      for r in runs]
        self.n_features_in_ = int(np.prod(src.image_shape)) * src.n_channels
        self.image_shape_ = tuple(src.image_shape)
        self._moments = (src.offset, src.scale)
        self.n_images_fit_ = int(src.n_images)
        self._fit_smoothing = float(self.prior_smoothing)

    @property
    def prior_predictive_(self):
        """The prior of a new image's (face, position), in the layout of `prior_` (see the class docstring)."""
        self._check_fitted()
        return public_prior(self._predictive_theta().prior)

    def _predictive_theta(self):
        """θ with A replaced by its posterior predictive: what a new image is judged under.

        A model saved without its number of training images keeps its fitted A.
        """
        th = self._theta
        K = getattr(self, "n_images_fit_", None)
        if K is None:
            return th
        # the α the fit used (a later set_params must not change what the fitted A's counts were)
        alpha = getattr(self, "_fit_smoothing", self.prior_smoothing)
        A, pi0 = predictive_prior(th.prior, K, float(alpha), th.empty_weight)
        return Params(th.faces, th.background, th.noise_std, A, pi0, th.gains, th.offsets)

    def _set_theta(self, theta, colour):
        """Keep θ (data units, engine layout) and expose it in the user's layout."""
        self._theta = theta
        self._colour = bool(colour)
        self.face_shape_ = tuple(theta.face_shape)
        self.faces_ = public_faces(theta.faces, colour)
        if theta.n_faces == 1:
            self.face_ = self.faces_[0]
        else:
            self.__dict__.pop("face_", None)
        self.background_ = public_background(theta.background, colour)
        self.noise_std_ = public_noise(theta.noise_std, self.noise == "per_channel")
        self.prior_ = public_prior(theta.prior)
        self.weights_ = theta.weights
        self.empty_weight_ = theta.empty_weight
        g = theta.gains
        self.brightness_ = "fixed" if g is None else ("per_channel" if g.shape[1] > 1 else "per_image")
        self.gains_, self.offsets_ = (None, None) if g is None else _public_brightness(g.copy(), theta.offsets.copy())

    # ------------------------------------------------------------------ inference
    def _pass(self, X, output=None, as_training=False):
        X = self._check_X_predict(X)
        ex = self._make_executor(X, self._theta.face_shape, moments=self._moments)
        try:
            _check_working_range(ex.source)
            params = ex.source.to_working(self._theta if as_training else self._predictive_theta())
            params, steps = self._new_brightness(params, ex.n_images, as_training)
            if output is None:
                return ex, ex.pass_stats(params, hard=False, fit_steps=steps), None
            stats, full = ex.collect(params, hard=False, output=output, fit_steps=steps)
            return ex, stats, full
        finally:
            ex.close()

    def _new_brightness(self, params, n_images, as_training):
        """θ with the (a, b) the pass starts from, and the alternations that fit them first.

        New images' brightness is not known: each starts at a = 1, b = 0 and
        `PREDICT_BRIGHTNESS_STEPS` alternations of the E-step and the 2×2
        solve fit it before the posterior is taken. The training images
        judged as such (``as_training``) keep their fitted (a, b).
        """
        g = self._theta.gains
        if g is None:
            return replace(params, gains=None, offsets=None), 0
        if as_training and params.gains is not None and len(params.gains) == n_images:
            return params, 0
        gains, offsets = start_gains(n_images, g.shape[1])
        return replace(params, gains=gains, offsets=offsets), PREDICT_BRIGHTNESS_STEPS

    def predict(self, X):
        """Top-left corner of the most probable (face, position) in each image.

        Returns
        -------
        ndarray of int, shape (K, 2): row and column; (-1, -1) where "no
        face" is more probable than every (face, position) (``empty_frames=True``).
        """
        _, stats, _ = self._pass(X)
        return stats.positions

    def predict_face(self, X):
        """The most probable face of each image, positions summed out.

        Returns
        -------
        ndarray of int, shape (K,)
            -1 where "no face" is more probable than every face (``empty_frames=True``).
        """
        _, stats, _ = self._pass(X)
        face = np.argmax(stats.class_prob, axis=1)
        empty = stats.empty_prob > stats.class_prob[np.arange(len(face)), face]
        return np.where(empty, -1, face)

    def predict_proba(self, X):
        """Posterior over positions for each image: (K, P, Q) for one face, (K, C, P, Q) for several.

        With ``empty_frames=True`` each image's posterior sums to 1 minus its
        probability of "no face" (`posterior_summary`'s ``no_face_probability``).
        """
        _, _, q = self._pass(X, output="q")
        return q[:, 0] if q.shape[1] == 1 else q

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

    def posterior_summary(self, X=None, *, as_training=False):
        """Per-image summaries of the soft posterior: position, face, their probabilities, entropy.

        Parameters
        ----------
        X : array-like, optional
            Images to summarise, by one soft E-step pass under the fitted θ,
            judged as new images (under `prior_predictive_`).
            None: the images of the last `fit`, from the E-step that fit ended
            with (soft fits only: a hard fit's posteriors are one-hot, so its
            images need to be passed again for their soft posteriors).
        as_training : bool, default=False
            Judge X as the images the model was fitted on, under the fitted
            prior `prior_` (as the fit's own answers are): for the soft
            summary of a hard fit's or an interrupted fit's own images.

        Returns
        -------
        PosteriorSummary
        """
        if X is None:
            self._check_fitted()
            if getattr(self, "_train_summary", None) is None:
                raise ValueError("posterior_summary() without X needs a soft fit (hard=False): pass the images")
            return self._train_summary
        ex, stats, _ = self._pass(X, as_training=as_training)
        return _summary(stats, ex.source)

    @staticmethod
    def _n_values(src):
        """n = H·W·Ch, the values of one image (the misfit's degrees of freedom)."""
        H, W = src.image_shape
        return H * W * src.n_channels

    def _warn_misfit(self):
        """`MisfitWarning` when more than `MISFIT_SHARE` of the training frames have z > `MISFIT_Z`."""
        z = getattr(self, "misfit_", None)
        if z is None or len(z) == 0:
            return
        bad = int(np.count_nonzero(z > MISFIT_Z))
        if bad <= MISFIT_SHARE * len(z):
            return
        hint = ("some frames may show no face: try empty_frames=True; " if not self.empty_frames else "")
        warnings.warn(
            f"{bad} of {len(z)} frames ({100.0 * bad / len(z):.1f}%) do not fit the model (misfit z > {MISFIT_Z:g}; "
            f"frames that follow it stay below about 3). Their positions and probabilities are the best of bad "
            f"options. What to try: {hint}look at the worst frames (misfit_, posterior_summary(X).misfit, the "
            "report's misfit section); other objects, occlusions, changes of brightness or rotations are not "
            "modelled; a different face_shape or n_faces may explain them.",
            MisfitWarning,
            stacklevel=3,
        )

    def sample(self, n_samples=1, random_state=None):
        """Draw images from the fitted model.

        Returns
        -------
        X : ndarray (n_samples, H, W) or (n_samples, H, W, Ch)
        positions : ndarray of int (n_samples, 2)
            (-1, -1) for an image drawn without a face (``empty_frames=True``).
        labels : ndarray of int (n_samples,)
            The face of each image (-1: no face); returned only for several faces.
        """
        self._check_fitted()
        n_samples = v.check_int(n_samples, "n_samples", low=1)
        th = self._theta
        _check_sample_memory(n_samples, th)
        rng = _check_random_state(random_state)
        C = th.n_faces
        X, labels, pos = _draw_means(th, n_samples, rng)
        step = max(1, _SAMPLE_NOISE_BLOCK // max(1, X[0].size))
        for a in range(0, n_samples, step):  # the noise a block at a time: the same draws, no second copy of X
            X[a:a + step] += rng.normal(0.0, 1.0, size=X[a:a + step].shape) * th.noise_std
        X = X if self._colour else X[..., 0]
        return (X, pos, labels) if C > 1 else (X, pos)

    # ------------------------------------------------------------------ persistence
    def save(self, path):
        """Save the fitted model (parameters, history and settings) to ``.npz``, atomically: a failure
        leaves an earlier file at `path` intact, and a symlink at `path` is replaced, never followed."""
        self._check_fitted()
        atomic_save(path, lambda out: save_model(
            out, self._theta, history=np.asarray(self._history_full), n_iter=int(self.n_iter_),
            converged=bool(self.converged_), settings=self._saved_settings(), moments=list(self._moments),
            kind="model", runs=self.runs_, colour=self._colour, best_run=int(self.best_run_),
            accel=list(self._accel),
            algorithm=self.algorithm_, face_shape_scores=getattr(self, "face_shape_scores_", []),
            n_images=getattr(self, "n_images_fit_", None)), numpy_name=True)

    @classmethod
    def load(cls, path):
        """A fitted `FaceEM` from a file written by `save` (or a checkpoint).

        A model file is untrusted input: θ is validated by
        `emface.model.load_model` (shapes, dtypes, finite values, s > 0, a
        prior >= 0 summing to 1), and the settings and history beside it
        here (types, ranges, the map to working units), before anything
        computes with them.

        Raises
        ------
        emface.errors.ModelFileError
            A file that is not a usable emface model (a ValueError; one line, naming the file).
        OSError
            A file that cannot be opened.
        """
        params, extra = load_model(path)
        st = _loaded_state(cls, params, extra, _file_name(path))
        est = cls(tuple(params.face_shape), **st["settings"])
        est._set_theta(params, st["colour"])
        hist = st["history"]
        est._history_full = hist
        est.lower_bounds_ = hist[1:]
        est.lower_bound_ = hist[-1] if hist else float("nan")
        est.n_iter_ = st["n_iter"]
        est.converged_ = st["converged"]
        est.image_shape_ = params.image_shape
        est.n_features_in_ = int(np.prod(params.image_shape)) * params.n_channels
        est._moments = st["moments"]
        est.runs_ = st["runs"]
        est._accel = st["accel"]
        est.best_run_ = st["best_run"]
        est.algorithm_ = st["algorithm"]
        est.face_shape_scores_ = st["face_shape_scores"]
        est.n_images_fit_ = st["n_images"]
        est._fit_smoothing = float(est.prior_smoothing)
        est.positions_ = est.labels_ = None  # not kept in the file: predict(X) gives them
        est.misfit_ = None
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


def _block_images(n_images, image_shape, face_shape, n_faces, n_channels, max_memory):
    """Images per block of incremental EM: `_BLOCK_IMAGES`, or more where the
    blocks' kept sums (N, S_F and XC, float64, per block) would pass their share
    of the memory budget (`_BLOCK_SHARE` of `max_memory`, else
    `_BLOCK_BYTES_DEFAULT`)."""
    (H, W), (h, w) = image_shape, face_shape
    P, Q = H - h + 1, W - w + 1
    # N, S_F and XC; SX beside them while the first sweep runs
    per_block = 8 * (n_faces * P * Q + n_faces * n_channels * h * w + 2 * n_channels * H * W)
    budget = _BLOCK_SHARE * max_memory if max_memory is not None else _BLOCK_BYTES_DEFAULT
    max_blocks = max(2, int(budget // per_block))
    return max(_BLOCK_IMAGES, -(-int(n_images) // max_blocks))


def _chunk_cap(X, face_shape, est):
    """Images per chunk for incremental EM: the usual size, but at most a block's worth."""
    n = costs.chunk_size(tuple(X.shape[1:3]), face_shape, est._compute_dtype().itemsize, n_images=int(X.shape[0]),
                         n_faces=int(est.n_faces), n_channels=int(X.shape[3]) if len(X.shape) == 4 else 1)
    return max(1, min(n, _BLOCK_IMAGES // 4 or 1))


def _summary(stats, src, params=None):
    """The per-image summary; the (a, b) of `params` (the E-step's) when given, else the pass's updated ones."""
    gains, offsets = (stats.gains, stats.offsets) if params is None or params.gains is None else (
        params.gains, params.offsets)
    if gains is not None:  # working units to the data's, as `Params.affine` maps them
        gains, offsets = _public_brightness(gains, src.scale * offsets + src.offset * (1.0 - gains))
    cls = stats.class_prob
    empty = np.zeros(len(cls)) if stats.empty_prob is None else stats.empty_prob
    labels = stats.labels
    H, W = src.image_shape
    return PosteriorSummary(
        positions=stats.positions,
        faces=labels,
        probability=stats.max_prob,
        entropy=stats.entropy,
        face_probability=np.where(labels >= 0, cls[np.arange(len(cls)), np.maximum(labels, 0)], empty),
        log_likelihood=src.loglik_to_data(stats.image_loglik),
        misfit=None if stats.chi2 is None else misfit_z(stats.chi2, H * W * src.n_channels),
        no_face_probability=empty,
        gain=gains,
        offset=offsets,
    )


def _public_brightness(g, b):
    """(gains, offsets) as users see them: (K,) for one per image, (K, Ch) for one per channel."""
    return (g[:, 0], b[:, 0]) if g.shape[1] == 1 else (g, b)


def _draw_means(theta, n, rng):
    """n images' (face, corner) drawn from θ's prior ("no face" with its weight: label -1, corner (-1, -1))
    and their mean images, (n, H, W, Ch) float64 without noise: what `sample` and the restart rule draw."""
    labels, pos = draw_assignments(theta.prior, n, rng)
    if theta.empty_weight:
        empty = rng.random(n) < theta.empty_weight
        labels[empty] = -1
        pos[empty] = -1
    X = render(public_background(theta.background, True), public_faces(theta.faces, True), labels, pos)
    return X, labels, pos


def _model_decisiveness(executor, model, params, rng):
    """(mean, standard error) of the posterior probability of the chosen position on images of θ itself.

    Draws up to `_DECISIVE_SAMPLES` images from the model θ (working units:
    its prior, faces, background and noise) and runs one soft E-step on them
    with the engine of `executor`. A fit whose own images are as decisive as
    the data's is as decisive as the noise allows.
    """
    C, Ch, h, w = params.faces.shape
    H, W = params.image_shape
    n = int(max(8, min(_DECISIVE_SAMPLES, executor.n_images, _DECISIVE_BYTES // (8 * H * W * Ch))))
    X, _, _ = _draw_means(params, n, rng)
    X += rng.standard_normal(X.shape) * params.noise_std
    X = X if Ch > 1 else X[..., 0]
    # one pass: spectra are not worth caching (and the fit's own cache is still held)
    src = ArraySource(X, (h, w), compute_dtype=executor.config.dtype, moments=(0.0, 1.0), check_finite=False,
                      n_faces=C, max_memory=_DECISIVE_BYTES // 4)
    # images drawn from θ itself have no brightness of their own
    params = replace(params, gains=None, offsets=None)
    maxp = LocalExecutor(src, executor.config).pass_stats(params, hard=model.hard).max_prob
    return float(np.mean(maxp)), float(np.std(maxp) / np.sqrt(n))


def _default_moments(params):
    # a model saved without its map to working units: any affine map works
    # (results are equivariant); use the background's own spread, computed
    # without overflow or underflow at any scale.
    from .sources import working_map

    return working_map(params.background)


#: |values| in working units the kernels are trusted with: squares and ratios such as (F / s)²
#: summed over an image stay far inside float64 (data are mapped to about unit spread)
_WORKING_LIMIT = 1e50
#: values per block of `sample`'s noise
_SAMPLE_NOISE_BLOCK = 2**22


def _check_faces_vs_images(n_faces, n_images):
    if n_faces > n_images:
        raise ValueError(f"n_faces={n_faces} is more than the number of images ({n_images}): each face needs "
                         "images to be learnt from; use n_faces <= the number of images")


def _check_resumed_stack(expected, n_images):
    if expected is not None and expected != n_images:
        raise ValueError(f"this checkpoint's run fitted {expected} images, but fit was given {n_images}: "
                         "a resumed run continues on the same stack (to start a new fit from its parameters, "
                         "pass them as face_init, background_init, noise_std_init and prior_init)")


def _check_working_range(src):
    """New images under a fitted map to working units: refuse values the kernels cannot square in float64."""
    dt = np.dtype(src.data.dtype)
    if src.data_range is None and dt.kind in "biu":  # integers: their dtype's range may do, without a pass
        info = np.iinfo(np.uint8 if dt.kind == "b" else dt)
        if max(abs(info.min - src.offset), abs(info.max - src.offset)) / src.scale <= _WORKING_LIMIT:
            return
    lo, hi = src.working_range()
    big = max(abs(lo), abs(hi))
    if not big <= _WORKING_LIMIT:
        raise ValueError(f"X holds values from {src.data_range[0]:.6g} to {src.data_range[1]:.6g}: too far "
                         f"from the data this model was fitted on (centre {src.offset:.6g}, spread "
                         f"{src.scale:.6g}) to be evaluated in float64; give X in the model's units")


def _check_sample_memory(n_samples, theta):
    """`sample` refuses a draw larger than the memory available, instead of being killed for it."""
    from .sources import available_memory

    per_image = 8 * int(np.prod(theta.background.shape)) + 64
    need = n_samples * per_image
    avail = available_memory()
    if need > avail:
        raise ValueError(f"sample(n_samples={n_samples}) needs about {need / 2**30:.3g} GiB ({per_image:,} bytes "
                         f"per image), more than the {avail / 2**30:.3g} GiB of memory available: draw fewer "
                         "images at a time")


#: settings `save` writes that describe the machine that fitted, not the model: the loaded model
#: computes with this machine's defaults
_MACHINE_SETTINGS = ("face_shape", "device", "backend", "dtype", "n_jobs", "max_memory", "scheduler", "checkpoint")
#: settings never saved (arrays and callables): a file that holds them is not trusted with them
_UNSAVED_SETTINGS = ("face_init", "background_init", "noise_std_init", "prior_init", "callback", "n_faces")


def _is_real(x):
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float64
        return False


def _is_count(x, low=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _loaded_state(cls, params, extra, name):
    """The settings and history saved beside θ, validated (one-line `ModelFileError` naming the file)."""

    def bad(what, value, expected):
        text = repr(value)
        text = text if len(text) <= 80 else text[:77] + "..."
        return ModelFileError(one_line(f"{name}: its {what} is {text}; expected {expected}"))

    settings = extra.get("settings", {})
    if not isinstance(settings, dict):
        raise bad("'settings'", settings, "a JSON object")
    names = set(cls._get_param_names()) - set(_MACHINE_SETTINGS) - set(_UNSAVED_SETTINGS)
    settings = {k: val for k, val in settings.items() if k in names}
    settings["n_faces"] = params.n_faces
    if not (settings.get("random_state") is None or _is_count(settings["random_state"])):
        raise bad("random_state", settings["random_state"], "null or an int >= 0")
    probe = cls(tuple(params.face_shape), **settings)
    try:
        probe._validate_settings()
    except ValueError as exc:
        raise ModelFileError(one_line(f"{name}: its settings are not valid: {exc}")) from None
    if bool(settings.get("empty_frames", False)) != (params.empty_weight is not None):
        raise bad("'empty_frames' setting", settings.get("empty_frames", False),
                  "true exactly when the file holds the 'no face' class's weight ('empty_weight')")
    noise = settings.get("noise", "shared")
    if noise != "per_channel" and not np.all(params.noise_std == params.noise_std[0]):
        raise bad("noise_std", params.noise_std.tolist(), "one shared value (its settings say noise='shared')")
    colour = extra.get("colour", False)
    if not isinstance(colour, bool) or (params.n_channels > 1 and not colour):
        raise bad("'colour'", colour, f"true or false (true for its {params.n_channels} channels)"
                  if params.n_channels > 1 else "true or false")
    hist = extra.get("history", [])
    try:
        hist = np.asarray(hist)
    except Exception:  # ragged or odd JSON
        raise bad("history", hist, "a list of numbers") from None
    if hist.dtype.kind not in "biuf" or hist.ndim != 1 or np.isnan(hist).any() or (hist == np.inf).any():
        raise bad("history", hist.tolist(), "a list of numbers (objectives; -inf for an unevaluated start)")
    state = dict(settings=settings, colour=colour, history=[float(o) for o in hist])
    checks = [
        ("n_iter", 0, lambda x: _is_count(x), "a count >= 0"),
        ("converged", False, lambda x: isinstance(x, bool), "true or false"),
        ("runs", [], lambda x: isinstance(x, list) and all(isinstance(r, dict) for r in x), "a list of objects"),
        ("best_run", 0, lambda x: _is_count(x), "a count >= 0"),
        ("algorithm", "batch", lambda x: x in ("batch", "incremental"), "'batch' or 'incremental'"),
        ("face_shape_scores", [], lambda x: isinstance(x, list) and all(isinstance(r, dict) for r in x),
         "a list of objects"),
        ("n_images", None, lambda x: x is None or _is_count(x, 1), "a count >= 1"),
    ]
    for key, default, ok, expected in checks:
        val = extra.get(key, default)
        if not ok(val):
            raise bad(f"'{key}'", val, expected)
        state[key] = val
    accel = extra.get("accel", [1.0, None])
    if (not isinstance(accel, (list, tuple)) or len(accel) != 2 or not _is_real(accel[0])
            or not 1.0 <= accel[0] <= _ETA_MAX or not (accel[1] is None or _is_real(accel[1]))):
        raise bad("'accel'", accel, f"[1 <= eta <= {_ETA_MAX:g}, a number or null]")
    state["accel"] = (float(accel[0]), None if accel[1] is None else float(accel[1]))
    mom = extra.get("moments")
    if mom is None:
        state["moments"] = _default_moments(params)
    elif (not isinstance(mom, (list, tuple)) or len(mom) != 2 or not all(_is_real(m) for m in mom)
            or not mom[1] > 0):
        raise bad("'moments'", mom, "[offset, scale > 0], two finite numbers")
    else:
        state["moments"] = (float(mom[0]), float(mom[1]))
    _check_model_range(params, state["moments"], bad)
    return state


def _check_model_range(params, moments, bad):
    """θ in working units stays within `_WORKING_LIMIT` (s within its inverse too)."""
    offset, scale = moments
    with np.errstate(over="ignore", invalid="ignore"):
        big = max(float(np.max(np.abs(params.faces / scale - offset / scale))),
                  float(np.max(np.abs(params.background / scale - offset / scale))))
        s = params.noise_std / scale
    if not big <= _WORKING_LIMIT:
        raise bad("largest face or background value in working units (under its 'moments')", big,
                  f"at most {_WORKING_LIMIT:g} spreads from its centre")
    if not (np.all(s >= 1.0 / _WORKING_LIMIT) and np.all(s <= _WORKING_LIMIT)):
        raise bad("noise_std in working units (under its 'moments')", s.tolist(),
                  f"from {1 / _WORKING_LIMIT:g} to {_WORKING_LIMIT:g} spreads")
