"""Reading image stacks from files and folders; writing pictures, tables and models.

`load_stack` accepts:

- ``.npy`` (memory-mapped, so larger-than-memory stacks stream) and ``.npz``;
- multi-page TIFF (through tifffile, memory-mapped when the file allows);
- a folder of PNG, JPEG or TIFF frames, in natural sort order;
- a video file, through imageio's ffmpeg plugin (the ``video`` extra);
- zarr stores and HDF5 files (``path.h5:dataset``), read lazily.

Colour frames are converted to grey (ITU-R 601 luma). Every failure raises
`InputError`, a ValueError whose message says what is wrong and what was expected.
"""

from __future__ import annotations

import csv
import os
import zipfile

import numpy as np

__all__ = ["InputError", "load_stack", "write_image", "write_positions", "to_uint8"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
TIFF_EXTS = (".tif", ".tiff")


class InputError(ValueError):
    """An input that cannot be read as an image stack."""


def _grey(img):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3].astype(np.float64)
        return rgb @ np.array([0.299, 0.587, 0.114])
    if img.ndim == 3 and img.shape[-1] == 1:
        return img[..., 0]
    return img


def _check_path(path):
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")


def load_stack(path, *, layout="khw"):
    """Read an image stack.

    Parameters
    ----------
    path : str or path-like
        A file or a folder of frames (see the module's docstring).
    layout : {"khw", "hwk"}
        Axis order of ``.npy``/``.npz`` arrays: images first (default) or last.

    Returns
    -------
    X : array-like (K, H, W)
        A numpy array, or a memory map / lazy array for large files.
    names : list of str or None
        The frame file names, for a folder.
    """
    path = os.fspath(path)
    if layout not in ("khw", "hwk"):
        raise InputError(f"layout must be 'khw' or 'hwk', got {layout!r}")
    spec = path
    dataset = None
    if ":" in os.path.basename(path) and not os.path.exists(path):
        spec, dataset = path.rsplit(":", 1)
    _check_path(spec)
    low = spec.lower()
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, ".zarray")) or os.path.exists(os.path.join(spec, "zarr.json")) \
                or os.path.exists(os.path.join(spec, ".zgroup")):
            return _finish(_load_zarr(spec, dataset), layout, None, spec)
        X, names = _load_folder(spec)
        return X, names
    if low.endswith(".npy"):
        return _finish(_load_npy(spec), layout, None, spec)
    if low.endswith(".npz"):
        return _finish(_load_npz(spec), layout, None, spec)
    if low.endswith(TIFF_EXTS):
        return _finish(_load_tiff(spec), "khw", None, spec)
    if low.endswith((".h5", ".hdf5", ".hdf")):
        return _finish(_load_h5(spec, dataset), layout, None, spec)
    if low.endswith(".zarr"):
        return _finish(_load_zarr(spec, dataset), layout, None, spec)
    if low.endswith(VIDEO_EXTS):
        return _finish(_load_video(spec), "khw", None, spec)
    if low.endswith(IMAGE_EXTS):
        img = _read_image(spec)
        return _finish(img[None], "khw", [os.path.basename(spec)], spec)
    raise InputError(
        f"{spec}: unknown kind of input; expected .npy, .npz, a TIFF stack, a video, a zarr "
        f"store, an HDF5 file or a folder of PNG/JPEG/TIFF frames"
    )


def _finish(X, layout, names, path):
    if X.ndim == 4 and X.shape[-1] in (3, 4):
        X = np.stack([_grey(x) for x in X]) if len(X) else X[..., 0]
    if X.ndim == 2:
        X = X[None] if layout == "khw" else X[..., None]
    if X.ndim != 3:
        raise InputError(f"{path}: expected a stack of shape (K, H, W), got shape {tuple(X.shape)}")
    if layout == "hwk":
        X = np.moveaxis(np.asarray(X), -1, 0)
    if np.dtype(X.dtype).kind not in "biuf":
        raise InputError(f"{path}: expected real-valued images, got dtype {X.dtype}")
    return X, names


def _load_npy(path):
    from numpy.lib import format as npformat

    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            version = npformat.read_magic(fh)
            read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a valid .npy file ({_one_line(exc)})") from None
    if dtype.hasobject:
        raise InputError(f"{path}: holds Python objects, not an image array")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        raise InputError(f"{path}: truncated or damaged .npy file: the header announces shape {shape} "
                         f"({need} bytes) but the file has {size} bytes")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a valid .npy file ({_one_line(exc)})") from None


def _one_line(exc):
    return " ".join(str(exc).split())


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            if not keys:
                raise InputError(f"{path}: the .npz archive is empty; expected one array of images")
            key = "X" if "X" in keys else ("images" if "images" in keys else keys[0])
            return z[key]
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a valid .npz file ({exc})") from None


def _load_tiff(path):
    try:
        import tifffile
    except ImportError:  # pragma: no cover - optional
        raise InputError("reading TIFF needs tifffile: pip install 'emface[cli]'") from None
    try:
        try:
            return tifffile.memmap(path, mode="r")
        except (ValueError, OSError):
            return tifffile.imread(path)
    except Exception as exc:  # tifffile raises many kinds
        raise InputError(f"{path}: not a readable TIFF file ({exc})") from None


def _load_h5(path, dataset):
    try:
        import h5py
    except ImportError:  # pragma: no cover - optional
        raise InputError("reading HDF5 needs h5py: pip install 'emface[outofcore]'") from None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    if dataset is None:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim >= 3 else None)
        if len(names) != 1:
            raise InputError(f"{path}: name the dataset as {path}:NAME (found {names or 'none with 3 axes'})")
        dataset = names[0]
    if dataset not in f:
        raise InputError(f"{path}: no dataset {dataset!r}")
    return f[dataset]


def _load_zarr(path, dataset):
    try:
        import zarr
    except ImportError:  # pragma: no cover - optional
        raise InputError("reading zarr needs zarr: pip install 'emface[outofcore]'") from None
    try:
        z = zarr.open(path, mode="r")
    except Exception as exc:
        raise InputError(f"{path}: not a readable zarr store ({exc})") from None
    if dataset is not None:
        z = z[dataset]
    if not hasattr(z, "shape"):
        arrays = [k for k, v in z.arrays()] if hasattr(z, "arrays") else []
        if len(arrays) != 1:
            raise InputError(f"{path}: name the array as {path}:NAME (found {arrays or 'none'})")
        z = z[arrays[0]]
    return z


def _natural_sorted(names):
    try:
        from natsort import natsorted

        return natsorted(names)
    except ImportError:  # pragma: no cover - natsort is in the cli extra
        import re

        return sorted(names, key=lambda s: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)])


def _read_image(path):
    try:
        import imageio.v3 as iio
    except ImportError:  # pragma: no cover - optional
        raise InputError("reading images needs imageio: pip install 'emface[cli]'") from None
    try:
        img = iio.imread(path)
    except Exception as exc:
        raise InputError(f"{path}: not an image this tool can read; expected a PNG, JPEG or TIFF picture "
                         f"({type(exc).__name__})") from None
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] > 4 and img.shape[-1] not in (1, 3, 4):
        img = img[0]  # a multi-page file read as a stack: take the first page
    img = _grey(img)
    if img.ndim != 2:
        raise InputError(f"{path}: expected a 2-D picture, got an array of shape {img.shape}")
    return img


def _load_folder(folder):
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")]
    if not names:
        raise InputError(f"{folder}: no PNG, JPEG or TIFF frames in this folder")
    names = _natural_sorted(names)
    frames = []
    shape = None
    for n in names:
        img = _read_image(os.path.join(folder, n))
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise InputError(
                f"{folder}: frames differ in size: {names[0]} is {shape[0]}x{shape[1]} but {n} is "
                f"{img.shape[0]}x{img.shape[1]}; all frames must have the same size"
            )
        frames.append(img)
    X = np.stack(frames)
    if X.dtype.kind == "f" and X.dtype != np.float32:
        X = X.astype(np.float64)
    return X, names


def _load_video(path):
    try:
        import imageio.v3 as iio
    except ImportError:  # pragma: no cover - optional
        raise InputError("reading video needs imageio: pip install 'emface[video]'") from None
    try:
        frames = [_grey(f) for f in iio.imiter(path, plugin="pyav" if _has("av") else "FFMPEG")]
    except Exception as exc:
        raise InputError(f"{path}: could not read the video ({type(exc).__name__}: {exc}); "
                         "video needs the optional extra: pip install 'emface[video]'") from None
    if not frames:
        raise InputError(f"{path}: the video has no frames")
    return np.stack(frames)


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def to_uint8(img, lo=None, hi=None):
    """Map an image linearly to 0..255 (by its own range unless one is given)."""
    img = np.asarray(img, dtype=np.float64)
    lo = float(np.min(img)) if lo is None else lo
    hi = float(np.max(img)) if hi is None else hi
    if not hi > lo:
        return np.full(img.shape, 128, dtype=np.uint8)
    return np.clip(np.round((img - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def write_image(path, img, lo=None, hi=None):
    """Write a 2-D array as an 8-bit grey PNG."""
    import imageio.v3 as iio

    iio.imwrite(path, to_uint8(img, lo, hi))


def write_positions(path, positions, max_prob, entropy, names=None):
    """Write the per-image table: index, file, row, column, probability, entropy."""
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["index", "file", "row", "col", "probability", "entropy"])
        for k in range(len(positions)):
            wr.writerow([k, "" if names is None else names[k], int(positions[k, 0]), int(positions[k, 1]),
                         f"{max_prob[k]:.6g}", f"{entropy[k]:.6g}"])
