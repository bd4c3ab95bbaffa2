"""Model files: θ and the settings beside it saved to ``.npz``, and read back as untrusted input.

`save_model` writes θ (`emface.engine.records.Params`) and any extra arrays or
JSON settings; `load_model` reads them without pickle, member by member, and
`check_model_arrays` validates θ before anything computes with it;
`atomic_save` writes a file through a temporary one renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from .engine.records import Params

__all__ = ["save_model", "load_model", "check_model_arrays", "atomic_save", "file_name", "check_out_file"]


def save_model(path, params, **extra):
    """Save θ and any extra arrays or JSON-able settings to a ``.npz`` file.

    Parameters
    ----------
    path : str or path-like or file object
    params : Params
    **extra
        Arrays are stored as they are; other values (dicts, numbers, strings)
        are stored together as JSON under ``"meta"``.
    """
    import json

    arrays = {}
    meta = {"layout": "C,Ch,h,w"}
    for k, v in extra.items():
        if isinstance(v, np.ndarray):
            arrays[k] = v
        else:
            meta[k] = v
    if params.empty_weight is not None:  # an extra array: files without it load as models without the class
        arrays["empty_weight"] = np.array(params.empty_weight, dtype=np.float64)
    if params.gains is not None:  # per-image brightness: files without it load as the note's model
        arrays["gains"], arrays["offsets"] = params.gains, params.offsets
    np.savez(
        path,
        faces=params.faces,
        background=params.background,
        noise_std=params.noise_std,
        prior=params.prior,
        meta=np.array(json.dumps(meta, default=_json_default)),
        **arrays,
    )


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


_KEYS = ("faces", "background", "noise_std", "prior")


def load_model(path):
    """Load what `save_model` wrote (also the one-face files of emface 0.1, with ``face``).

    A model file is untrusted input: it is read without pickle, member by
    member (each array's header checked against the bytes that follow it and
    against the memory available before it is read), and θ is validated before
    anything computes with it (`check_model_arrays`): consistent shapes, real
    finite values, s > 0 and a prior A >= 0 summing to 1 (renormalised).

    Returns
    -------
    params : Params
    extra : dict
        The extra arrays, and the JSON settings merged in.

    Raises
    ------
    emface.errors.ModelFileError
        The file is not an emface model or not a consistent one (an empty or
        truncated file, a bad zip or CRC, a ``.npy`` array, a missing key, a
        bad shape, dtype or value, settings that are not a JSON object); the
        message is one line and names the file.
    OSError
        The file cannot be opened (missing, no permission).
    """
    name = file_name(path)
    arrays, meta = _read_model_members(path, name)
    if "face" in arrays and "faces" not in arrays:  # a one-face grey model of emface 0.1
        keys = ("face",) + _KEYS[1:]
    else:
        keys = _KEYS
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise _model_error(name, f"is not an emface model: it lacks {', '.join(missing)}")
    params = check_model_arrays(*(arrays[k] for k in keys), name=name, empty_weight=arrays.get("empty_weight"))
    if "gains" in arrays or "offsets" in arrays:
        params = replace(params, **_check_brightness(arrays.get("gains"), arrays.get("offsets"), params.n_channels,
                                                     name))
    extra = {k: a for k, a in arrays.items() if k not in keys + ("empty_weight", "gains", "offsets")}
    if meta is not None:
        extra.update(meta)
    return params, extra


#: the most bytes a model file's arrays and settings may hold in all, whatever the memory available
_MODEL_MAX_BYTES = 2**34
#: the most bytes of its JSON settings
_META_MAX_BYTES = 2**26
#: a prior is accepted when it sums to 1 within this (then renormalised)
_PRIOR_SUM_TOL = 1e-6


def file_name(path):
    """The name of a model file for messages: its path, or an open file's name."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        return str(getattr(path, "name", "the model file"))


def _model_error(name, msg):
    from .errors import ModelFileError, one_line

    return ModelFileError(one_line(f"{name}: {msg}"))


def _read_model_members(path, name):
    """The arrays (float64) and the JSON settings (a dict, or None) of a ``.npz`` model, read safely."""
    import stat

    if not isinstance(path, (str, bytes, os.PathLike)):  # an open binary file
        return _read_open_model(path, name)
    from ._paths import not_regular_message

    # opened without waiting (a FIFO would wait for a writer for ever), then looked at through the descriptor
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _model_error(name, not_regular_message(st.st_mode))
        if st.st_size == 0:
            raise _model_error(name, "is empty (0 bytes): not an emface model")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        return _read_open_model(fh, name)


def _read_open_model(fh, name):
    import zipfile

    from .errors import ModelFileError

    pos = fh.tell()
    head = fh.read(6)
    fh.seek(pos)
    if head == b"\x93NUMPY":
        raise _model_error(name, "is a single .npy array, not an emface model (.npz, as written by save)")
    if head[:2] != b"PK":
        raise _model_error(name, "is not an emface model: not a .npz (zip) archive")
    try:
        with zipfile.ZipFile(fh) as zf:
            return _read_zip_members(zf, name)
    except ModelFileError:
        raise
    except Exception as exc:  # a damaged archive raises anything its parsers raise: all mean "unreadable"
        raise _model_error(name, f"cannot be read as a .npz archive ({type(exc).__name__}: {exc})") from None


def _read_zip_members(zf, name):
    from .sources import available_memory

    budget = min(_MODEL_MAX_BYTES, max(available_memory() // 2, 2**28))
    arrays, meta = {}, None
    for info in zf.infolist():
        if not info.filename.endswith(".npy") or info.is_dir():
            continue  # not an array np.savez wrote: ignored
        key = info.filename[:-4]
        if key == "meta":
            meta = _read_meta(zf, info, name)
            continue
        arr = _read_member(zf, info, name, budget, numeric=True)
        budget -= arr.nbytes
        arrays[key] = arr
    return arrays, meta


def _read_member(zf, info, name, budget, *, numeric):
    """One ``.npy`` member, its header checked before its data are read."""
    from ._lazyfiles import NpyVersionError, npy_header

    what = f"its array {info.filename[:-4]!r}"
    with zf.open(info) as fh:
        try:
            shape, fortran, dtype = npy_header(fh, versions=((1, 0), (2, 0)))
        except NpyVersionError as exc:
            raise _model_error(name, f"{what} is in .npy format version {exc.version}, which emface does not read") \
                from None
        if numeric:
            if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
                raise _model_error(name, f"{what} holds dtype {dtype}; expected real numbers")
        elif dtype.kind not in "US" or dtype.fields is not None:
            raise _model_error(name, f"{what} holds dtype {dtype}; expected a JSON string")
        count = 1
        for n in shape:
            count *= int(n)
        nbytes = count * dtype.itemsize
        if nbytes > budget:
            raise _model_error(name, f"{what} declares {nbytes:,} bytes (shape {shape}), more than a model may "
                                     f"hold here ({budget:,} bytes)")
        left = info.file_size - fh.tell()
        if left != nbytes:
            raise _model_error(name, f"{what} is damaged: its header declares {nbytes:,} bytes of data "
                                     f"(shape {shape}, dtype {dtype}), and {left:,} follow")
        data = fh.read(nbytes)
        fh.read()  # to the member's end: its CRC is checked there
    if len(data) != nbytes:
        raise _model_error(name, f"{what} is truncated: {len(data):,} of {nbytes:,} bytes")
    arr = np.frombuffer(data, dtype=dtype)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr.astype(np.float64) if numeric else arr


def _read_meta(zf, info, name):
    import json

    arr = _read_member(zf, info, name, _META_MAX_BYTES, numeric=False)
    if arr.size != 1:
        raise _model_error(name, f"its settings ('meta') hold {arr.size} strings; expected one JSON string")
    try:
        text = arr.reshape(())[()]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        meta = json.loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise _model_error(name, f"its settings ('meta') are not valid JSON ({type(exc).__name__}: {exc})") \
            from None
    if not isinstance(meta, dict):
        raise _model_error(name, f"its settings ('meta') are a JSON {type(meta).__name__}; expected an object")
    return meta


def check_model_arrays(faces, background, noise_std, prior, *, name="the model", empty_weight=None):
    """θ from untrusted arrays, validated: the `Params` of a model file, or a one-line `ModelFileError`.

    Accepts the layouts `Params` does (faces (h, w), (C, h, w) or (C, Ch, h, w);
    background (H, W) or (Ch, H, W); noise_std a number, or one per channel;
    prior (P, Q) or (C, P, Q)) and checks what the engine's compiled kernels
    rely on: the shapes agree (the prior's grid is (H - h + 1, W - w + 1) for
    each face), every value is finite, s > 0, and A >= 0 sums to 1 (within
    1e-6; renormalised).
    """
    arrs = {}
    for key, val in (("faces", faces), ("background", background), ("noise_std", noise_std), ("prior", prior)):
        a = np.asarray(val)
        if a.dtype.kind not in "biuf":
            raise _model_error(name, f"its {key} array holds dtype {a.dtype}; expected real numbers")
        arrs[key] = a.astype(np.float64)
    F, B, s, A = arrs["faces"], arrs["background"], arrs["noise_std"], arrs["prior"]
    shapes = (f"faces {F.shape}, background {B.shape}, noise_std {s.shape}, prior {A.shape}")
    if F.ndim not in (2, 3, 4) or B.ndim not in (2, 3) or s.ndim > 1 or A.ndim not in (2, 3):
        raise _model_error(name, f"has arrays of shapes {shapes}; expected faces (C, Ch, h, w), background "
                                 "(Ch, H, W), noise_std (Ch,) and prior (C, H-h+1, W-w+1)")
    F = F[None, None] if F.ndim == 2 else (F[:, None] if F.ndim == 3 else F)
    B = B[None] if B.ndim == 2 else B
    A = A[None] if A.ndim == 2 else A
    C, Ch, h, w = F.shape
    _, H, W = B.shape
    if F.size == 0 or B.size == 0:
        raise _model_error(name, f"has empty arrays ({shapes})")
    if B.shape[0] != Ch:
        raise _model_error(name, f"has faces of {Ch} channel(s) and a background of {B.shape[0]} ({shapes})")
    if h > H or w > W:
        raise _model_error(name, f"has faces of {h}x{w}, larger than its background of {H}x{W}")
    from .engine.poses import grid_shape

    grid = (C, *grid_shape((H, W), (h, w)))
    if A.shape != grid:
        raise _model_error(name, f"has a prior of shape {A.shape}; its faces and background need {grid} "
                                 f"(C, H-h+1, W-w+1) ({shapes})")
    if s.size == 1:
        s = np.full(Ch, float(s.reshape(-1)[0]))
    if s.shape != (Ch,):
        raise _model_error(name, f"has noise_std of shape {s.shape}; expected one value or {Ch} (one per channel)")
    for key, a in (("faces", F), ("background", B), ("noise_std", s), ("prior", A)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise _model_error(name, f"its {key} array holds {bad} NaN or infinite value(s)")
    if (s <= 0).any():
        raise _model_error(name, f"has noise_std {s.min():g}; expected s > 0")
    if (A < 0).any():
        raise _model_error(name, f"has a prior with negative values (minimum {A.min():g}); expected A >= 0")
    empty = 0.0 if empty_weight is None else _check_empty_weight(empty_weight, name)
    total = float(A.sum()) + empty
    if not abs(total - 1.0) <= _PRIOR_SUM_TOL:
        what = "a prior that" if empty_weight is None else "a prior and a 'no face' weight that"
        raise _model_error(name, f"has {what} sums to {total:.9g}; expected 1")
    return Params(F, B, s, A / total, None if empty_weight is None else empty / total)


def _check_brightness(gains, offsets, n_channels, name):
    """Per-image gains and offsets of a model file: two (K, G) arrays of finite reals, G = 1 or Ch, gains > 0."""
    if gains is None or offsets is None:
        raise _model_error(name, "has per-image gains or offsets without the other; expected both or neither")
    g, b = np.asarray(gains), np.asarray(offsets)
    if g.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        raise _model_error(name, f"has gains of dtype {g.dtype} and offsets of {b.dtype}; expected real numbers")
    if g.ndim != 2 or g.shape != b.shape or g.shape[1] not in (1, n_channels) or len(g) == 0:
        raise _model_error(name, f"has gains {g.shape} and offsets {b.shape}; expected two arrays (K, 1) or "
                                 f"(K, {n_channels})")
    g, b = g.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(g).all() and np.isfinite(b).all()) or (g <= 0).any():
        raise _model_error(name, "has gains or offsets that are not finite, or gains <= 0; expected finite "
                                 "values and gains > 0")
    return dict(gains=g, offsets=b)


def _check_empty_weight(value, name):
    """The 'no face' weight π_∅ of a model file: one finite number in [0, 1]."""
    a = np.asarray(value, dtype=np.float64)
    if a.size != 1 or not np.isfinite(a).all() or not 0.0 <= float(a.reshape(-1)[0]) <= 1.0:
        raise _model_error(name, f"has a 'no face' weight {a.reshape(-1)[:3].tolist()} of shape {a.shape}; "
                                 "expected one number from 0 to 1")
    return float(a.reshape(-1)[0])


def atomic_save(path, save_fn, *, numpy_name=False):
    """Write a ``.npz`` file through `emface.outputs.atomic_write`: ``save_fn(tmp)`` writes a temporary
    file in the same folder, which is then renamed into place (replacing a symlink there, never writing
    through it). With `numpy_name`, a path without ``.npz`` gets it, as `numpy.savez` does; a file object
    is written as is. A failure leaves the earlier file intact and raises `emface.outputs.OutputError`
    naming `path`."""
    from .outputs import atomic_write

    if hasattr(path, "write"):
        save_fn(path)
        return
    path = os.fspath(path)
    if numpy_name and not path.endswith(".npz"):
        path += ".npz"
    atomic_write(path, save_fn, suffix=".npz")


def check_out_file(path, what=""):
    """Refuse, before any work, a file that cannot be written: its folder must exist and be writable.

    The one check of an output file's folder (a checkpoint, ``emface predict --out``, ``emface generate``);
    `what` (such as ``"the checkpoint "``) goes before the path in the message.

    Raises
    ------
    emface.errors.InputError
        A ValueError whose one line names the file and its folder.
    """
    from .errors import InputError

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {what}{os.fspath(path)}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {what}{os.fspath(path)}: the folder {folder} is not writable")
