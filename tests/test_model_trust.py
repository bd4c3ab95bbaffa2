"""Issue 21, the model side: loaded models are validated before the kernels see them; numbers at the edges.

Every malformed or inconsistent model file gives a one-line `ModelFileError`
(a ValueError) that names the file; `predict` checks its pixels as `fit` does;
data scaled by 1e±200 fit to the same positions; the edge cases of the issue
(``--max-memory 1e400GB``, ``--fps inf``, 1×64 images with ``face_shape="auto"``,
``sample(10**12)``, ``n_faces > K``, ``tol=0``, a checkpoint resumed on another
stack) each give a correct result or a clear error.
"""

import io
import json
import math
import os
import warnings
import zipfile
from contextlib import redirect_stderr

import numpy as np
import pytest

from emface import ConvergenceWarning, FaceEM
from emface.cli import main as cli_main
from emface.datasets import make_faces
from emface.engine.costs import MAX_MEMORY_CAP, parse_memory
from emface.errors import InputError, ModelFileError
from emface.engine.records import Params
from emface.persistence import load_model, save_model
from emface.sources import Moments, working_map

K, IMG, FACE = 30, (20, 24), (6, 5)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small fitted one-face grey model, its file, its images and their true positions."""
    X, truth = make_faces(K, IMG, FACE, noise=0.5, random_state=0)
    est = FaceEM(FACE, random_state=0, max_iter=20, n_init=1).fit(X)
    folder = tmp_path_factory.mktemp("model")
    path = folder / "model.npz"
    est.save(path)
    np.save(folder / "stack.npy", X)
    return est, path, X, truth


def _arrays(path):
    with np.load(path, allow_pickle=True) as z:
        return {k: z[k] for k in z.files}


def _meta(arrays):
    return json.loads(str(arrays["meta"]))


def _write(tmp_path, arrays, name="bad.npz"):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def _with_meta(arrays, **changes):
    out = dict(arrays)
    meta = _meta(arrays)
    for k, v in changes.items():
        if v is _DELETE:
            meta.pop(k, None)
        else:
            meta[k] = v
    out["meta"] = np.array(json.dumps(meta))
    return out


_DELETE = object()


def _refused(path, *match):
    """FaceEM.load(path) raises a one-line ModelFileError naming the file (and matching each of `match`)."""
    with pytest.raises(ModelFileError) as info:
        FaceEM.load(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)
    assert "\n" not in msg and os.fspath(path) in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


# ----------------------------------------------------------------------------- item 1: θ from a file

def test_a_saved_model_loads_and_predicts_as_it_was(fitted):
    est, path, X, truth = fitted
    loaded = FaceEM.load(path)
    assert np.array_equal(loaded.predict(X), est.predict(X))
    assert np.mean((loaded.predict(X) == truth.positions).all(axis=1)) >= 0.95


def _prior_case(a):
    a["prior"] = np.full((1, 1681, 1), 1 / 1681)  # the crafted prior: a segmentation fault before


@pytest.mark.parametrize("change, match", [
    (_prior_case, "prior of shape (1, 1681, 1)"),
    # grids of the right size in the wrong shape: before, a double free, and hangs in the compiled pass
    (lambda a: a.update(prior=np.full((1, 300, 1), 1 / 300)), "prior of shape (1, 300, 1)"),
    (lambda a: a.update(prior=np.full((1, 1, 300), 1 / 300)), "prior of shape (1, 1, 300)"),
    (lambda a: a.update(prior=np.full((1, 40, 40), 1 / 1600)), "prior of shape (1, 40, 40)"),
    (lambda a: a.update(prior=np.full((2, 15, 20), 1 / 600)), "prior of shape (2, 15, 20)"),
    (lambda a: a.update(prior=a["prior"][:, :-1]), "prior of shape (1, 14, 20)"),
    (lambda a: a.update(prior=a["prior"].T), "prior of shape"),
    (lambda a: a.update(faces=np.zeros((1, 3, 6, 5))), "channel"),
    (lambda a: a.update(faces=np.zeros((1, 1, 30, 5))), "larger than its background"),
    (lambda a: a.update(faces=np.zeros((1, 1, 1, 6, 5))), "expected faces (C, Ch, h, w)"),
    (lambda a: a.update(background=np.zeros(20)), "expected faces (C, Ch, h, w)"),
    (lambda a: a.update(background=np.zeros((1, 0, 24))), "has empty arrays"),
    (lambda a: a.update(noise_std=np.array([1.0, 2.0])), "noise_std of shape (2,)"),
    (lambda a: a.update(noise_std=np.ones((1, 1))), "expected faces (C, Ch, h, w)"),
    (lambda a: a.update(noise_std=np.array([np.nan])), "noise_std array holds 1 NaN"),
    (lambda a: a.update(noise_std=np.array([0.0])), "expected s > 0"),
    (lambda a: a.update(noise_std=np.array([-3.0])), "expected s > 0"),
    (lambda a: a.update(prior=np.where(np.arange(300).reshape(1, 15, 20) == 7, np.nan, a["prior"])),
     "prior array holds 1 NaN"),
    (lambda a: a.update(prior=-a["prior"]), "negative values"),
    (lambda a: a.update(prior=2 * a["prior"]), "sums to 2"),
    (lambda a: a.update(background=np.where(np.eye(20, 24, dtype=bool), np.inf, a["background"][0])),
     "background array holds 20 NaN or infinite"),
    (lambda a: a.update(background=a["background"] * 1e300), "in working units"),
    (lambda a: a.update(faces=a["faces"].astype(np.complex128)), "dtype complex128"),
    (lambda a: a.update(faces=a["faces"].astype("U8")), "dtype <U8"),
    (lambda a: a.update(faces=np.zeros(3, dtype=[("x", "f8"), ("y", "i4")])), "expected real numbers"),
    (lambda a: a.update(faces=np.array([None, 1.0], dtype=object)), "dtype object"),
    (lambda a: a.update(faces=np.zeros(3, dtype="datetime64[s]")), "expected real numbers"),
    (lambda a: a.pop("background"), "lacks background"),
    (lambda a: [a.pop(k) for k in ("prior", "faces")], "lacks faces, prior"),
])
def test_an_inconsistent_model_is_refused_on_one_line(tmp_path, fitted, change, match):
    arrays = _arrays(fitted[1])
    change(arrays)
    p = _write(tmp_path, arrays)
    _refused(p, match)
    with pytest.raises(ModelFileError):
        FaceEM.resume(p)
    if "working units" not in match:  # θ's own checks; the map to working units is the estimator's
        with pytest.raises(ModelFileError):
            load_model(p)


@pytest.mark.parametrize("meta, match", [
    ("[1, 2", "not valid JSON"),
    ("[1, 2]", "a JSON list; expected an object"),
    ("7", "a JSON int"),
    ("[" * 100000 + "]" * 100000, "not valid JSON"),
    ('{"settings": [1]}', "'settings' is [1]"),
])
def test_settings_that_are_not_a_json_object_are_refused(tmp_path, fitted, meta, match):
    arrays = _arrays(fitted[1])
    arrays["meta"] = np.array(meta)
    _refused(_write(tmp_path, arrays), match)


@pytest.mark.parametrize("changes, match", [
    (dict(settings={"noise": 3}), "noise must be one of"),
    (dict(settings={"max_iter": -1}), "max_iter must be >= 0"),
    (dict(settings={"tol": "x"}), "tol must be a finite real"),
    (dict(settings={"tol": 10**400}), "tol must be a finite real"),
    (dict(settings={"random_state": []}), "random_state is []"),
    (dict(settings={"random_state": -1}), "random_state is -1"),
    (dict(colour="yes"), "'colour' is 'yes'"),
    (dict(moments=[0.0, 0.0]), "'moments'"),
    (dict(moments=[0.0, -1.0]), "'moments'"),
    (dict(moments=["a", 1.0]), "'moments'"),
    (dict(moments=[0.0, 1e-300]), "in working units"),
    (dict(moments=[0.0, 1e300]), "noise_std in working units"),
    (dict(moments=[1.0]), "'moments'"),
    (dict(moments=[10**400, 1.0]), "'moments'"),
    (dict(accel=[10**400, None]), "'accel'"),
    (dict(history=["a", "b"]), "history"),
    (dict(history=[[1.0], [2.0, 3.0]]), "history"),
    (dict(n_iter=-1), "'n_iter' is -1"),
    (dict(n_iter=1.5), "'n_iter' is 1.5"),
    (dict(converged="no"), "'converged'"),
    (dict(accel=[1e300, None]), "'accel'"),
    (dict(accel="fast"), "'accel'"),
    (dict(best_run=None), "'best_run'"),
    (dict(algorithm="magic"), "'algorithm'"),
    (dict(runs={"a": 1}), "'runs'"),
    (dict(face_shape_scores=3), "'face_shape_scores'"),
    (dict(n_images=0), "'n_images'"),
])
def test_settings_of_the_wrong_type_or_range_are_refused(tmp_path, fitted, changes, match):
    arrays = _arrays(fitted[1])
    meta = _meta(arrays)
    for k, v in changes.items():
        if k == "settings":
            meta["settings"].update(v)
        else:
            meta[k] = v
    arrays["meta"] = np.array(json.dumps(meta))
    _refused(_write(tmp_path, arrays), match)


def test_settings_that_are_not_saved_are_not_taken_from_a_file(tmp_path, fitted):
    # a callback or starting arrays in a file would be called / used by fit: they are dropped
    est, path, X, _ = fitted
    arrays = _arrays(path)
    meta = _meta(arrays)
    meta["settings"].update(callback="print", face_init=[[1.0]], checkpoint="/etc/x", scheduler="tcp://x:1")
    arrays["meta"] = np.array(json.dumps(meta))
    loaded = FaceEM.load(_write(tmp_path, arrays))
    assert loaded.callback is None and loaded.face_init is None and loaded.checkpoint is None
    assert loaded.scheduler is None
    assert np.array_equal(loaded.predict(X), est.predict(X))


def test_a_grey_flag_on_a_colour_model_is_refused(tmp_path):
    X, _ = make_faces(20, (14, 16), (5, 4), colour=True, noise=0.3, random_state=0)
    est = FaceEM((5, 4), max_iter=3, n_init=1, random_state=0).fit(X)
    path = tmp_path / "c.npz"
    est.save(path)
    assert FaceEM.load(path).predict(X).shape == (20, 2)
    arrays = _with_meta(_arrays(path), colour=False)
    _refused(_write(tmp_path, arrays), "'colour' is False", "3 channels")
    # shared noise, yet different values per channel
    arrays = _arrays(path)
    arrays["noise_std"] = np.array([1.0, 2.0, 3.0])
    _refused(_write(tmp_path, arrays, "n.npz"), "noise_std", "shared")


def test_a_prior_summing_to_one_within_rounding_is_renormalised(tmp_path, fitted):
    est, path, X, _ = fitted
    arrays = _arrays(path)
    arrays["prior"] = arrays["prior"] * (1 + 1e-9)
    params, _ = load_model(_write(tmp_path, arrays))
    assert params.prior.sum() == pytest.approx(1.0, abs=1e-15)
    assert np.array_equal(FaceEM.load(tmp_path / "bad.npz").predict(X), est.predict(X))


def test_the_legacy_layouts_still_load(tmp_path, fitted):
    est, path, X, _ = fitted
    th = est._theta
    # emface 0.1: one grey face "face" (h, w), background (H, W), a scalar s, prior (P, Q), no settings
    p = tmp_path / "old.npz"
    np.savez(p, face=th.faces[0, 0], background=th.background[0], noise_std=np.float64(th.noise_std[0]),
             prior=th.prior[0])
    old = FaceEM.load(p)
    assert old.face_.shape == FACE and old.prior_.shape == (15, 20)
    assert np.array_equal(old.predict(X), est.predict(X))
    # grey faces (C, h, w)
    p2 = tmp_path / "grey.npz"
    np.savez(p2, faces=th.faces[:, 0], background=th.background[0], noise_std=th.noise_std, prior=th.prior)
    assert np.array_equal(FaceEM.load(p2).predict(X), est.predict(X))


def test_extra_members_are_read_safely_and_ignored(tmp_path, fitted):
    est, path, X, _ = fitted
    arrays = _arrays(path)
    arrays["something_else"] = np.arange(5)
    p = _write(tmp_path, arrays)
    with zipfile.ZipFile(p, "a") as zf:
        zf.writestr("notes.txt", "not an array")
    assert np.array_equal(FaceEM.load(p).predict(X), est.predict(X))


def _file_cases(tmp_path, path):
    data = path.read_bytes()
    cases = {}
    cases["empty"] = b""
    cases["half"] = data[: len(data) // 2]
    cases["tail cut"] = data[:-10]
    cases["text"] = b"this is not a model\n"
    cases["zip head only"] = b"PK\x03\x04" + b"\x00" * 30
    flipped = bytearray(data)
    i = data.index(b"\x93NUMPY") + 200  # inside the first member's data: its CRC no longer matches
    flipped[i] ^= 0xFF
    cases["bad crc"] = bytes(flipped)
    out = {}
    for name, content in cases.items():
        p = tmp_path / (name.replace(" ", "_") + ".npz")
        p.write_bytes(content)
        out[name] = p
    np.save(tmp_path / "stack.npy", np.zeros((3, 4, 5)))
    out["npy"] = tmp_path / "stack.npy"
    os.mkdir(tmp_path / "folder.npz")
    out["folder"] = tmp_path / "folder.npz"
    return out


def test_unreadable_model_files_are_refused_on_one_line(tmp_path, fitted):
    cases = _file_cases(tmp_path, fitted[1])
    expect = {"empty": "is empty (0 bytes)", "half": "not", "tail cut": "not", "text": "not a .npz (zip)",
              "zip head only": "cannot be read as a .npz", "bad crc": "CRC", "npy": "single .npy array",
              "folder": "not a regular file"}
    for name, p in cases.items():
        _refused(p, expect[name])


def test_a_fifo_given_as_a_model_is_refused_without_opening_it(tmp_path):
    p = tmp_path / "m.npz"
    os.mkfifo(p)
    _refused(p, "not a regular file")  # opening it would wait for a writer for ever


def test_a_missing_model_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        FaceEM.load(tmp_path / "nothing.npz")


def _declare_shape(path, key, shape):
    """Rewrite `key`'s .npy header to declare `shape` (same header length), data left as they are."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    raw = members[key + ".npy"]
    hlen = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + hlen].decode("latin1")
    start = header.index("'shape': (") + len("'shape': (")
    end = header.index(")", start)
    new = header[:start] + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + header[end:]
    new = new.rstrip() .ljust(hlen - 1) + "\n"
    assert len(new) == hlen
    members[key + ".npy"] = raw[:10] + new.encode("latin1") + raw[10 + hlen:]
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)


def test_a_header_that_declares_a_huge_array_is_refused_before_reading(tmp_path, fitted):
    arrays = _arrays(fitted[1])
    p = _write(tmp_path, arrays)
    _declare_shape(p, "background", (10**6, 10**6))
    _refused(p, "declares 8,000,000,000,000 bytes")
    p = _write(tmp_path, arrays, "b.npz")
    _declare_shape(p, "background", (1, 20, 25))
    _refused(p, "damaged", "declares 4,000 bytes")


def _cli(*args):
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as info:
        cli_main([os.fspath(a) for a in args])
    return info.value.code, err.getvalue()


def test_the_cli_refuses_bad_model_files_with_exit_2_and_one_line(tmp_path, fitted):
    _, path, X, _ = fitted
    stack = tmp_path / "s.npy"
    np.save(stack, X)
    cases = _file_cases(tmp_path, path)
    arrays = _arrays(path)
    arrays["prior"] = np.full((1, 1681, 1), 1 / 1681)
    cases["crafted prior"] = _write(tmp_path, arrays)
    for name, p in cases.items():
        rc, err = _cli("predict", p, stack, "--out", tmp_path / "p.csv", "-q")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("emface: error: "), (name, rc, err)
        assert "interrupted" not in err  # an empty file was reported as an interruption (rc 130)
    assert not (tmp_path / "p.csv").exists()
    rc, err = _cli("predict", path, stack, "--out", tmp_path / "p.csv", "-q")
    assert rc == 0 and (tmp_path / "p.csv").is_file()


# ----------------------------------------------------------------------------- item 7: predict's pixels

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_pixels_as_fit_does(fitted, bad):
    est, _, X, _ = fitted
    Xb = X.copy()
    Xb[4, 3, 2] = bad
    with pytest.raises(ValueError) as fit_err:
        FaceEM(FACE, max_iter=2).fit(Xb)
    for method in (est.predict, est.predict_proba, est.score_samples, est.posterior_summary, est.predict_face):
        with pytest.raises(ValueError) as info:
            method(Xb)
        assert str(info.value) == str(fit_err.value)
        assert "image 4 has 1 NaN or infinite pixel(s)" in str(info.value)


def test_the_cli_predict_refuses_non_finite_pixels(tmp_path, fitted):
    _, path, X, _ = fitted
    Xb = X.copy()
    Xb[1, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", Xb)
    rc, err = _cli("predict", path, tmp_path / "nan.npy", "--out", tmp_path / "p.csv", "-q")
    assert rc == 2 and "NaN" in err and len(err.strip().splitlines()) == 1


def test_predict_refuses_data_too_far_from_the_models_units(fitted):
    est, _, X, _ = fitted
    with pytest.raises(ValueError, match="too far from the data this model was fitted on"):
        est.predict(X * 1e200)
    # a change of units within reason is the model's business: it predicts
    assert est.predict(X * 10.0).shape == (K, 2)


def test_a_model_without_moments_predicts_at_any_scale(tmp_path, fitted):
    # the map to working units is then taken from the background, without overflow
    est, path, X, _ = fitted
    for c in (1e-200, 1.0, 1e200):
        th = est._theta
        p = tmp_path / f"m{c:g}.npz"
        save_model(p, Params(th.faces * c, th.background * c, th.noise_std * c, th.prior))
        loaded = FaceEM.load(p)
        assert np.array_equal(loaded.predict(X * c), est.predict(X)), c


# ----------------------------------------------------------------------------- item 10: numbers at the edges

def test_moments_are_exact_under_powers_of_two_at_any_scale():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, (6, 7, 8))
    m = Moments.of(x[:3]) + Moments.of(x[3:])
    for k in (700, 400, -400, -700):
        y = np.ldexp(x, k)
        mk = Moments.of(y[:3]) + Moments.of(y[3:])
        assert mk.exp != 0  # summarised scaled: the squares and cubes of these do not fit in float64
        assert mk.mean == pytest.approx(math.ldexp(m.mean, k - mk.exp), rel=1e-13)
        assert mk.m2 == pytest.approx(math.ldexp(m.m2, 2 * (k - mk.exp)), rel=1e-12)
        assert mk.m3 == pytest.approx(math.ldexp(m.m3, 3 * (k - mk.exp)), rel=1e-9)
        assert (mk.lo, mk.hi) == (math.ldexp(m.lo, k), math.ldexp(m.hi, k))
    # blocks of very different scales combine: the smaller ones count for what they weigh
    both = Moments.of(np.ldexp(x[:3], 600)) + Moments.of(x[3:])
    assert math.ldexp(both.mean, both.exp) == pytest.approx(np.ldexp(x[:3], 600).sum() / x.size, rel=1e-12)


@pytest.mark.parametrize("c", [1e200, 1e-200, -1e200, 1e300, 1e-300])
def test_working_map_scales_with_the_data(c):
    x = np.random.default_rng(2).normal(5.0, 3.0, (4, 9, 11))
    off, sc = working_map(x)
    off_c, sc_c = working_map(x * c)
    assert off_c == pytest.approx(off * c, rel=1e-12) and sc_c == pytest.approx(sc * abs(c), rel=1e-12)


@pytest.mark.parametrize("c", [1e200, 1e-200])
def test_data_scaled_by_1e200_fit_to_the_same_positions(fitted, c):
    _, _, X, truth = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        base = FaceEM(FACE, random_state=0, max_iter=20, n_init=1).fit(X)
        est = FaceEM(FACE, random_state=0, max_iter=20, n_init=1).fit(X * c)
    assert np.array_equal(est.positions_, base.positions_)
    assert np.array_equal(est.predict(X * c), base.predict(X))
    assert np.isfinite(est.noise_std_) and est.noise_std_ == pytest.approx(base.noise_std_ * c, rel=1e-6)
    assert np.allclose(est.face_ / c, base.face_, rtol=1e-6, atol=1e-6 * np.abs(base.face_).max())
    assert est.lower_bound_ == pytest.approx(base.lower_bound_ - np.prod(IMG) * math.log(c), rel=1e-9)


def test_data_too_wide_to_centre_in_float64_is_refused():
    X = np.full((3, 8, 9), 1.7e308)
    X[0, 0, 0] = -1.7e308
    with pytest.raises(ValueError, match="too wide a range"):
        FaceEM((3, 3), max_iter=2).fit(X)


@pytest.mark.parametrize("value", ["1e400GB", "nan", "inf MB", float("inf"), float("nan"), True])
def test_max_memory_that_is_not_a_finite_size_is_refused(value):
    with pytest.raises(ValueError, match="max_memory") as info:
        parse_memory(value)
    assert "\n" not in str(info.value)


def test_max_memory_beyond_an_exbibyte_is_capped():
    assert parse_memory("1e290GB") == MAX_MEMORY_CAP
    assert parse_memory(10**40) == MAX_MEMORY_CAP and parse_memory(1e40) == MAX_MEMORY_CAP
    assert parse_memory("2GB") == 2 * 10**9 and parse_memory(512) == 512


def test_the_cli_refuses_max_memory_1e400gb(tmp_path, fitted):
    np.save(tmp_path / "s.npy", fitted[2])
    rc, err = _cli("fit", tmp_path / "s.npy", "--face-shape", "6x5", "--out", tmp_path / "o", "-q",
                   "--max-memory", "1e400GB")
    assert rc == 2 and err.strip().splitlines() == ["emface: error: max_memory must be a finite size such as "
                                                    "'2GB', got '1e400GB'"]


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 0.0, -5.0, 1e-9, 1e9, "25"])
def test_a_video_frame_rate_that_is_not_finite_and_sensible_is_refused(tmp_path, fps):
    from emface.video import write_synthetic_video

    p = tmp_path / "v.mp4"
    with pytest.raises(ValueError, match="fps must be a number from"):
        write_synthetic_video(p, 3, (16, 16), (4, 4), fps=fps)
    assert os.listdir(tmp_path) == []  # refused before anything is written


def test_the_cli_refuses_fps_inf(tmp_path):
    rc, err = _cli("generate", "--video", tmp_path / "v.mp4", "--fps", "inf", "--n-images", "3", "-q")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "fps must be" in err
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "v.truth.npz").exists()


def _line_stack(K=60, W=64, w=8, seed=0):
    """1×W images: a pattern of w pixels at random places on a ramp."""
    rng = np.random.default_rng(seed)
    pat = np.array([6, 4, 8, 2, 9, 1, 7, 5.0])[:w] * 10
    X = rng.normal(0, 1.0, (K, 1, W)) + np.linspace(0, 30, W)
    pos = rng.integers(0, W - w + 1, K)
    for k in range(K):
        X[k, 0, pos[k]:pos[k] + w] += pat
    return X, pos


def test_face_shape_auto_on_1x64_images_chooses_a_size(tmp_path):
    X, pos = _line_stack()
    est = FaceEM("auto", random_state=0).fit(X)
    h, w = est.face_shape_
    assert h == 1 and 6 <= w <= 10
    if w == 8:
        assert np.array_equal(est.positions_[:, 1], pos)
    np.save(tmp_path / "line.npy", X)
    rc, err = _cli("fit", tmp_path / "line.npy", "--face-shape", "auto", "--out", tmp_path / "o", "-q")
    assert rc == 0, err


def test_sample_refuses_more_than_memory_holds(fitted):
    est = fitted[0]
    with pytest.raises(ValueError, match=r"sample\(n_samples=1000000000000\) needs about .* GiB"):
        est.sample(10**12)


def test_sample_draws_its_noise_block_by_block_as_in_one_draw(fitted, monkeypatch):
    import emface.posterior as posterior
    from emface.datasets import draw_assignments, render

    est = fitted[0]
    monkeypatch.setattr(posterior, "_SAMPLE_NOISE_BLOCK", 1000)  # 480 pixels an image: blocks of 2 images
    X, pos = est.sample(7, random_state=5)
    rng = np.random.default_rng(5)
    th = est._theta
    labels, p = draw_assignments(th.prior, 7, rng)
    want = render(th.background[0], th.faces[:, 0], labels, p) + rng.normal(0.0, 1.0, (7,) + IMG) * th.noise_std[0]
    assert np.array_equal(pos, p) and np.array_equal(X, want)


# ----------------------------------------------------------------------------- item 13: the minor ones

def test_more_faces_than_images_is_refused_at_fit(fitted):
    X = fitted[2]
    with pytest.raises(ValueError, match=r"n_faces=31 is more than the number of images \(30\)"):
        FaceEM(FACE, n_faces=31).fit(X)


def test_the_cli_refuses_faces_1000_with_200_images(tmp_path):
    X, _ = make_faces(200, (16, 18), (5, 4), noise=0.5, random_state=0)
    np.save(tmp_path / "s.npy", X)
    rc, err = _cli("fit", tmp_path / "s.npy", "--face-shape", "5x4", "--out", tmp_path / "o", "-q",
                   "--faces", "1000")
    assert rc == 2 and "n_faces=1000 is more than the number of images (200)" in err
    assert len(err.strip().splitlines()) == 1


def test_a_checkpoint_resumes_only_on_a_stack_of_its_length(tmp_path, fitted):
    X = fitted[2]
    ck = tmp_path / "ck.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        FaceEM(FACE, max_iter=2, tol=0.0, n_init=1, random_state=0, checkpoint=ck, checkpoint_every=1).fit(X)
    assert json.loads(str(np.load(ck)["meta"]))["n_images"] == K
    with pytest.raises(ValueError, match=f"this checkpoint's run fitted {K} images, but fit was given 3"):
        FaceEM.resume(ck).fit(X[:3])
    est = FaceEM.resume(ck).set_params(max_iter=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    assert est.n_iter_ >= 2 and est.predict(X).shape == (K, 2)
    # once resumed, the estimator is an ordinary warm-started one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X[:10])
    # a file from before the count was recorded resumes on any stack of the right image shape
    old = _with_meta(_arrays(ck), n_images=_DELETE)
    p = _write(tmp_path, old, "old.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        FaceEM.resume(p).set_params(max_iter=3).fit(X[:3])


def test_a_saved_model_records_its_image_count(fitted):
    assert json.loads(str(np.load(fitted[1])["meta"]))["n_images"] == K


def test_tol_0_runs_every_iteration_and_warns_only_while_the_objective_moves(fitted):
    X = fitted[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = FaceEM(FACE, max_iter=25, tol=0.0, n_init=1, random_state=0, shift_escape=False).fit(X)
    hist = est.runs_[est.best_run_]["objectives"]
    assert est.n_iter_ == 25 and hist[-1] == hist[-2]  # every iteration ran; the last changed nothing
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        est = FaceEM(FACE, max_iter=1, tol=0.0, n_init=1, random_state=0, init="random").fit(X)
    hist = est.runs_[est.best_run_]["objectives"]
    assert hist[-1] != hist[-2]


def test_the_no_face_weight_must_match_the_settings(fitted, tmp_path):
    _, path, _, _ = fitted
    arrays = _arrays(path)
    # a 'no face' weight beside a prior that sums to 1 with it, in a file whose settings say no such class
    arrays["prior"] = arrays["prior"] * 0.9
    arrays["empty_weight"] = np.array(0.1)
    _refused(_write(tmp_path, arrays, "weight.npz"), "'empty_frames' setting")
    # and the settings' class without its weight
    settings = dict(_meta(_arrays(path))["settings"], empty_frames=True)
    _refused(_write(tmp_path, _with_meta(_arrays(path), settings=settings), "setting.npz"), "'empty_frames' setting")
    # both together load, and the weight is kept
    arrays = _with_meta(arrays, settings=settings)
    est = FaceEM.load(_write(tmp_path, arrays, "both.npz"))
    assert est.empty_weight_ == pytest.approx(0.1)
    # a weight outside [0, 1] is refused whatever the settings say
    arrays["empty_weight"] = np.array(1.5)
    _refused(_write(tmp_path, arrays, "big.npz"), "'no face' weight")
