"""Checks at the boundary, with scikit-learn-style messages: what was expected, what was given."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

__all__ = [
    "check_stack",
    "check_face_shape",
    "check_face_shape_spec",
    "check_int",
    "check_real",
    "check_choice",
    "check_params_arrays",
    "check_prior",
    "check_random_state",
]


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}" if not hasattr(x, "shape") else f"{type(x).__name__} of shape {x.shape}"


def _is_array_like(X):
    return hasattr(X, "shape") and hasattr(X, "dtype") and hasattr(X, "__getitem__")


_MAX_USUAL_CHANNELS = 4  # grey, grey + alpha, RGB, RGBA: more is unusual enough to say so


def check_stack(X, name="X", *, layout="khw", allow_channels=True):
    """Validate an image stack and return an array-like of shape (K, H, W) or (K, H, W, Ch).

    Arrays that live outside memory (memory maps, zarr, HDF5, dask) are
    returned as they are; lists are converted. NaN and inf are checked later,
    chunk by chunk, by the source. With ``layout="hwk"`` (the course API) the
    stack is (H, W, K) and grey.
    """
    what = "(H, W, K)" if layout == "hwk" else ("(K, H, W) or (K, H, W, Ch)" if allow_channels else "(K, H, W)")
    if X is None:
        raise ValueError(f"{name} must be an array of shape {what}, got None")
    if not _is_array_like(X):
        try:
            X = np.asarray(X)
        except Exception as exc:  # pragma: no cover - numpy's own message is kept
            raise ValueError(f"{name} must be an array of shape {what}, got {_describe(X)}") from exc
    dtype = np.dtype(X.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{name} must hold real numbers (float, int, uint or bool), got dtype {dtype}"
        )
    shape = tuple(X.shape)
    ok = len(shape) == 3 or (len(shape) == 4 and allow_channels and layout != "hwk")
    if not ok:
        hint = ""
        if len(shape) == 2:
            hint = "; for a single image use X[None]" if layout != "hwk" else "; for a single image use X[..., None]"
        elif len(shape) == 4:
            hint = "; the course API is grey: convert colour stacks to grey first"
        elif len(shape) == 5:
            hint = "; a 5-D array is not an image stack (several stacks? pass one at a time)"
        dims = "a 3-D" if (layout == "hwk" or not allow_channels) else "a 3-D or 4-D"
        raise ValueError(f"{name} must be {dims} array of shape {what}, got {len(shape)}-D shape {shape}{hint}")
    if 0 in shape:
        raise ValueError(f"{name} must hold at least one image of at least one pixel, got shape {shape}")
    if len(shape) == 4 and shape[3] > _MAX_USUAL_CHANNELS:
        warnings.warn(f"{name} of shape {shape} is read as {shape[0]} image(s) of {shape[1]}x{shape[2]} pixels with "
                      f"{shape[3]} channels each (channels last); if it is a grey stack with an extra axis, "
                      "pass a 3-D array (K, H, W) instead", UserWarning, stacklevel=3)
    return X


def check_face_shape(face_shape, image_shape=None, name="face_shape"):
    """A pair of positive ints that fits inside the images."""
    if isinstance(face_shape, (str, bytes)) or not hasattr(face_shape, "__len__") or len(face_shape) != 2:
        raise ValueError(f"{name} must be a pair of positive ints (h, w), got {face_shape!r}")
    out = []
    for v in face_shape:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or int(v) < 1:
            raise ValueError(f"{name} must be a pair of positive ints (h, w), got {face_shape!r}")
        out.append(int(v))
    h, w = out
    if image_shape is not None:
        H, W = image_shape
        if h > H or w > W:
            raise ValueError(
                f"{name}={tuple(out)} does not fit in images of shape (H, W)=({H}, {W}): "
                f"expected h <= {H} and w <= {W}"
            )
    return h, w


def check_face_shape_spec(face_shape, image_shape, name="face_shape"):
    """(h, w), ``"auto"``, or ((h_min, h_max), (w_min, w_max)).

    Returns (h, w) for a fixed size, or the string / pair of ranges (validated)
    for a size to choose.
    """
    if isinstance(face_shape, str):
        if face_shape != "auto":
            raise ValueError(f"{name} must be a pair of positive ints (h, w), 'auto', or a pair of ranges "
                             f"((h_min, h_max), (w_min, w_max)), got {face_shape!r}")
        return "auto"
    if (hasattr(face_shape, "__len__") and len(face_shape) == 2
            and all(hasattr(r, "__len__") and not isinstance(r, str) for r in face_shape)):
        H, W = image_shape
        out = []
        for (lo_hi, side, axis) in zip(face_shape, (H, W), ("h", "w")):
            if len(lo_hi) != 2:
                raise ValueError(f"{name} ranges must be pairs (min, max), got {face_shape!r}")
            lo, hi = (check_int(v, f"{name} {axis} range", low=1) for v in lo_hi)
            if lo > hi:
                raise ValueError(f"{name}'s {axis} range must have min <= max, got ({lo}, {hi})")
            if lo > side:
                raise ValueError(f"{name}'s {axis} range ({lo}, {hi}) does not fit in images of shape "
                                 f"(H, W)=({H}, {W}): expected {axis}_min <= {side}")
            out.append((lo, min(hi, side)))
        if out[0][0] == out[0][1] and out[1][0] == out[1][1]:
            return out[0][0], out[1][0]
        return tuple(out)
    return check_face_shape(face_shape, image_shape, name)


def check_random_state(seed, name="random_state"):
    """A numpy Generator from None, an int, a Generator or a legacy RandomState."""
    if seed is None or isinstance(seed, (numbers.Integral, np.integer)):
        return np.random.default_rng(seed)
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(0, 2**31 - 1))
    raise ValueError(f"{name} must be None, an int or a numpy Generator, got {seed!r}")


def check_int(value, name, *, low=None, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _finite_real(value):
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float64
        return False


def check_real(value, name, *, low=None, low_inclusive=True):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not _finite_real(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if low is not None:
        bad = value < low if low_inclusive else value <= low
        if bad:
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"{name} must be {op} {low}, got {value}")
    return value


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_array(value, name, shape):
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real array of shape {shape}, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} must hold finite values only, got {bad} NaN or infinite value(s)")
    return arr


def check_prior(prior, shape, name="prior_init"):
    """A non-negative array of the given shape summing to one."""
    A = _check_array(prior, name, shape)
    if (A < 0).any():
        raise ValueError(f"{name} must be non-negative, got a minimum of {A.min():g}")
    total = A.sum()
    if not abs(total - 1.0) <= 1e-6:
        raise ValueError(f"{name} must sum to 1, got a sum of {total:.6g}")
    return A / total


def _public_shape(core, n_faces, n_channels, colour, *, classes=True):
    """The user's layout of an array whose per-face core is `core` (h, w) or (H, W)."""
    shape = tuple(core)
    if colour:
        shape = shape + (n_channels,)
    if classes and n_faces > 1:
        shape = (n_faces,) + shape
    return shape


def check_params_arrays(image_shape, face_shape, *, n_faces=1, n_channels=1, colour=False, face=None,
                        background=None, noise_std=None, prior=None, noise="shared",
                        names=("face_init", "background_init", "noise_std_init", "prior_init")):
    """Validate user-given parameter arrays against the data's geometry.

    The user's layouts put the channels last: a face is (h, w), (C, h, w),
    (h, w, Ch) or (C, h, w, Ch); a background (H, W) or (H, W, Ch); a prior
    (P, Q) or (C, P, Q); s a number, or one per channel with ``noise="per_channel"``.

    Returns a dict with the given ones as float64 arrays in the engine's
    layout (faces (C, Ch, h, w), background (Ch, H, W), prior (C, P, Q)
    normalised, noise_std (Ch,)).
    """
    H, W = image_shape
    h, w = face_shape
    C, Ch = n_faces, n_channels
    nf, nb, ns, na = names
    out = {}
    if face is not None:
        want = _public_shape((h, w), C, Ch, colour)
        arr = np.asarray(face)
        if C == 1 and arr.ndim == len(want) + 1 and arr.shape[0] == 1:
            arr = arr[0]
        hint = f" (the images have {Ch} channel(s))" if colour else ""
        try:
            F = _check_array(arr, nf, want)
        except ValueError as exc:
            raise ValueError(f"{exc}{hint}") from None
        F = F.reshape((C, h, w, Ch) if colour else (C, h, w, 1))
        out["faces"] = np.ascontiguousarray(np.moveaxis(F, -1, 1))
    if background is not None:
        B = _check_array(background, nb, _public_shape((H, W), C, Ch, colour, classes=False))
        out["background"] = np.ascontiguousarray(np.moveaxis(B, -1, 0)) if colour else B[None]
    if noise_std is not None:
        if np.ndim(noise_std) == 0:
            out["noise_std"] = np.full(Ch, check_real(noise_std, ns, low=0.0, low_inclusive=False))
        else:
            s = _check_array(noise_std, ns, (Ch,))
            if (s <= 0).any():
                raise ValueError(f"{ns} must be > 0.0, got a minimum of {s.min():g}")
            if noise != "per_channel" and not np.all(s == s[0]):
                raise ValueError(f"{ns} holds one value per channel, but noise={noise!r} shares one s: "
                                 "give a number, or use noise='per_channel'")
            out["noise_std"] = s
    if prior is not None:
        from .engine.poses import grid_shape

        P, Q = grid_shape((H, W), (h, w))
        arr = np.asarray(prior)
        if C == 1 and arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        A = check_prior(arr, (P, Q) if C == 1 else (C, P, Q), na)
        out["prior"] = A.reshape(C, P, Q)
    return out
