"""The two small records that flow through emface: parameters and statistics.

`Params` holds θ = (F, B, s, A) for C faces and Ch channels. `Stats` holds the
sufficient statistics of one pass over (part of) the data and adds with ``+``,
so chunks, threads, blocks of incremental EM and Dask workers can each compute
their share and be summed. Nothing here knows about files, screens or restarts.

Internally every array is *channel first*, with the class axis in front:

=============  ==================  =========================================
θ              shape               meaning
=============  ==================  =========================================
``faces``      (C, Ch, h, w)       the faces F_c
``background`` (Ch, H, W)          the background B
``noise_std``  (Ch,)               s per channel (all equal for one shared s)
``prior``      (C, P, Q)           A over (face, top-left corner); sums to 1
                                   (to 1 - π_∅ with a "no face" class)
=============  ==================  =========================================

With ``empty_frames`` (MODEL.md, "Frames that do not fit") θ also holds
``empty_weight`` = π_∅, the weight of the "no face" class ``X_k = B + noise``;
None means the model has no such class.

One grey face is C = Ch = 1. The estimator shows users the channels-last layouts
``(h, w)``, ``(C, h, w)``, ``(h, w, Ch)`` and ``(C, h, w, Ch)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

import numpy as np

__all__ = ["Params", "Stats", "StatsSum", "save_model", "load_model", "check_model_arrays", "atomic_save"]


def _as_faces(face):
    F = np.asarray(face, dtype=np.float64)
    if F.ndim == 2:  # one grey face (h, w)
        return F[None, None]
    if F.ndim == 3:  # grey faces (C, h, w)
        return F[:, None]
    if F.ndim == 4:
        return F
    raise ValueError(f"faces must have shape (C, Ch, h, w), got {F.shape}")


@dataclass
class Params:
    """Model parameters θ = (F, B, s, A) in the engine's layout (see the module's docstring).

    For convenience a grey one-face θ may be given as ``Params(F (h, w), B (H, W),
    s, A (P, Q))`` and grey faces as ``(C, h, w)``; they are stored in the full layout.

    Attributes
    ----------
    faces : ndarray (C, Ch, h, w)
    background : ndarray (Ch, H, W)
    noise_std : ndarray (Ch,)
    prior : ndarray (C, P, Q)
    empty_weight : float or None
        π_∅, the weight of the "no face" class (A and π_∅ sum to 1); None: no such class.
    """

    faces: np.ndarray
    background: np.ndarray
    noise_std: np.ndarray
    prior: np.ndarray
    empty_weight: float | None = None
    #: brightness (MODEL.md, "Brightness that changes from frame to frame"): each training image's
    #: gain a_k and offset b_k in working units, (K, G) with G = 1 or Ch; None: the note's model
    gains: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __post_init__(self):
        self.faces = _as_faces(self.faces)
        B = np.asarray(self.background, dtype=np.float64)
        self.background = B[None] if B.ndim == 2 else B
        Ch = self.background.shape[0]
        s = np.asarray(self.noise_std, dtype=np.float64).reshape(-1)
        self.noise_std = np.full(Ch, float(s[0])) if s.size == 1 else s
        A = np.asarray(self.prior, dtype=np.float64)
        self.prior = A[None] if A.ndim == 2 else A
        if self.empty_weight is not None:
            self.empty_weight = float(self.empty_weight)
        if self.gains is not None:
            self.gains = np.asarray(self.gains, dtype=np.float64).reshape(len(self.gains), -1)
            self.offsets = np.asarray(self.offsets, dtype=np.float64).reshape(self.gains.shape)
        if self.faces.shape[1] != Ch or self.noise_std.shape != (Ch,) or self.prior.shape[0] != self.faces.shape[0]:
            raise ValueError(
                f"inconsistent parameter shapes: faces {self.faces.shape}, background {self.background.shape}, "
                f"noise_std {self.noise_std.shape}, prior {self.prior.shape}"
            )

    @property
    def n_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def n_channels(self) -> int:
        return self.background.shape[0]

    @property
    def face_shape(self) -> tuple:
        return tuple(self.faces.shape[2:])

    @property
    def image_shape(self) -> tuple:
        return tuple(self.background.shape[1:])

    @property
    def grid_shape(self) -> tuple:
        return tuple(self.prior.shape[1:])

    @property
    def weights(self) -> np.ndarray:
        """The class weights π_c = Σ_d A(c, d), shape (C,)."""
        return self.prior.sum(axis=(1, 2))

    def copy(self) -> "Params":
        return Params(self.faces.copy(), self.background.copy(), self.noise_std.copy(), self.prior.copy(),
                      self.empty_weight, *_copies(self.gains, self.offsets))

    def affine(self, scale: float, offset: float) -> "Params":
        """Parameters of the data ``scale * X + offset``: F, B map affinely, s by ``|scale|``."""
        gains, offsets = _copies(self.gains, self.offsets)
        if gains is not None:  # scale·(a μ + b) + offset = a (scale μ + offset) + scale·b + offset (1 - a)
            offsets = scale * offsets + offset * (1.0 - gains)
        return Params(scale * self.faces + offset, scale * self.background + offset,
                      abs(scale) * self.noise_std, self.prior.copy(), self.empty_weight, gains, offsets)


def _copies(*arrays):
    return tuple(None if a is None else np.array(a, copy=True) for a in arrays)


#: the per-image fields of `Stats`, concatenated (not summed) by ``+``
PER_IMAGE = ("positions", "labels", "image_loglik", "max_prob", "entropy", "class_prob", "near", "chi2",
             "empty_prob", "gains", "offsets")


@dataclass
class Stats:
    """Sufficient statistics of one pass over a set of images (MODEL.md).

    All sums are float64. Two `Stats` of disjoint image sets add with ``+``
    (many with `StatsSum`); the per-image arrays are concatenated in order.

    Attributes
    ----------
    n_images : int
        Number of images summed, K.
    N : ndarray (C, P, Q)
        ``Σ_k q_k(c, d)``.
    S_F : ndarray (C, Ch, h, w)
        ``Σ_k X_k ⋆ q_k(c, ·)`` accumulated in image space (crops).
    XC : ndarray (Ch, H, W)
        ``Σ_k X_k ∘ cov_k`` with ``cov_k = (Σ_c q_k(c, ·)) ⊛ 1_{h×w}``.
    loglik : float
        Soft EM: ``Σ_k log p(X_k | θ)``. Hard EM: ``Σ_k max_{c,d} log p(X_k, c, d | θ)``.
        This is the free energy of θ with its own optimal q, without the
        prior-smoothing term.
    entropy_sum : float
        ``Σ_k H(q_k)`` (0 for hard EM): with the sums above it gives the free
        energy of these posteriors under any θ (`emface.engine.free_energy`).
    N_empty : float
        ``Σ_k q_k(∅)``: the images' weight on the "no face" class (0 without it).
    S_F_hat : complex ndarray (C, Ch, H, W//2+1) or None
        The part of S_F accumulated in the frequency domain,
        ``Σ_k rfft2(X_k) · conj(rfft2(q_k(c)))``; the M-step turns it into image
        space with one inverse FFT per class and channel.
    SX : ndarray (Ch, H, W) or None
        ``Σ_k X_k``; constant, so the executor computes it on its first pass only.
    SXX : ndarray (Ch,) or None
        ``Σ_k ||X_k||²`` per channel.
    positions : ndarray (K, 2) of int or None
        Top-left corner of the most probable (face, position) of each image;
        (-1, -1) where "no face" is the most probable.
    labels : ndarray (K,) of int or None
        The face of that most probable (face, position); -1 for "no face".
    image_loglik : ndarray (K,) or None
        Per-image terms of `loglik`.
    max_prob : ndarray (K,) or None
        Posterior probability of the most probable (face, position).
    entropy : ndarray (K,) or None
        Posterior entropy of each image over (face, position) (nats; 0 for hard EM).
    class_prob : ndarray (K, C) or None
        Posterior probability of each face, positions summed out.
    near : ndarray (K, 8) or None
        The log-likelihood gain, prior left out, of moving each image's face
        from its most probable corner to each neighbouring corner
        (`emface.engine.kernels.NEAR_OFFSETS`); -inf off the grid. The shift
        escape reads its moves from it without another pass; -inf where "no face" is the most probable.
    chi2 : ndarray (K,) or None
        ``E_q[Σ_ch ||X_k,ch - μ_ch||² / s_ch²]``, the expected residual of
        each image under its posterior (MODEL.md, "Frames that do not fit"):
        about χ²_n, n = H·W·Ch, for an image the model explains
        (`emface.engine.misfit_z` makes it a z-score).
    empty_prob : ndarray (K,) or None
        Posterior probability of "no face" (0 without that class).
    """

    n_images: int
    N: np.ndarray
    S_F: np.ndarray
    XC: np.ndarray
    loglik: float
    entropy_sum: float = 0.0
    N_empty: float = 0.0
    S_F_hat: np.ndarray | None = None
    SX: np.ndarray | None = None
    SXX: np.ndarray | None = None
    positions: np.ndarray | None = None
    labels: np.ndarray | None = None
    image_loglik: np.ndarray | None = None
    max_prob: np.ndarray | None = None
    entropy: np.ndarray | None = None
    class_prob: np.ndarray | None = None
    near: np.ndarray | None = None
    chi2: np.ndarray | None = None
    empty_prob: np.ndarray | None = None
    #: brightness (`emface.engine.brightness`): ``NW = Σ_k a_k,ch² q_k(c, d)`` (C, Ch, P, Q) and
    #: ``KW = Σ_k a_k,ch²`` (Ch,), the normalisers of F and B; each image's updated (a, b), (K, G)
    NW: np.ndarray | None = None
    KW: np.ndarray | None = None
    #: brightness: Σ_k of what each image's (a, b) update raised its expected log-likelihood
    ecm_gain: float = 0.0
    gains: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def __add__(self, other: "Stats") -> "Stats":
        if other is None or (isinstance(other, int) and other == 0):
            return self
        total = StatsSum()
        total.add(self)
        total.add(other)
        return total.result()

    def __radd__(self, other):
        # lets ``sum(list_of_stats)`` work
        if other is None or (isinstance(other, int) and other == 0):
            return self
        return other.__add__(self)

    def __sub__(self, other: "Stats") -> "Stats":
        """Remove the sums of a subset of the images (incremental EM swaps a block's share)."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in PER_IMAGE:
                out[f.name] = None
            elif f.name in ("S_F_hat", "SX", "SXX", "NW", "KW"):
                if b is None:
                    out[f.name] = a
                elif a is None:
                    out[f.name] = -b
                else:
                    out[f.name] = a - b
            else:
                out[f.name] = a - b
        return Stats(**out)

    def without_per_image(self) -> "Stats":
        """A copy without the per-image arrays (what a reduction needs to ship)."""
        return replace(self, **{k: None for k in PER_IMAGE})


class StatsSum:
    """Adds the `Stats` of disjoint image sets as they come, in order: ``a + b + c + ...`` in one pass.

    The one place where `Stats` are added (``+`` is a sum of two). The sums
    are added in place, in order, and the per-image arrays are concatenated
    once, in `result`: folding ``total = total + s`` over n chunks would copy
    the growing per-image arrays n times. Sums absent from one set (None:
    S_F_hat, SX, SXX) count as zero; a per-image array absent from one set is
    absent from the total.
    """

    def __init__(self):
        self._sums = None
        self._per_image = []

    def add(self, stats):
        """Add the `Stats` of the next image set (None adds nothing)."""
        if stats is None:
            return
        self._per_image.append([getattr(stats, k) for k in PER_IMAGE])
        if self._sums is None:
            # a copy: in-place sums never touch the caller's arrays
            self._sums = {f.name: _copy(getattr(stats, f.name)) for f in fields(stats) if f.name not in PER_IMAGE}
            return
        for name, acc in self._sums.items():
            v = getattr(stats, name)
            if v is None:
                continue
            if acc is None:
                self._sums[name] = _copy(v)
            elif isinstance(acc, np.ndarray):
                acc += v
            else:
                self._sums[name] = acc + v

    def result(self):
        """The total `Stats`, or None when nothing was added."""
        if self._sums is None:
            return None
        per_image = {}
        for i, k in enumerate(PER_IMAGE):
            vals = [row[i] for row in self._per_image]
            per_image[k] = None if any(v is None for v in vals) else (vals[0] if len(vals) == 1 else np.concatenate(vals))
        return Stats(**self._sums, **per_image)


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else v


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
    name = _file_name(path)
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


def _file_name(path):
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
    what = f"its array {info.filename[:-4]!r}"
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise _model_error(name, f"{what} is in .npy format version {version}, which emface does not read")
        dtype = np.dtype(dtype)
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
    grid = (C, H - h + 1, W - w + 1)
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
