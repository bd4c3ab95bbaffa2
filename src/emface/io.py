"""Reading image stacks from files and folders: `load_stack` dispatches by suffix to `emface.readers`.

`load_stack` accepts:

- ``.npy`` (memory-mapped, so larger-than-memory stacks stream) and ``.npz`` (memory-mapped where
  stored uncompressed, else decompressed a slice of images at a time);
- multi-page TIFF (through tifffile: every page, memory-mapped when the file allows, else decoded
  a slice of pages at a time);
- a folder of PNG, JPEG or TIFF frames, in natural sort order, decoded a chunk at a time;
- a video file, decoded in chunks by PyAV (the ``video`` extra), or cached once to disk;
- zarr stores and HDF5 files (``path.h5:dataset``), read lazily;
- MRC/MRCS particle stacks (``.mrc``, ``.mrcs``; the ``mrc`` extra) and FITS cubes (``.fits``, ``.fit``,
  ``.fts``, ``path.fits:HDU``; the ``fits`` extra), memory-mapped (a tile-compressed FITS image is
  decompressed a slice of images at a time).

`write_positions` (the per-image table) is `emface.outputs.write_positions`, re-exported here.

Colour frames, TIFF stacks and videos stay in colour, (K, H, W, 3); ``grey=True``
converts them (ITU-R 601 luma), slice by slice as they are read. Pictures
(frames, TIFF, video) with an alpha channel lose it, with a `UserWarning`
that says so; arrays (npy, npz, zarr, HDF5) keep every channel they have; MRC and FITS
stacks are grey.
Every failure raises `InputError`, a ValueError whose message says what is
wrong and what was expected; an optional reader that is not installed is
named with the ``pip install`` that adds it.

Files are untrusted: FIFOs and devices are refused before they are opened
(`check_regular_file`); sizes come from headers before anything is
decompressed (`decompression_limit`); HDF5 data stored outside the file and
links out of a zarr store are refused unless ``allow_external=True``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ._paths import check_regular_file
from .errors import InputError
from .outputs import write_positions
from .readers._common import decompression_limit, has_module, missing_extra, to_grey
from .readers.arrays import load_npy, load_npz
from .readers.frames import IMAGE_EXTS, FrameFolder, load_folder, read_image
from .readers.science import FITS_EXTS, MRC_EXTS, load_fits, load_mrc
from .readers.stores import check_store_files, is_zarr_folder, load_h5, load_zarr
from .readers.tiff import TIFF_EXTS, load_tiff
from .video import SUFFIXES as _VIDEO_SUFFIXES

__all__ = ["InputError", "GreyView", "FrameFolder", "load_stack", "read_image", "write_positions", "to_uint8",
           "to_grey", "check_regular_file", "decompression_limit"]

VIDEO_EXTS = tuple(_VIDEO_SUFFIXES)
HDF5_EXTS = (".h5", ".hdf5", ".hdf")


def _check_path(path):
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    if not os.path.isdir(path):
        check_regular_file(path)


def load_stack(path, *, layout="khw", grey=False, cache_dir=None, max_memory=None, allow_external=False):
    """Read an image stack.

    Parameters
    ----------
    path : str or path-like
        A file or a folder of frames (see the module's docstring).
    layout : {"khw", "hwk"}
        Axis order of ``.npy``/``.npz`` arrays: images first (default) or last.
        Arrays with a fourth axis are (K, H, W, Ch) or (H, W, Ch, K).
    grey : bool
        Convert colour stacks to grey.
    cache_dir : str, optional
        For a video: decode its frames once into this folder (an on-disk
        array) and reuse them in later calls; without it the frames are
        decoded in chunks on every pass.
    max_memory : int, str or None
        Bound on what one decompressed piece of the input may take (see
        `decompression_limit`): a TIFF page, an ``.npz`` array that must be
        read whole, one HDF5 or zarr chunk. Compressed stacks are otherwise
        decompressed a slice of images at a time.
    allow_external : bool
        Read HDF5 datasets whose data live in other files (external storage,
        virtual datasets, external links). Refused by default: such a file
        can make emface read any file on this machine.

    Returns
    -------
    X : array-like (K, H, W) or (K, H, W, Ch)
        A numpy array, or a memory map / lazy array for large files.
    names : list of str or None
        The frame file names, for a folder.

    Raises
    ------
    InputError
        Anything that cannot be read as a stack, with a one-line message:
        among them FIFOs and devices (refused before they are opened), TIFF
        pages of different sizes, frames of different bit depths, and HDF5
        data stored outside the file unless `allow_external`.
    """
    path = os.fspath(path)
    if layout not in ("khw", "hwk"):
        raise InputError(f"layout must be 'khw' or 'hwk', got {layout!r}")
    spec = path
    dataset = None
    if ":" in path and not os.path.exists(path):
        # file.h5:name or file.h5:group/name: the first colon after a file that exists
        cuts = [i for i, c in enumerate(path) if c == ":" and os.path.isfile(path[:i])]
        if cuts:
            spec, dataset = path[:cuts[0]], path[cuts[0] + 1:]
        elif ":" in os.path.basename(path):
            spec, dataset = path.rsplit(":", 1)
    _check_path(spec)
    if os.path.isdir(spec):
        if not is_zarr_folder(spec):
            return load_folder(spec, grey)
        check_store_files(spec, allow_external)
        return _finish(load_zarr(spec, dataset, decompression_limit(max_memory)), layout, None, spec, grey,
                       pictures=False)
    return _load_file(spec, dataset, layout, grey, cache_dir, max_memory, allow_external)


def _load_file(spec, dataset, layout, grey, cache_dir, max_memory, allow_external):
    """`load_stack` of a file, by its suffix."""
    low = spec.lower()
    if low.endswith(".npy"):
        return _finish(load_npy(spec), layout, None, spec, grey, pictures=False)
    limit = decompression_limit(max_memory)
    if low.endswith(".npz"):
        return _finish(load_npz(spec, layout, limit), layout, None, spec, grey, pictures=False)
    if low.endswith(TIFF_EXTS):
        return _finish(load_tiff(spec, limit), "khw", None, spec, grey)
    if low.endswith(HDF5_EXTS):
        return _finish(load_h5(spec, dataset, limit, allow_external), layout, None, spec, grey, pictures=False)
    if low.endswith(".zarr"):
        return _finish(load_zarr(spec, dataset, limit), layout, None, spec, grey, pictures=False)
    if low.endswith(MRC_EXTS):
        return _finish(load_mrc(spec), "khw", None, spec, grey, pictures=False)
    if low.endswith(FITS_EXTS):
        return _finish(load_fits(spec, dataset, limit), "khw", None, spec, grey, pictures=False)
    if low.endswith(VIDEO_EXTS):
        return _finish(_load_video(spec, grey, cache_dir), "khw", None, spec, grey)
    if low.endswith(IMAGE_EXTS):
        img = read_image(spec, grey=grey)
        return _finish(img[None], "khw", [os.path.basename(spec)], spec, grey)
    raise InputError(
        f"{spec}: unknown kind of input; expected .npy, .npz, a TIFF stack, a video, a zarr "
        f"store, an HDF5 file, an MRC/MRCS stack, a FITS cube or a folder of PNG/JPEG/TIFF frames"
    )


class GreyView:
    """A colour stack (K, H, W, Ch) seen as grey (K, H, W), converted slice by slice when read.

    So ``--grey`` streams a memory-mapped or lazily read stack instead of
    converting all of it into memory first.
    """

    def __init__(self, data):
        self.data = data
        K, H, W = (int(v) for v in data.shape[:3])
        self.shape = (K, H, W)
        self.ndim = 3
        self.dtype = np.dtype(np.float64)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        return to_grey(np.asarray(self.data[key]))

    def __array__(self, dtype=None, copy=None):
        out = to_grey(np.asarray(self.data))
        return out if dtype is None else out.astype(dtype)


def _finish(X, layout, names, path, grey=False, *, pictures=True):
    """The loaded array checked and put images first; `pictures`: an alpha channel is dropped."""
    if X.ndim == 2:
        X = X[None] if layout == "khw" else X[..., None]
    if X.ndim not in (3, 4):
        raise InputError(f"{path}: expected a stack of shape (K, H, W) or (K, H, W, Ch), "
                         f"got shape {tuple(X.shape)}")
    if layout == "hwk":
        X = np.moveaxis(np.asarray(X), -1, 0)
    if pictures and X.ndim == 4 and X.shape[-1] in (2, 4):
        what = "RGBA frames" if X.shape[-1] == 4 else "grey frames with alpha"
        warnings.warn(f"{path}: {what}: the alpha channel is dropped", UserWarning, stacklevel=3)
        X = X[..., :3] if X.shape[-1] == 4 else X[..., 0]
    if grey and X.ndim == 4:
        X = GreyView(X)
    if np.dtype(X.dtype).kind not in "biuf":
        raise InputError(f"{path}: expected real-valued images, got dtype {X.dtype}")
    return X, names


def _load_video(path, grey=False, cache_dir=None):
    """A lazy `emface.video.VideoStack` (frames decoded chunk by chunk on every pass), or, with
    `cache_dir`, the frames decoded once into an uncompressed .npy there and memory-mapped.

    What this returns is already grey when `grey` is set (3-D), so `_finish` leaves it lazy.
    """
    if not has_module("av"):
        raise missing_extra("video", "video")
    from .video import VideoStack

    if cache_dir is not None:
        return VideoStack.cached(path, cache_dir, grey=grey)
    return VideoStack(path, grey=grey)


def to_uint8(img, lo=None, hi=None):
    """Map an image linearly to 0..255 (by its own range unless one is given)."""
    img = np.asarray(img, dtype=np.float64)
    lo = float(np.min(img)) if lo is None else lo
    hi = float(np.max(img)) if hi is None else hi
    if not hi > lo:
        return np.full(img.shape, 128, dtype=np.uint8)
    return np.clip(np.round((img - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
