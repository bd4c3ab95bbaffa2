"""Reading image stacks from files and folders; writing pictures, tables and models.

`load_stack` accepts:

- ``.npy`` (memory-mapped, so larger-than-memory stacks stream) and ``.npz`` (memory-mapped where
  stored uncompressed, else decompressed a slice of images at a time);
- multi-page TIFF (through tifffile: every page, memory-mapped when the file allows, else decoded
  a slice of pages at a time);
- a folder of PNG, JPEG or TIFF frames, in natural sort order, decoded a chunk at a time;
- a video file, decoded in chunks by PyAV (the ``video`` extra), or cached once to disk;
- zarr stores and HDF5 files (``path.h5:dataset``), read lazily.

Colour frames, TIFF stacks and videos stay in colour, (K, H, W, 3); ``grey=True``
converts them (ITU-R 601 luma), slice by slice as they are read. Pictures
(frames, TIFF, video) with an alpha channel lose it, with a `UserWarning`
that says so; arrays (npy, npz, zarr, HDF5) keep every channel they have.
Every failure raises `InputError`, a ValueError whose message says what is
wrong and what was expected; an optional reader that is not installed is
named with the ``pip install`` that adds it.

Files are untrusted: FIFOs and devices are refused before they are opened
(`check_regular_file`); sizes come from headers before anything is
decompressed (`decompression_limit`); HDF5 data stored outside the file and
links out of a zarr store are refused unless ``allow_external=True``.
"""

from __future__ import annotations

import csv
import os
import warnings
import zipfile
import zlib

import numpy as np

from ._arraylike import LazyStack
from ._layout import LUMA
from ._paths import check_regular_file
from .errors import InputError, one_line

__all__ = ["InputError", "GreyView", "FrameFolder", "load_stack", "read_image", "write_positions", "to_uint8",
           "to_grey", "check_regular_file", "decompression_limit"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
TIFF_EXTS = (".tif", ".tiff")


def to_grey(img):
    """Colour pictures or stacks (..., 3 or 4) to grey (ITU-R 601 luma); grey ones pass through."""
    img = np.asarray(img)
    if img.ndim >= 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3].astype(np.float64)
        return rgb @ LUMA
    if img.ndim >= 3 and img.shape[-1] == 1:
        return img[..., 0]
    return img


def _check_path(path):
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    if not os.path.isdir(path):
        check_regular_file(path)


#: the smallest default bound on what one decompressed piece of an input may take in memory
_MIN_DECOMPRESS = 2**30


def decompression_limit(max_memory=None):
    """Bytes that one piece of a compressed input (a TIFF page, an .npz array read whole, one
    HDF5 or zarr chunk) may take once decompressed.

    Parameters
    ----------
    max_memory : int, str or None
        The fit's memory bound (``--max-memory``): it is the limit when given.
        None: the larger of 1 GiB and a quarter of the physical memory.
    """
    from .engine import costs

    parsed = costs.parse_memory(max_memory)
    if parsed is not None:
        return int(parsed)
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        physical = 4 * _MIN_DECOMPRESS
    return max(_MIN_DECOMPRESS, int(physical) // 4)


def _too_big(path, what, nbytes, limit):
    return InputError(f"{path}: {what} takes {_fmt_bytes(nbytes)} once decompressed, more than the limit of "
                      f"{_fmt_bytes(limit)}; raise it with max_memory (--max-memory) if this is intended")


def _fmt_bytes(n):
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


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
    low = spec.lower()
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, ".zarray")) or os.path.exists(os.path.join(spec, "zarr.json")) \
                or os.path.exists(os.path.join(spec, ".zgroup")):
            _check_store_files(spec, allow_external)
            return _finish(_load_zarr(spec, dataset, decompression_limit(max_memory)), layout, None, spec, grey,
                           pictures=False)
        X, names = _load_folder(spec, grey)
        return X, names
    if low.endswith(".npy"):
        return _finish(_load_npy(spec), layout, None, spec, grey, pictures=False)
    limit = decompression_limit(max_memory)
    if low.endswith(".npz"):
        return _finish(_load_npz(spec, layout, limit), layout, None, spec, grey, pictures=False)
    if low.endswith(TIFF_EXTS):
        return _finish(_load_tiff(spec, limit), "khw", None, spec, grey)
    if low.endswith((".h5", ".hdf5", ".hdf")):
        return _finish(_load_h5(spec, dataset, limit, allow_external), layout, None, spec, grey, pictures=False)
    if low.endswith(".zarr"):
        return _finish(_load_zarr(spec, dataset, limit), layout, None, spec, grey, pictures=False)
    if low.endswith(VIDEO_EXTS):
        return _finish(_load_video(spec, grey, cache_dir), "khw", None, spec, grey)
    if low.endswith(IMAGE_EXTS):
        img = read_image(spec, grey=grey)
        return _finish(img[None], "khw", [os.path.basename(spec)], spec, grey)
    raise InputError(
        f"{spec}: unknown kind of input; expected .npy, .npz, a TIFF stack, a video, a zarr "
        f"store, an HDF5 file or a folder of PNG/JPEG/TIFF frames"
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


def _load_npy(path):
    from numpy.lib import format as npformat

    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            version = npformat.read_magic(fh)
            read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except MemoryError:
        raise
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize's errors...
        raise InputError(f"{path}: not a valid .npy file ({one_line(exc) or type(exc).__name__})") from None
    if dtype.hasobject:
        raise InputError(f"{path}: holds Python objects, not an image array")
    if 0 in shape or not shape:
        raise InputError(f"{path}: the array holds no images (shape {shape})")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        raise InputError(f"{path}: truncated or damaged .npy file: the header announces shape {shape} "
                         f"({need} bytes) but the file has {size} bytes")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, OverflowError, TypeError) as exc:
        raise InputError(f"{path}: not a valid .npy file ({one_line(exc)})") from None


def _load_npz(path, layout="khw", limit=None):
    """One array of an ``.npz`` archive, from its headers first: memory-mapped where stored
    uncompressed, decompressed a slice of images at a time where compressed (C order, images
    first), else read whole if its decompressed size is within `limit`."""
    from ._lazyfiles import NpzMember, npz_member_layout

    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            if not infos:
                raise InputError(f"{path}: the .npz archive is empty; expected one array of images")
            key = "X" if "X" in infos else ("images" if "images" in infos else next(iter(infos)))
            info = infos[key]
            shape, fortran, dtype, where = npz_member_layout(path, zf, info)
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error) as exc:
        raise InputError(f"{path}: not a valid .npz file ({one_line(exc)})") from None
    if info.compress_type == zipfile.ZIP_STORED:
        try:
            return np.memmap(path, dtype=dtype, mode="r", offset=where, shape=shape, order="F" if fortran else "C")
        except (ValueError, OSError, OverflowError, TypeError) as exc:
            raise InputError(f"{path}: the .npz member {info.filename} cannot be mapped ({one_line(exc)})") from None
    if not fortran and layout == "khw" and len(shape) in (3, 4):
        return NpzMember(path, info.filename, shape, dtype, where)
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if limit is not None and nbytes > limit:
        raise _too_big(path, f"the compressed array {key!r} (shape {shape}, read whole: "
                             f"{'Fortran order' if fortran else 'images last'})", nbytes, limit)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(info) as fh:
            fh.seek(where)
            buf = fh.read(nbytes)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, zlib.error) as exc:
        raise InputError(f"{path}: not a valid .npz file ({one_line(exc)})") from None
    if len(buf) != nbytes:
        raise InputError(f"{path}: truncated .npz member {info.filename}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _load_tiff(path, limit=None):
    """A TIFF stack: every page (whichever library wrote the file), checked to share one shape and
    dtype from the headers; memory-mapped when tifffile can, else decoded a slice of pages at a time.
    One picture (a single page, even a colour one) is a stack of one."""
    import tifffile

    from ._lazyfiles import TiffPages, tifffile_log

    with tifffile_log() as log:
        try:
            with tifffile.TiffFile(path) as tf:
                layout = _tiff_layout(path, tf)
        except InputError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # tifffile raises many kinds
            raise InputError(f"{path}: not a readable TIFF file ({one_line(exc) or type(exc).__name__})") from None
    bad = log.damage()
    if bad:
        raise InputError(f"{path}: truncated or damaged TIFF file ({bad})")
    n, page, dtype, series, offset, planar = layout
    nbytes = int(np.prod(page, dtype=object)) * dtype.itemsize
    if limit is not None and nbytes > limit:
        raise _too_big(path, f"one TIFF page ({'x'.join(map(str, page))} of {dtype})", nbytes, limit)
    X = None
    try:
        if series is not None and offset is not None:
            with tifffile_log():
                X = tifffile.memmap(path, mode="r", series=series)
        elif offset is not None:
            X = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(n,) + page)
    except (ValueError, OSError):
        X = None  # not mappable after all (a short file): read page by page, which says what is wrong
    if X is not None and X.size == n * int(np.prod(page, dtype=np.int64)):
        X = X.reshape((n,) + page)
        return np.moveaxis(X, 1, -1) if planar else X
    X = TiffPages(path, n, page, dtype.newbyteorder("="), series=series, planar=planar)
    X[0]  # decode one page now: an unsupported compression is reported before any work starts
    return X


def _tiff_layout(path, tf):
    """(images, shape of a page, dtype, series or None, data offset or None, planar) of an open TIFF,
    from its headers only.

    Every page is an image, whichever library wrote the file and however many
    series tifffile sees in it, and all pages must be alike. The one exception is
    a file with one page that describes more images (ImageJ hyperstacks over
    4 GB): then tifffile's series is the stack. The offset is where the pages'
    data start when they follow each other uncompressed (memory-mappable).
    """
    pages = tf.pages
    n = len(pages)
    if n == 0:
        raise InputError(f"{path}: the TIFF file has no pages")
    first = pages.first
    page, dtype = tuple(int(v) for v in first.shape), np.dtype(tf.byteorder + first.dtype.char)
    planar = len(page) == 3 and int(getattr(first, "planarconfig", 1)) == 2 and page[0] > 1
    size = int(np.prod(page, dtype=object))
    if n == 1 and size and tf.is_imagej:
        s = tf.series[0]
        total = int(np.prod(s.shape, dtype=object))
        images = total // size
        if total == images * size and images > 1 and len(s.pages) == images:
            return images, page, dtype, 0, 0 if s.dataoffset is not None else None, planar
    nbytes = size * dtype.itemsize
    offset = _mappable_offset(first, nbytes)
    for k in range(1, n):
        p = pages[k]
        shape, dt = tuple(int(v) for v in p.shape), np.dtype(tf.byteorder + p.dtype.char)
        if shape != page or dt != dtype:
            what = "size" if shape != page else "pixel type"
            raise InputError(f"{path}: TIFF pages differ in {what}: page 0 is {'x'.join(map(str, page))} "
                             f"{dtype.name} but page {k} is {'x'.join(map(str, shape))} {dt.name}; "
                             f"all pages must be alike")
        if offset is not None and _mappable_offset(p, nbytes) != offset + k * nbytes:
            offset = None
    return n, page, dtype, None, offset, planar


def _mappable_offset(page, nbytes):
    """Where an uncompressed page's data start in the file, if they are one block of `nbytes`; else None."""
    try:
        if not (page.is_memmappable and page.is_contiguous) or int(page.nbytes) != nbytes:
            return None
        return int(page.dataoffsets[0])
    except Exception:  # a page tifffile cannot describe is read (and refused) page by page
        return None


def _load_h5(path, dataset, limit=None, allow_external=False):
    try:
        import h5py
    except ImportError:  # pragma: no cover - optional
        raise InputError("reading HDF5 needs h5py: pip install 'emface[outofcore]'") from None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({one_line(exc)})") from None
    if dataset is None:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.ndim >= 3 else None)
        if len(names) != 1:
            raise InputError(f"{path}: name the dataset as {path}:NAME (found {names or 'none with 3 axes'})")
        dataset = names[0]
    try:
        link = f.get(dataset, getlink=True)
        obj = f[dataset] if link is not None else None
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: cannot open {dataset!r} ({one_line(exc)})") from None
    if obj is None:
        raise InputError(f"{path}: no dataset {dataset!r}")
    if not isinstance(obj, h5py.Dataset):
        found = []
        obj.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
        raise InputError(f"{path}: {dataset!r} is a group, not a dataset; name one of its datasets as "
                         f"{path}:{dataset.strip('/')}/NAME (found {found[:10] or 'none'})")
    if not allow_external:
        _refuse_outside_data(path, dataset, f, obj, link, h5py)
    chunks = obj.chunks
    if limit is not None and chunks is not None:
        nbytes = int(np.prod(chunks, dtype=object)) * obj.dtype.itemsize
        if nbytes > limit:
            raise _too_big(path, f"one chunk {chunks} of dataset {dataset!r}", nbytes, limit)
    return obj


def _refuse_outside_data(path, dataset, f, obj, link, h5py):
    """HDF5 data that live outside the file: they could be any file on this machine."""
    why = None
    if isinstance(link, h5py.ExternalLink) or os.path.abspath(obj.file.filename) != os.path.abspath(f.filename):
        why = f"is reached through an external link to another file ({os.fspath(obj.file.filename)})"
    elif obj.is_virtual:
        why = "is a virtual dataset (its data come from other files)"
    elif obj.external:
        why = f"stores its data in external file(s) ({', '.join(os.fsdecode(e[0]) for e in obj.external[:3])})"
    if why:
        raise InputError(f"{path}: the dataset {dataset!r} {why}; refused because a file could make emface read "
                         f"any file on this machine: pass allow_external=True (--allow-external-data) to trust it")


def _check_store_files(root, allow_external=False):
    """Every file of a zarr store folder is a regular file (a FIFO among the chunks would block the
    reader), and, unless `allow_external`, no symbolic link leads out of the store. The zarr format
    itself has no reference to data outside the store; only links in the file system can make one.
    One listing of the folder (no file is opened)."""
    top = os.path.realpath(root)
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    folders.append(e.path)
                    continue
                if e.is_symlink():
                    real = os.path.realpath(e.path)
                    if not allow_external and os.path.commonpath([top, real]) != top:
                        raise InputError(f"{e.path}: a link out of the zarr store (to {real}); refused because "
                                         f"a store could make emface read any file on this machine: pass "
                                         f"allow_external=True (--allow-external-data) to trust it")
                    if os.path.isdir(real):
                        continue
                    check_regular_file(e.path)
                elif not e.is_file(follow_symlinks=False):
                    check_regular_file(e.path)


def _load_zarr(path, dataset, limit=None):
    try:
        import zarr
    except ImportError:  # pragma: no cover - optional
        raise InputError("reading zarr needs zarr: pip install 'emface[outofcore]'") from None
    try:
        z = zarr.open(path, mode="r")
    except Exception as exc:
        raise InputError(f"{path}: not a readable zarr store ({one_line(exc)})") from None
    if dataset is not None:
        try:
            z = z[dataset]
        except (KeyError, ValueError, TypeError):
            found = [k for k, _ in z.arrays()] if hasattr(z, "arrays") else []
            raise InputError(f"{path}: no array {dataset!r} in this zarr store (found {found or 'none'})") from None
    if not hasattr(z, "shape"):
        arrays = [k for k, v in z.arrays()] if hasattr(z, "arrays") else []
        if len(arrays) != 1:
            raise InputError(f"{path}: name the array as {path}:NAME (found {arrays or 'none'})")
        z = z[arrays[0]]
    chunks = getattr(z, "chunks", None)
    if limit is not None and chunks:
        nbytes = int(np.prod(chunks, dtype=object)) * np.dtype(z.dtype).itemsize
        if nbytes > limit:
            raise _too_big(path, f"one chunk {tuple(chunks)} of the zarr array", nbytes, limit)
    return z


def _natural_sorted(names):
    """frame2 before frame10: digits compare as numbers."""
    import re

    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)])


def read_image(path, *, grey=False):
    """Read one picture: (H, W) grey, or (H, W, Ch) colour (RGBA loses its alpha, with a note).

    Parameters
    ----------
    path : str or path-like
    grey : bool
        Convert colour to grey.
    """
    check_regular_file(path)
    img, alpha, _ = _read_picture(path, grey)
    if alpha:
        warnings.warn(f"{path}: {alpha}: the alpha channel is dropped", UserWarning, stacklevel=2)
    return img


def _read_picture(path, grey):
    """(picture, what had an alpha channel or None, the dtype it was stored in)."""
    import imageio.v3 as iio

    try:
        img = iio.imread(path)
    except Exception as exc:
        raise InputError(f"{path}: not an image this tool can read; expected a PNG, JPEG or TIFF picture "
                         f"({type(exc).__name__})") from None
    img = np.asarray(img)
    stored = img.dtype
    if img.ndim == 3 and img.shape[0] > 4 and img.shape[-1] not in (1, 2, 3, 4):
        img = img[0]  # a multi-page file read as a stack: take the first page
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    alpha = None
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        alpha = "RGBA frames" if img.shape[-1] == 4 else "grey frames with alpha"
        img = img[..., :3] if img.shape[-1] == 4 else img[..., 0]
    if grey:
        img = to_grey(img)
    if img.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2-D picture, got an array of shape {img.shape}")
    return img, alpha, stored


def _load_folder(folder, grey=False):
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")]
    if not names:
        raise InputError(f"{folder}: no PNG, JPEG or TIFF frames in this folder")
    X = FrameFolder(folder, _natural_sorted(names), grey=grey)
    if X.alpha:
        warnings.warn(f"{folder}: {X.alpha}: the alpha channel is dropped", UserWarning, stacklevel=3)
    return X, X.names


def _frame_header(path):
    """(H, W, pixel format) from a picture's header, without decoding it; None where Pillow cannot tell."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size[1], im.size[0], im.mode
    except Exception:
        return None


class FrameFolder(LazyStack):
    """The frames of a folder as a lazy stack: (K, H, W) grey or (K, H, W, Ch) colour.

    Frames are decoded when a slice of them is read, so a pass over a folder
    of 100,000 frames holds one chunk of them at a time. Opening the folder
    reads every frame's header only (size and pixel format) and decodes one
    frame of each pixel format, so that frames of different sizes or channel
    counts are reported before any work starts.

    Parameters
    ----------
    folder : str
    names : list of str
        The frame files, in the stack's order.
    grey : bool
        Convert colour frames to grey as they are read.

    Attributes
    ----------
    shape, dtype, ndim, size, nbytes : as an array's
    names : list of str
    alpha : str or None
        What had an alpha channel (dropped as the frames are read), if anything did.
    """

    _what = "a folder"

    def __init__(self, folder, names, grey=False):
        self.folder, self.names, self.grey = folder, list(names), bool(grey)
        paths = [os.path.join(folder, n) for n in self.names]
        formats = {}  # pixel format -> (a decoded frame's channel axis, () or (Ch,), its dtype, its stored dtype)
        first = None
        self.alpha = None
        for n, path in zip(self.names, paths):
            check_regular_file(path)  # a FIFO among the frames would block the header read for ever
            head = _frame_header(path)
            key = head[2] if head is not None else ("file", n)
            if key not in formats:
                img, alpha, stored = _read_picture(path, self.grey)
                formats[key] = (img.shape[2:], img.dtype, stored)
                self.alpha = self.alpha or alpha
                if head is None:
                    head = (img.shape[0], img.shape[1], key)
            this = (head[0], head[1]) + tuple(formats[key][0])
            if first is None:
                first = (n, this, formats[key][2])
            elif this != first[1]:
                what = "size" if this[:2] != first[1][:2] else "channel count"
                raise InputError(
                    f"{folder}: frames differ in {what}: {first[0]} is {_describe_shape(first[1])} but {n} is "
                    f"{_describe_shape(this)}; all frames must have the same size and channels (or use --grey)"
                )
            elif formats[key][2] != first[2]:
                raise _depths_differ(folder, first[0], first[2], n, formats[key][2])
        self.frame_shape = first[1]
        self.frame_dtype = first[2]  # as stored: every frame's, checked again as each is decoded
        dtype = np.result_type(*(f[1] for f in formats.values()))
        self.dtype = np.dtype(np.float64) if dtype.kind == "f" and dtype != np.float32 else np.dtype(dtype)
        self.shape = (len(self.names),) + tuple(int(v) for v in self.frame_shape)

    def __repr__(self):
        return f"FrameFolder({self.folder!r}, {len(self)} frames of {_describe_shape(self.frame_shape)})"

    def _read(self, index):
        out = np.empty((len(index),) + self.shape[1:], dtype=self.dtype)
        for t, k in enumerate(index):
            img, _, stored = _read_picture(os.path.join(self.folder, self.names[k]), self.grey)
            if img.shape != self.shape[1:]:
                raise InputError(f"{self.folder}: {self.names[k]} is {_describe_shape(img.shape)}, the other "
                                 f"frames {_describe_shape(self.shape[1:])}")
            if stored != self.frame_dtype:  # a header that did not tell the truth
                raise _depths_differ(self.folder, self.names[0], self.frame_dtype, self.names[k], stored)
            out[t] = img
        return out

    def _read_frames(self, frames):
        return self._read(frames)

    def _index(self, key):
        # an array of indices or a mask, as numpy reads it
        return [int(k) for k in np.atleast_1d(np.arange(len(self))[key])]


def _depth(dtype):
    dtype = np.dtype(dtype)
    return "1-bit" if dtype == np.bool_ else f"{8 * dtype.itemsize}-bit{' float' if dtype.kind == 'f' else ''}"


def _depths_differ(folder, first, first_dtype, name, dtype):
    return InputError(f"{folder}: frames differ in bit depth: {first} is {_depth(first_dtype)} ({np.dtype(first_dtype)}) "
                      f"but {name} is {_depth(dtype)} ({np.dtype(dtype)}); all frames must have the same bit depth")


def _describe_shape(shape):
    ch = "grey" if len(shape) == 2 else f"{shape[2]} channels"
    return f"{shape[0]}x{shape[1]}, {ch}"


def _load_video(path, grey=False, cache_dir=None):
    """A lazy `emface.video.VideoStack` (frames decoded chunk by chunk on every pass), or, with
    `cache_dir`, the frames decoded once into an uncompressed .npy there and memory-mapped.

    What this returns is already grey when `grey` is set (3-D), so `_finish` leaves it lazy.
    """
    if not _has("av"):
        raise InputError("reading video needs the video extra: pip install 'emface[video]'")
    from .video import VideoStack

    if cache_dir is not None:
        return VideoStack.cached(path, cache_dir, grey=grey)
    return VideoStack(path, grey=grey)


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


def write_positions(path, summary, names=None):
    """Write the per-image table: index, file, face, row, column, probabilities, entropy, misfit, "no face".

    Parameters
    ----------
    path : str
    summary : emface.PosteriorSummary
        ``probability`` is that of the chosen (face, position),
        ``face_probability`` that of the chosen face.
    names : list of str, optional
        The frame file of each image.

    Notes
    -----
    ``misfit`` is the frame's z-score (about N(0, 1) where the model explains
    it; above 5 its probabilities are the best of bad options).
    ``no_face_probability`` is the posterior of "no face", and ``empty`` is 1
    where that wins: such a frame has face -1 at row -1, column -1.
    """
    K = len(summary.positions)
    misfit = getattr(summary, "misfit", None)
    empty = getattr(summary, "no_face_probability", None)
    misfit = np.full(K, np.nan) if misfit is None else misfit
    empty = np.zeros(K) if empty is None else empty
    from .outputs import atomic_open

    with atomic_open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["index", "file", "face", "row", "col", "probability", "face_probability", "entropy", "misfit",
                     "no_face_probability", "empty"])
        for k in range(K):
            wr.writerow([k, "" if names is None else names[k], int(summary.faces[k]), int(summary.positions[k, 0]),
                         int(summary.positions[k, 1]), f"{summary.probability[k]:.6g}",
                         f"{summary.face_probability[k]:.6g}", f"{summary.entropy[k]:.6g}", f"{misfit[k]:.4g}",
                         f"{empty[k]:.6g}", int(summary.faces[k] < 0)])
