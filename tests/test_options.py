"""One table of options (emface.options.OPTIONS): FaceEM's parameters, their checks, their docs and the
CLI's flags of `emface fit` all come from it, so they cannot drift apart."""

import inspect

import click
import numpy as np
import pytest

from emface import FaceEM
from emface.cli import fit as fit_command
from emface.em import ALGORITHMS
from emface.engine.plan import BACKENDS
from emface.init import INIT_METHODS
from emface.model import NOISE_MODELS
from emface.options import OPTIONS, REQUIRED, estimator_kwargs

FLAGGED = [o for o in OPTIONS if o.flag is not None]
_CLI_ONLY = ("input", "out_dir", "grey", "layout", "cache_dir", "allow_external_data", "quiet")


def _click_param(option):
    return next(p for p in fit_command.params if p.name == option.name)


def _parse(*args):
    """The estimator's keyword arguments of `emface fit` with these flags (parsed, not run)."""
    ctx = fit_command.make_context("fit", ["in.npy", "--out", "o", "--face-shape", "8x9", *args])
    return estimator_kwargs({k: val for k, val in ctx.params.items() if k not in _CLI_ONLY})


def test_the_table_is_the_estimators_signature():
    params = list(inspect.signature(FaceEM.__init__).parameters.values())[1:]
    assert [p.name for p in params] == [o.name for o in OPTIONS]
    for p, o in zip(params, OPTIONS):
        assert p.default is o.default or p.default == o.default, o.name
    assert OPTIONS[0].default is REQUIRED


def test_the_table_names_the_choices_the_modules_implement():
    table = {o.name: tuple(o.choices) for o in OPTIONS}
    assert table["init"] == tuple(INIT_METHODS)
    assert table["noise"] == tuple(NOISE_MODELS)
    assert table["backend"] == tuple(BACKENDS)
    assert table["algorithm"] == tuple(ALGORITHMS)


@pytest.mark.parametrize("option", FLAGGED, ids=[o.name for o in FLAGGED])
def test_every_flag_has_the_estimators_default_choices_and_range(option):
    p = _click_param(option)
    if option.default is REQUIRED:
        assert p.required
    else:
        # what the CLI passes when the flag is not given is the estimator's default
        assert option.from_cli(p.default) == option.default or (option.default is None
                                                                 and option.from_cli(p.default) is None)
    if option.choices:
        assert {option.from_cli(c) for c in p.type.choices} == set(option.choices)
    if option.low is not None:
        assert p.type.min == option.low and bool(p.type.min_open) == option.low_open
        below = option.low - 1
        with pytest.raises(click.BadParameter):
            p.type.convert(below, p, None)
        with pytest.raises(ValueError, match=option.name):
            option.validate(below)
        option.validate(option.low if not option.low_open else option.low + 0.5)


def test_the_cli_without_flags_fits_with_the_estimators_defaults():
    kw = _parse()
    assert kw.pop("face_shape") == (8, 9)
    defaults = {o.name: o.default for o in FLAGGED if o.default is not REQUIRED}
    assert kw == defaults


def test_the_cli_passes_its_values_through_the_table():
    kw = _parse("--restarts", "3", "--noise", "per-channel", "--no-shift-escape", "--dtype", "float32",
                "--faces", "2", "--smoothing", "2.5", "--seed", "7", "--empty-frames", "--face-shape", "auto")
    assert kw["n_init"] == 3 and kw["noise"] == "per_channel" and kw["shift_escape"] is False
    assert kw["dtype"] == np.float32 and kw["n_faces"] == 2 and kw["prior_smoothing"] == 2.5
    assert kw["random_state"] == 7 and kw["empty_frames"] is True and kw["face_shape"] == "auto"
    FaceEM(**kw)._validate_settings()


@pytest.mark.parametrize("name, value, message", [
    ("n_faces", 0, "n_faces must be >= 1, got 0"),
    ("n_init", "many", "n_init must be an int"),
    ("noise", "per-channel", "noise must be one of ['shared', 'per_channel']"),
    ("noise_floor", 0.0, "noise_floor must be > 0.0"),
    ("n_jobs", 0, "n_jobs must be a positive int, -1 or None"),
    ("dtype", np.int32, "dtype must be None, numpy.float64 or numpy.float32"),
    ("device", "tpu", "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ("backend", "fast", "backend must be one of"),
])
def test_the_estimator_checks_come_from_the_table(name, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        FaceEM((3, 3), **{name: value})._validate_settings()


def test_the_docstring_documents_every_option_from_the_table():
    doc = FaceEM.__doc__
    for o in OPTIONS:
        assert f"    {o.name} : {o.type_doc}\n" in doc, o.name
    assert "OPTIONS" not in doc.split("Attributes")[0]  # the marker was filled in


def test_the_init_made_from_the_table_stores_every_option():
    est = FaceEM((5, 6), n_faces=2, tol=0.5, noise="per_channel")
    params = est.get_params()
    assert list(params) == [o.name for o in OPTIONS]
    assert params["face_shape"] == (5, 6) and params["n_faces"] == 2 and params["tol"] == 0.5
    assert params["max_iter"] == 100 and params["callback"] is None
    again = FaceEM(**params)
    assert again.get_params() == params and repr(again) == repr(est)
    with pytest.raises(TypeError, match="sharpness"):
        FaceEM((5, 6), sharpness="auto")
    with pytest.raises(TypeError):
        FaceEM((5, 6), 2)  # options after face_shape are keyword-only
