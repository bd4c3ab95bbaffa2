"""What a fit leaves: the fitted state, one record.

`FittedState` is the one record of a fitted `FaceEM`: the fit stores it
(`FittedState.from_run`), `save` and the checkpoints write it (`write_state`),
`load` reads and validates it (`read_state`), and the estimator's fitted
attributes are set from it and read back into it (`apply_to`, `read_from`).
Each field declares, once, the estimator attribute it is, how a file keeps it
(``"meta"``: JSON in the file's settings; ``"array"``: an array of the
``.npz``; None: the training images' own answers, not saved), its value in a
file written before it existed, and the check a loaded value must pass.

To add a fitted attribute (per-image gains, angles...): add a field here with
`_field`, and set it in `from_run`. Saving, loading, checkpoints, resuming and
the estimator's attribute follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from .em import ETA_MAX
from .engine.mstep import misfit_z
from .engine.records import Params
from .errors import ModelFileError, one_line
from .persistence import file_name, load_model, save_model
from .posterior import WORKING_LIMIT, PosteriorSummary, n_values, summarise

__all__ = ["FittedState", "read_state", "write_state", "bad_value"]


# ----------------------------------------------------------------------------- checks of loaded values

def _is_real(x):
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float64
        return False


def _is_count(x, low=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _is_list_of_objects(x):
    return isinstance(x, list) and all(isinstance(r, dict) for r in x)


def _is_test(x):
    """None, or the dict of `brightness_test`."""
    return x is None or (isinstance(x, dict) and set(x) == {"statistic", "dof", "p_value", "significant"}
                         and all(_is_real(x[k]) or (x[k] == math.inf and k == "statistic")
                                 for k in ("statistic", "dof", "p_value")) and isinstance(x["significant"], bool))


#: what a converter of loaded values returns for a value it refuses
_BAD = object()


def _history(x):
    """Objectives (a list or an array; -inf for an unevaluated start) -> a list of floats, or `_BAD`."""
    try:
        a = np.asarray(x)
    except Exception:  # ragged or odd JSON
        return _BAD
    if a.dtype.kind not in "biuf" or a.ndim != 1 or np.isnan(a).any() or (a == np.inf).any():
        return _BAD
    return [float(o) for o in a]


def _accel(x):
    """[η, last gain] -> (float, float or None), or `_BAD`."""
    if (not isinstance(x, (list, tuple)) or len(x) != 2 or not _is_real(x[0]) or not 1.0 <= x[0] <= ETA_MAX
            or not (x[1] is None or _is_real(x[1]))):
        return _BAD
    return float(x[0]), None if x[1] is None else float(x[1])


def _moments(x):
    """[offset, scale > 0] -> (float, float); null -> None (any map does: see `read_state`); else `_BAD`."""
    if x is None:
        return None
    if not isinstance(x, (list, tuple)) or len(x) != 2 or not all(_is_real(m) for m in x) or not x[1] > 0:
        return _BAD
    return float(x[0]), float(x[1])


def _valid(check):
    """A bool check as a converter: the value itself, or `_BAD` when it fails."""
    return lambda x: x if check(x) else _BAD


def _field(default, *, attr, saved="meta", convert=None, expected=""):
    """A field of `FittedState`.

    Parameters
    ----------
    default
        Its value in a file written before it existed (a list is copied).
    attr : str
        The estimator's attribute.
    saved : {"meta", "array", None}
        How files keep it: JSON, an array of the ``.npz``, or not at all.
    convert : callable(value) -> value or `_BAD`
        A loaded value, checked and converted (`_BAD`: refused, the message saying `expected`).
    """
    meta = dict(attr=attr, saved=saved, convert=convert, expected=expected)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FittedState:
    """The fitted state of a `FaceEM`, in data units (see the module's docstring).

    Attributes
    ----------
    theta : Params
        θ in the engine's layout; the estimator shows it as ``faces_``,
        ``background_``, ``noise_std_``, ``prior_``, ``empty_weight_``.
    colour : bool
        The images had a channel axis.
    history : list of float
        The best run's objectives per image, its start's first.
    """

    theta: Params
    colour: bool = _field(False, attr="_colour", convert=_valid(lambda x: isinstance(x, bool)),
                          expected="true or false")
    history: list = _field([], attr="_history_full", saved="array", convert=_history,
                           expected="a list of numbers (objectives; -inf for an unevaluated start)")
    n_iter: int = _field(0, attr="n_iter_", convert=_valid(_is_count), expected="a count >= 0")
    converged: bool = _field(False, attr="converged_", convert=_valid(lambda x: isinstance(x, bool)),
                             expected="true or false")
    #: the map to working units (offset, scale); None in a file: any map does (see `read_state`)
    moments: tuple = _field(None, attr="_moments", convert=_moments,
                            expected="[offset, scale > 0], two finite numbers")
    accel: tuple = _field((1.0, None), attr="_accel", convert=_accel,
                          expected=f"[1 <= eta <= {ETA_MAX:g}, a number or null]")
    runs: list = _field([], attr="runs_", convert=_valid(_is_list_of_objects), expected="a list of objects")
    best_run: int = _field(0, attr="best_run_", convert=_valid(_is_count), expected="a count >= 0")
    algorithm: str = _field("batch", attr="algorithm_", convert=_valid(lambda x: x in ("batch", "incremental")),
                            expected="'batch' or 'incremental'")
    face_shape_scores: list = _field([], attr="face_shape_scores_", convert=_valid(_is_list_of_objects),
                                     expected="a list of objects")
    n_images: int | None = _field(None, attr="n_images_fit_", convert=_valid(lambda x: x is None or _is_count(x, 1)),
                                  expected="a count >= 1")
    # the training images' own answers: not saved (predict(X) gives them)
    positions: np.ndarray | None = _field(None, attr="positions_", saved=None)
    labels: np.ndarray | None = _field(None, attr="labels_", saved=None)
    misfit: np.ndarray | None = _field(None, attr="misfit_", saved=None)
    summary: PosteriorSummary | None = _field(None, attr="_train_summary", saved=None)
    #: brightness="auto"'s test (`emface.engine.brightness.brightness_test`); the gains are θ's
    brightness_test: dict | None = _field(None, attr="brightness_test_", convert=_valid(_is_test),
                                          expected="null or an object with statistic, dof, p_value, significant")

    # ------------------------------------------------------------------ from a fit
    @classmethod
    def from_run(cls, best, runs, src, colour, algorithm, *, hard=False, face_shape_scores=(), brightness_test=None):
        """The state a fit leaves: its best `emface.em.EMRun` of `runs`, on the images of `src`."""
        to_data = src.loglik_to_data
        st = best.stats
        summary = None if st is None or st.positions is None or hard else summarise(st, src, best.params)
        if summary is not None:
            misfit = summary.misfit
        else:
            misfit = None if st is None or st.chi2 is None else misfit_z(st.chi2, n_values(src))
        return cls(
            theta=src.to_data(best.params), colour=bool(colour), history=[to_data(o) for o in best.objectives],
            n_iter=best.n_iter, converged=best.converged, moments=(src.offset, src.scale), accel=best.accel,
            runs=[dict(run=r.init_index, objectives=[to_data(o) for o in r.objectives], n_iter=r.n_iter,
                       converged=r.converged, moves=[list(m) for m in r.moves]) for r in runs],
            best_run=best.init_index, algorithm=algorithm, face_shape_scores=list(face_shape_scores),
            n_images=int(src.n_images),
            positions=None if st is None else st.positions, labels=None if st is None else st.labels,
            misfit=misfit, summary=summary, brightness_test=brightness_test)

    @classmethod
    def from_progress(cls, info, src, colour, algorithm, face_shape_scores=()):
        """The state of a run in progress, from the driver's callback `info` (a checkpoint's)."""
        return cls(theta=src.to_data(info["params"]), colour=bool(colour),
                   history=[float(o) for o in src.loglik_to_data(np.asarray(info["history"]))],
                   n_iter=int(info["iter"]), converged=False, moments=(src.offset, src.scale),
                   accel=tuple(info.get("accel", (1.0, None))), best_run=int(info["run"]), algorithm=algorithm,
                   face_shape_scores=list(face_shape_scores), n_images=int(src.n_images))

    # ------------------------------------------------------------------ the estimator's attributes
    def apply_to(self, est, per_channel):
        """Set `est`'s fitted attributes from this state (θ in the user's layouts)."""
        est._set_theta(self.theta, self.colour, per_channel)
        for f in fields(self):
            if f.metadata.get("attr"):
                setattr(est, f.metadata["attr"], getattr(self, f.name))
        hist = self.history
        est.lower_bounds_ = hist[1:]
        est.lower_bound_ = hist[-1] if hist else float("nan")
        est.image_shape_ = tuple(self.theta.image_shape)
        est.n_features_in_ = int(np.prod(self.theta.image_shape)) * self.theta.n_channels

    @classmethod
    def read_from(cls, est):
        """The state of a fitted `est` (what `save` writes)."""
        values = {f.name: getattr(est, f.metadata["attr"]) for f in fields(cls)
                  if f.metadata.get("attr") and hasattr(est, f.metadata["attr"])}
        return cls(theta=est._theta, **values)


# ----------------------------------------------------------------------------- files

def write_state(path, state, settings, *, kind="model"):
    """Save `state` and the estimator's `settings` to ``.npz`` at `path` (a file object or a temporary
    file: see `emface.persistence.atomic_save`). `kind` is "model" or "checkpoint"."""
    extra = {}
    for f in fields(state):
        saved = f.metadata.get("saved")
        value = getattr(state, f.name)
        if saved == "array" and value is not None:
            extra[f.name] = np.asarray(value)
        elif saved == "meta":
            extra[f.name] = list(value) if isinstance(value, tuple) else value
    save_model(path, state.theta, settings=settings, kind=kind, **extra)


def read_state(path, record=None):
    """(state, settings, name) of a model file or checkpoint, every field validated.

    `record` is the record class (`FittedState`, or a subclass with more fields).

    The settings (a dict, unchecked here: the estimator checks them against
    its parameters) and the file's name for messages come beside the state.

    Raises
    ------
    emface.errors.ModelFileError
        A file that is not a usable emface model (one line, naming the file).
    OSError
        A file that cannot be opened.
    """
    record = FittedState if record is None else record
    params, extra = load_model(path)
    name = file_name(path)
    values = {}
    for f in fields(record):
        if f.metadata.get("saved") is None or f.name == "theta":
            continue
        if f.name not in extra:
            continue  # a file written before this field: its default
        value = f.metadata["convert"](extra[f.name])
        if value is _BAD:
            raise bad_value(name, f"'{f.name}'" if f.name != "history" else "history", extra[f.name],
                            f.metadata["expected"])
        values[f.name] = value
    state = record(theta=params, **values)
    if state.moments is None:
        state.moments = _default_moments(params)
    if params.n_channels > 1 and not state.colour:
        raise bad_value(name, "'colour'", state.colour, f"true or false (true for its {params.n_channels} channels)")
    _check_model_range(params, state.moments, name)
    settings = extra.get("settings", {})
    if not isinstance(settings, dict):
        raise bad_value(name, "'settings'", settings, "a JSON object")
    return state, settings, name


def bad_value(name, what, value, expected):
    """The one-line `ModelFileError` of a file `name` whose `what` is `value`, not `expected`."""
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return ModelFileError(one_line(f"{name}: its {what} is {text}; expected {expected}"))


def _default_moments(params):
    # a model saved without its map to working units: any affine map works
    # (results are equivariant); use the background's own spread, computed
    # without overflow or underflow at any scale.
    from .sources import working_map

    return working_map(params.background)


def _check_model_range(params, moments, name):
    """θ in working units stays within `WORKING_LIMIT` (s within its inverse too)."""
    offset, scale = moments
    with np.errstate(over="ignore", invalid="ignore"):
        big = max(float(np.max(np.abs(params.faces / scale - offset / scale))),
                  float(np.max(np.abs(params.background / scale - offset / scale))))
        s = params.noise_std / scale
    if not big <= WORKING_LIMIT:
        raise bad_value(name, "largest face or background value in working units (under its 'moments')", big,
                        f"at most {WORKING_LIMIT:g} spreads from its centre")
    if not (np.all(s >= 1.0 / WORKING_LIMIT) and np.all(s <= WORKING_LIMIT)):
        raise bad_value(name, "noise_std in working units (under its 'moments')", s.tolist(),
                        f"from {1 / WORKING_LIMIT:g} to {WORKING_LIMIT:g} spreads")
