"""The estimator's options, declared once: the table from which `FaceEM` and ``emface fit`` are made.

Each `Option` says, once, an option's name, default, type and range (or
choices), its documentation, and its command-line flag if it has one. From the
table come:

- `FaceEM`'s parameter checks (`validate`, through `BaseEstimator`);
- the ``Parameters`` section of `FaceEM`'s docstring (`numpydoc`);
- the click options of ``emface fit`` (`click_options`), whose values
  `estimator_kwargs` turns into `FaceEM`'s, so the CLI cannot drift from the
  estimator.

- `FaceEM.__init__` itself (`init_from_table`): its signature, which
  scikit-learn's ``get_params`` and ``clone`` read, and the attributes it sets.

To add an option (say ``brightness="auto"``): add one `Option` to `OPTIONS`,
with ``flag="--brightness"`` to give ``emface fit`` a flag too. The
estimator then takes ``brightness=``, checks it, documents it and saves it
with its settings; the code that uses it reads ``self.brightness``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

import numpy as np

from . import _validation as v
from .em import ALGORITHMS

__all__ = ["Option", "OPTIONS", "BaseEstimator", "validate", "numpydoc", "click_options", "estimator_kwargs",
           "init_from_table"]

#: the default of a required option (`face_shape`)
REQUIRED = inspect.Parameter.empty

# The choices the modules below implement (`emface.init.INIT_METHODS`, `emface.model.NOISE_MODELS`,
# `emface.engine.plan.BACKENDS`; a test checks they agree): written here, so that the CLI, which reads this
# table when it starts, does not load the engine to show its help.
_INIT_METHODS = ("auto", "random")
_NOISE_MODELS = ("shared", "per_channel")
_BACKENDS = ("auto", "numba", "numpy", "torch")
_ANGLE_SEARCHES = ("sparse", "full")  # `emface.rotation_model.ANGLE_SEARCHES`
_BRIGHTNESS = ("auto", "fixed", "per_image", "per_channel")  # `emface.engine.brightness.BRIGHTNESS`


def _identity(x):
    return x


@dataclass(frozen=True)
class Option:
    """One option of `FaceEM` (and of ``emface fit`` when it has a `flag`).

    Attributes
    ----------
    name : str
        The estimator's parameter.
    default : object
        Its default (`REQUIRED`: none).
    type_doc, doc : str
        Its type and description in the docstring (numpydoc).
    kind : {"int", "real", "bool", "choice", "any"}
        What values it takes; "int" and "real" within [`low`, ∞) (`low_open`:
        (`low`, ∞)); "choice" one of `choices`. "bool" and "any" are not checked
        by kind.
    special : tuple
        Values accepted besides the kind's (``"auto"``, None).
    check : callable(value, name), optional
        A further check (raises ValueError).
    flag : str, optional
        The CLI's flag; a "bool" is a flag without a value (`to_cli` maps
        the default to False).
    cli_doc : str
        The CLI's help.
    to_cli, from_cli : callable
        An estimator value as the CLI spells it, and back (choices, defaults).
    cli : dict
        More click settings (metavar, type, callback, required).
    """

    name: str
    default: object
    type_doc: str
    doc: str
    kind: str = "any"
    low: float | None = None
    low_open: bool = False
    choices: tuple = ()
    special: tuple = ()
    check: object = None
    flag: str | None = None
    cli_doc: str = ""
    to_cli: object = _identity
    from_cli: object = _identity
    cli: dict = field(default_factory=dict)

    def validate(self, value):
        """Raise a ValueError that says what was expected and what was given, or return None."""
        if any(value is s or (isinstance(value, str) and isinstance(s, str) and value == s) for s in self.special):
            return
        if self.kind == "int":
            v.check_int(value, self.name, low=self.low)
        elif self.kind == "real":
            v.check_real(value, self.name, low=self.low, low_inclusive=not self.low_open)
        elif self.kind == "choice":
            v.check_choice(value, self.name, self.choices)
        if self.check is not None:
            self.check(value, self.name)


# ----------------------------------------------------------------------------- checks and CLI spellings

def _check_face_shape(value, name):
    if not isinstance(value, str):  # a string is checked against the images, with them, in fit
        v.check_face_shape_spec(value, (2**62, 2**62), name)


def _check_rotations(value, name):
    from .engine.rotations import angle_grid  # numpy only: the CLI's help does not load the engine's kernels

    angle_grid(value)


def _check_random_state(value, name):
    if not isinstance(value, (np.random.Generator, np.random.RandomState)):
        v.check_random_state(value, name)


def _check_dtype(value, name):
    if value is not None and np.dtype(value) not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"{name} must be None, numpy.float64 or numpy.float32, got {value!r}")


def _check_device(value, name):
    if not isinstance(value, str) or not (value == "cpu" or value.startswith("cuda")):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")


def _check_n_jobs(value, name):
    if value == 0:
        raise ValueError(f"{name} must be a positive int, -1 or None (all cores), got 0")


def _check_memory(value, name):
    from .engine import costs

    costs.parse_memory(value)


def _check_checkpoint(value, name):
    if value is not None:
        from .persistence import check_out_file

        check_out_file(value, "the checkpoint ")


def _auto_as_none(x):
    return None if isinstance(x, str) and x == "auto" else x


def _none_as_auto(x):
    return "auto" if x is None else x


def _hyphens(x):
    return x.replace("_", "-")


def _underscores(x):
    return x.replace("-", "_")


def _not(x):
    return not x


def _dtype_name(x):
    return "auto" if x is None else np.dtype(x).name


def _dtype_of(x):
    return None if x == "auto" else np.dtype(x).type


_SIDE = r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?"


def _parse_face_shape(ctx, param, value):
    """The CLI's face size: HxW, "auto", or ranges such as 20-60x20-60 (a side may be a single number)."""
    import click

    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    m = re.fullmatch(_SIDE + r"[x,*]" + _SIDE, text)
    bad = click.BadParameter(f"expected HxW with two positive integers, such as 48x40, 'auto', or ranges such as "
                             f"20-60x20-60; got {value!r}", param_hint="'--face-shape'")
    if not m:
        raise bad
    h0, h1, w0, w1 = (int(g) if g is not None else None for g in m.groups())
    h1 = h0 if h1 is None else h1
    w1 = w0 if w1 is None else w1
    if min(h0, h1, w0, w1) < 1 or h0 > h1 or w0 > w1:
        raise bad
    if (h0, w0) == (h1, w1):
        return h0, w0
    return (h0, h1), (w0, w1)


# ----------------------------------------------------------------------------- the table

#: every option of `FaceEM`, in the order of its parameters
OPTIONS = (
    Option("face_shape", REQUIRED, '(h, w), "auto", or ((h_min, h_max), (w_min, w_max))',
           'Size of the faces. ``"auto"`` or a pair of ranges chooses it from the\n'
           'data (`emface.face_size`: a coarse search on shrunk images, then each\n'
           'side of the window moved with the positions held, by a penalised\n'
           'likelihood), then fits at the chosen size.',
           check=_check_face_shape, flag="--face-shape",
           cli=dict(required=True, callback=_parse_face_shape, metavar="HxW"),
           cli_doc="Size of the faces (objects), e.g. 48x40; 'auto' to choose it, or a range such as 20-60x20-60."),
    Option("n_faces", 1, 'int, default=1',
           'C, the number of different faces (objects).',
           kind="int", low=1, flag="--faces", cli_doc="Number of different faces (objects) to learn."),
    Option("hard", False, 'bool, default=False',
           "Hard (MAP) EM: each image's posterior is one-hot at its most probable (face, position).",
           kind="bool", flag="--hard", cli_doc="Hard (MAP) EM instead of soft EM."),
    Option("n_init", "auto", 'int or "auto", default="auto"',
           'Number of EM runs from different starts; the one with the best\n'
           'objective is kept. The first run starts from `init`, the others from\n'
           "the note's random start (one face) or data-driven starts on random\n"
           'halves of the images (several faces). ``"auto"``: one run from the\n'
           'data-driven start, and up to 3 more only when it looks like a poor\n'
           'optimum: a mean posterior probability of the chosen position below\n'
           '0.95 and clearly below what the fitted model predicts for images\n'
           'drawn from itself (at low SNR the noise splits the posteriors at the\n'
           'optimum too, and a restart cannot help); never for hard EM, whose\n'
           'posteriors are one-hot. A second run always when the stack is small\n'
           '(fewer than 300 images, where runs cost little): the data-driven start\n'
           'and the escapes find the optimum of every stack of\n'
           '``benchmarks/accuracy.py`` in one run. One run when `face_init` is given.',
           kind="int", low=1, special=("auto",), flag="--restarts", to_cli=_auto_as_none, from_cli=_none_as_auto,
           cli_doc="EM runs from different starts [default: auto, more for small stacks]."),
    Option("max_iter", 100, 'int, default=100',
           'Most EM iterations per run.',
           kind="int", low=0, flag="--max-iter"),
    Option("tol", 1e-3, 'float, default=1e-3',
           'Convergence threshold on the change of the mean per-image objective.\n'
           '``tol=0`` runs every one of `max_iter` iterations (``converged_`` is\n'
           'then False); the ConvergenceWarning is left out when the last\n'
           'iteration left the objective exactly unchanged.',
           kind="real", low=0.0, flag="--tol", cli_doc="Stop when the per-image objective changes by less."),
    Option("prior_smoothing", 0.0, 'float, default=0.0',
           'Dirichlet pseudo-count α added to every (face, position) of A in the\n'
           'M-step (the note uses about K/10 with hard EM).',
           kind="real", low=0.0, flag="--smoothing",
           cli_doc="Prior smoothing: a pseudo-count added to every position of A."),
    Option("init", "auto", '{"auto", "random"}, default="auto"',
           '``"auto"``: a data-driven start (per-pixel median background, the faces\n'
           'from the windows that depart most from it, clustered by k-means++ for\n'
           'several faces). ``"random"``: the note\'s start (F and B uniform over the data\'s range).',
           kind="choice", choices=_INIT_METHODS, flag="--init"),
    Option("face_init", None, 'ndarray, optional',
           'Starting faces in data units: (h, w), (C, h, w), (h, w, Ch) or\n'
           '(C, h, w, Ch). Overrides `init` for the faces.'),
    Option("background_init", None, 'ndarray (H, W) or (H, W, Ch), optional',
           ''),
    Option("noise_std_init", None, 'float or ndarray (Ch,), optional',
           'Starting s.'),
    Option("prior_init", None, 'ndarray (P, Q) or (C, P, Q), optional',
           'Starting A: non-negative, summing to 1. Zeros stay zero without smoothing.'),
    Option("noise", "shared", '{"shared", "per_channel"}, default="shared"',
           "One s for every channel (the note's model; right when the channels\n"
           'share a sensor and a gain, as RGB cameras roughly do), or one s per\n'
           'channel (channels from different detectors or with different gains,\n'
           'such as fluorescence channels).',
           kind="choice", choices=_NOISE_MODELS, flag="--noise", to_cli=_hyphens, from_cli=_underscores,
           cli_doc="One noise level for all colour channels, or one per channel."),
    Option("algorithm", "auto", '{"auto", "batch", "incremental"}, default="auto"',
           '``"batch"``: every iteration reads all images once. ``"incremental"``:\n'
           "Neal and Hinton's incremental EM, an M-step after every block of about\n"
           '250 images for the first sweeps, then batch iterations until `tol`\n'
           'holds (the same answer, in fewer passes on large noisy stacks).\n'
           '``"auto"``: incremental for stacks of at least `INCREMENTAL_MIN_IMAGES`\n'
           'images on this machine; batch on a Dask cluster.',
           kind="choice", choices=ALGORITHMS, flag="--algorithm",
           cli_doc="Batch EM, or incremental EM (an update after every block of images)."),
    Option("accelerate", True, 'bool, default=True',
           'Over-relax the batch iterations once EM crawls (Salakhutdinov and\n'
           'Roweis, 2003): steps stretched past the M-step while that raises the\n'
           'objective, a plain EM step when it would not. Same fixed point, fewer\n'
           'passes at high noise; the objective still never decreases. False: plain EM.',
           kind="bool"),
    Option("random_state", None, 'int, numpy Generator or None',
           '',
           check=_check_random_state, flag="--seed", cli=dict(type=int), cli_doc="Random seed."),
    Option("warm_start", False, 'bool, default=False',
           'Start from the fitted parameters of the previous `fit` and continue its history.',
           kind="bool"),
    Option("verbose", 0, 'int, default=0',
           '1: a line when the fit ends; 2: also one every `verbose_interval` iterations.',
           kind="int", low=0),
    Option("verbose_interval", 10, 'int, default=10',
           '',
           kind="int", low=1),
    Option("shift_escape", True, 'bool, default=True',
           'After convergence, try each face shifted by a few pixels (all its\n'
           'images, or the group of its images whose second choice lies in one\n'
           'direction) and keep moves that raise the objective; EM then continues.',
           kind="bool", flag="--no-shift-escape", to_cli=_not, from_cli=_not,
           cli_doc="Do not try shifted faces after convergence."),
    Option("split_merge", True, 'bool, default=True',
           'With several faces, after convergence try merging the two most similar\n'
           'faces and splitting the one that fits its images worst, keeping moves\n'
           'that raise the objective.',
           kind="bool"),
    Option("dtype", None, '{None, np.float64, np.float32}, default=None',
           'Precision of the correlations; statistics are always float64. None:\n'
           'float64 on the CPU, float32 on a GPU.',
           choices=(None, np.float64, np.float32), check=_check_dtype, flag="--dtype", to_cli=_dtype_name,
           from_cli=_dtype_of, cli_doc="Precision of the correlations (auto: float64 on the CPU, float32 on a GPU)."),
    Option("n_jobs", None, 'int or None, default=None',
           'Threads; None or -1 for all cores.',
           kind="int", special=(None,), check=_check_n_jobs, flag="--n-jobs", cli_doc="Threads [default: all cores]."),
    Option("backend", "auto", '{"auto", "numba", "numpy", "torch"}, default="auto"',
           '``"auto"``: the fused Numba kernels on the CPU, torch on a GPU.\n'
           '``"numpy"`` and ``"torch"`` run the shared array-API kernels (torch\n'
           'also on the CPU).',
           kind="choice", choices=_BACKENDS),
    Option("max_memory", None, 'int or str, optional',
           'Bound on what the engine holds besides the data, e.g. ``"2GB"``. None:\n'
           "cache every image's spectra while they fit in 1 GiB, else up to four\n"
           "fifths of the data's size (`emface.engine.costs.default_cache_budget`).",
           check=_check_memory, flag="--max-memory", cli=dict(metavar="SIZE"),
           cli_doc="Bound on the engine's memory, e.g. 2GB."),
    Option("checkpoint", None, 'path, optional',
           'Save the best state so far every `checkpoint_every` iterations (atomically).',
           check=_check_checkpoint, flag="--checkpoint", cli=dict(metavar="FILE.npz"),
           cli_doc="Save the best state so far as it runs."),
    Option("checkpoint_every", 10, 'int, default=10',
           '',
           kind="int", low=1),
    Option("noise_floor", 1e-6, 'float, default=1e-6',
           "Smallest s, relative to the data's standard deviation.",
           kind="real", low=0.0, low_open=True),
    Option("callback", None, 'callable(dict), optional',
           'Called after every iteration with ``run``, ``iter``, ``objective``\n'
           '(per image, as `lower_bound_`) and ``params``: θ so far, with the\n'
           'attributes ``faces``, ``background``, ``noise_std``, ``prior`` and\n'
           '``empty_weight`` in the layouts of ``faces_``, ``background_``,\n'
           '``noise_std_``, ``prior_`` and ``empty_weight_`` (data units); during\n'
           'incremental sweeps also after every block, with ``block``,\n'
           '``n_blocks``, ``images`` and ``seconds``.'),
    Option("scheduler", None, 'str or distributed.Client, optional',
           'Fit on this Dask cluster (an address such as ``"tcp://host:8786"``).\n'
           'A dask array is fitted on the active client when there is one.',
           flag="--scheduler", cli=dict(metavar="ADDRESS"), cli_doc="Fit on this Dask cluster."),
    Option("device", "cpu", 'str, default="cpu"',
           '``"cuda"`` (or ``"cuda:N"``) runs the engine on an NVIDIA GPU through\n'
           'PyTorch (the ``gpu`` extra; `backend` must then be "auto" or "torch");\n'
           '``"cpu"`` runs the backend\'s kernels on this machine\'s cores.',
           check=_check_device, flag="--device", cli_doc="cpu, or cuda / cuda:N for an NVIDIA GPU."),
    Option("empty_frames", False, 'bool, default=False',
           'Add a "no face" class: a frame may show the background alone\n'
           '(``X_k = B + noise``), with a weight π_∅ fitted with the rest\n'
           '(`empty_weight_`). `predict` then returns (-1, -1) and `predict_face`\n'
           '-1 for frames where "no face" is the most probable.',
           kind="bool", flag="--empty-frames",
           cli_doc="Some frames may show no face: add a 'no face' class (such frames get face -1 in positions.csv)."),
    Option("brightness", "auto", '{"auto", "fixed", "per_image", "per_channel"}, default="auto"',
           'Brightness that changes from frame to frame, ``X_k = a_k·μ + b_k +\n'
           'noise`` (MODEL.md): ``"fixed"`` is the note\'s model (every a = 1,\n'
           'b = 0); ``"per_image"`` fits a gain a_k and an offset b_k per image,\n'
           '``"per_channel"`` one per image and channel (white balance). With\n'
           '``"auto"`` the fit is the note\'s model, then, once it has converged, a\n'
           'likelihood-ratio test at the fitted θ asks whether a gain and offset\n'
           'per image explain the frames better (2ΔlogL on a sample of about 256\n'
           'frames spread over the stack against χ² with 2 degrees of freedom per\n'
           'frame, level 1e-3); only if they do is the stack refitted with\n'
           '``"per_image"`` (`brightness_`, `brightness_test_`). Frames whose\n'
           'brightness does not change thus cost the sums of those frames more\n'
           'than ``"fixed"``; a fit stopped by `max_iter` keeps the note\'s model.\n'
           'Per-image brightness runs batch EM on this machine (not on a Dask\n'
           'cluster).',
           kind="choice", choices=_BRIGHTNESS, flag="--brightness",
           to_cli=_hyphens, from_cli=_underscores,
           cli_doc="Brightness per frame: auto (test, then fit a gain and offset per frame if they change), "
                   "fixed (the note's model), per-image, or per-channel (colour)."),
    Option("rotations", None, 'None, int or sequence of float, default=None',
           'In-plane rotations (MODEL.md, "In-plane rotations"): an int R for R\n'
           'angles equally spaced over 360° (from 0), or the angles in degrees.\n'
           'The face window must be square; the face is the disc inscribed in it,\n'
           'and the window\'s pixels outside the disc show the background. Each\n'
           'image\'s angle is then latent too (`posterior_summary(X).angles`,\n'
           '`angles_`, `angle_prior_`). Runs on the CPU (numpy, scipy and numba;\n'
           'not with the torch backend, Dask, ``empty_frames`` or\n'
           '``brightness="per_channel"``: with rotations brightness is one gain and\n'
           'one offset per image, whose mean offset is not fixed at 0); no\n'
           'shift-escape or split-merge moves. `sample` then also returns each\n'
           'image\'s angle.',
           special=(None,), check=_check_rotations, flag="--rotations", cli=dict(type=int, metavar="R"),
           cli_doc="Search R in-plane angles (equally spaced over 360 degrees) as well as positions; the face "
                   "window must be square (the face is the disc inscribed in it)."),
    Option("angle_search", "sparse", '{"sparse", "full"}, default="sparse"',
           'With rotations: ``"full"`` scores every angle of every image in every\n'
           'pass; ``"sparse"`` (sparse EM) scores only a window of 5 angles about\n'
           'each settled image\'s last best angle, and all angles every 8th pass,\n'
           'when the objective stalls, and before EM stops (`emface.rotation_model`).',
           kind="choice", choices=_ANGLE_SEARCHES, flag="--angle-search",
           cli_doc="With --rotations: search a few angles about each frame's last best (sparse) or all (full)."),)

_BY_NAME = {o.name: o for o in OPTIONS}


def validate(values):
    """Check every option in `values` (a dict name -> value) against the table; raises ValueError."""
    for name, value in values.items():
        if name in _BY_NAME:
            _BY_NAME[name].validate(value)


def numpydoc(indent=4):
    """The ``Parameters`` entries of the table, in numpydoc, indented by `indent` spaces."""
    pad = " " * indent
    out = []
    for o in OPTIONS:
        out.append(f"{pad}{o.name} : {o.type_doc}")
        if o.doc:
            out += [f"{pad}    {line}" if line else "" for line in o.doc.split("\n")]
    return "\n".join(out)


def click_options(f):
    """Decorate a click command with the options that have a flag, in the table's order.

    Each reaches the command under its estimator name with the CLI's value:
    `estimator_kwargs` turns them into `FaceEM`'s.
    """
    import click

    for o in reversed(OPTIONS):
        if o.flag is None:
            continue
        kw = dict(o.cli)
        if o.kind == "bool":
            kw.update(is_flag=True, default=bool(o.to_cli(o.default)))
        else:
            if o.default is not REQUIRED:
                kw["default"] = o.to_cli(o.default)
                kw.setdefault("show_default", o.to_cli(o.default) is not None)
            if o.choices:
                kw.setdefault("type", click.Choice([o.to_cli(c) for c in o.choices]))
            elif o.kind == "int":
                kw.setdefault("type", click.IntRange(min=o.low) if o.low is not None else int)
            elif o.kind == "real":
                kw.setdefault("type", click.FloatRange(min=o.low, min_open=o.low_open))
        f = click.option(o.flag, o.name, help=o.cli_doc or None, **kw)(f)
    return f


def init_from_table(options=None):
    """An ``__init__(self, <first>, *, <others>=default, ...)`` for the options of the table.

    It stores each argument, unchanged, as an attribute of the same name (the
    scikit-learn convention: checks happen in ``fit``). Its ``__signature__``
    lists the options with their defaults, so `inspect.signature`, `help`,
    ``get_params`` and ``sklearn.base.clone`` see the parameters as written
    out by hand.
    """
    options = OPTIONS if options is None else options
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD)]
    params += [P(o.name, P.POSITIONAL_OR_KEYWORD if o.default is REQUIRED else P.KEYWORD_ONLY, default=o.default)
               for o in options]
    signature = inspect.Signature(params)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = signature
    __init__.__doc__ = "Store the options as attributes (see the class docstring); nothing is checked before fit."
    return __init__


def estimator_kwargs(cli_values):
    """The `FaceEM` keyword arguments of the CLI's values of `click_options` (a dict by estimator name)."""
    return {name: _BY_NAME[name].from_cli(value) for name, value in cli_values.items() if name in _BY_NAME}


class BaseEstimator:
    """Parameters as scikit-learn has them (`get_params`, `set_params`, the repr), checked by the table."""

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
                raise ValueError(f"invalid parameter {k!r} for {type(self).__name__}; valid ones are {sorted(valid)}")
            setattr(self, k, val)
        return self

    def _validate_settings(self):
        """Check every parameter against `OPTIONS` (a ValueError that says what was expected)."""
        validate(self.get_params())

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        names = self._get_param_names()
        parts = [repr(getattr(self, names[0]))]
        for k in names[1:]:
            val = getattr(self, k)
            d = defaults.get(k)
            same = False
            try:
                same = val is d or (not isinstance(val, np.ndarray) and val == d)
            except Exception:
                same = False
            if not same:
                parts.append(f"{k}={'<array>' if isinstance(val, np.ndarray) else repr(val)}")
        return f"{type(self).__name__}({', '.join(parts)})"
