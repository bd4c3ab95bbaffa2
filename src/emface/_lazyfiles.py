"""Lazy stacks over untrusted container files: the pages of a TIFF, a compressed ``.npz`` member, a
tile-compressed FITS image, scaled FITS data;
and the one parser of a ``.npy`` header (`npy_header`), for ``.npy`` stacks, ``.npz`` members and model files.

Both are read a slice of images at a time, so a compressed stack of any
declared size streams through the engine in bounded memory instead of being
decompressed whole (a zip or TIFF "bomb" never reaches memory at once).
Sizes come from the files' headers, checked before any data is decompressed.
"""

from __future__ import annotations

import logging
import threading
import zipfile
import zlib

import numpy as np

from ._arraylike import LazyStack
from ._paths import open_regular
from .errors import InputError, one_line

__all__ = ["TiffPages", "NpzMember", "tifffile_log", "npz_member_layout", "npy_header", "NpyVersionError", "ScaledStack",
           "FitsTiles"]

# tifffile logs what it finds wrong with a file instead of raising; these words mark a damaged one
_TIFF_DAMAGE = ("invalid", "failed", "truncat", "corrupt", "cannot", "not enough", "out of bounds")


class tifffile_log(logging.Handler):
    """Context manager: tifffile's log messages are collected here instead of printed on stderr."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(one_line(record.getMessage()))

    def __enter__(self):
        self._logger = logging.getLogger("tifffile")
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate

    def damage(self):
        """The first message that says the file is damaged, or None."""
        for m in self.messages:
            if any(w in m.lower() for w in _TIFF_DAMAGE):
                return m
        return None


class _FileBacked(LazyStack):
    """A lazy stack that holds open files (the attributes named in `_handles`, closed in that order):
    reads are serialised by a lock, `close` closes them (a later read opens them again), and a pickled
    copy carries none (it opens its own)."""

    _handles = ()

    def _init_file(self, path, shape, dtype):
        """Set the file's path, the stack's shape and dtype; no file is open yet."""
        self.path = path
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        self._lock = threading.RLock()
        for name in self._handles:
            setattr(self, name, None)

    def _index(self, key):
        return [int(k) for k in np.atleast_1d(np.arange(len(self))[key])]

    def _handle(self):
        """The reader of the open file (the first of `_handles`), opened on first use through
        `open_regular` (then `fstat`: no FIFO, no device) and `_open`."""
        if getattr(self, self._handles[0]) is None:
            raw, _ = open_regular(self.path)
            self._open(raw)
        return getattr(self, self._handles[0])

    def _open(self, raw):
        """Set the `_handles` from the opened binary file `raw`."""
        raise NotImplementedError

    def close(self):
        """Close the file (a later read opens it again)."""
        with self._lock:
            for name in self._handles:
                f = getattr(self, name)
                if f is not None:
                    try:
                        f.close()
                    except Exception:  # pragma: no cover
                        pass
                setattr(self, name, None)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state.update(dict.fromkeys(self._handles))
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()


class TiffPages(_FileBacked):
    """Pages of a TIFF file as a lazy stack (K, H, W) or (K, H, W, S), decoded a slice at a time.

    Parameters
    ----------
    path : str
    n_pages : int
    frame_shape : tuple
        The shape of one page (every page's, checked by the caller).
    dtype : numpy dtype
    series : int or None
        Read the pages of this tifffile series; None: the file's pages themselves.
    planar : bool
        Pages are colour planes first (C, H, W): the stack has them last.
    """

    _what = "a TIFF file"
    _handles = ("_tf", "_fh")

    def __init__(self, path, n_pages, frame_shape, dtype, series=None, planar=False):
        self.page_shape = tuple(int(v) for v in frame_shape)
        self.planar = bool(planar)
        self.frame_shape = self.page_shape[1:] + self.page_shape[:1] if planar else self.page_shape
        self.series = series
        self._init_file(path, (int(n_pages),) + self.frame_shape, dtype)

    def __repr__(self):
        return f"TiffPages({self.path!r}, {self.shape[0]} pages of {self.frame_shape})"

    def _open(self, raw):
        import tifffile

        self._fh = raw
        self._tf = tifffile.TiffFile(raw)

    def _read_frames(self, frames):
        keys = [int(k) for k in frames]
        out = np.empty((len(keys),) + self.frame_shape, dtype=self.dtype)
        if not keys:
            return out
        t = 0
        with self._lock, tifffile_log() as log:
            try:
                tf = self._handle()
                for t, k in enumerate(keys):
                    page = tf.asarray(key=k, series=self.series, maxworkers=1)
                    page = np.asarray(page).reshape(self.page_shape)
                    out[t] = np.moveaxis(page, 0, -1) if self.planar else page
            except InputError:
                raise
            except MemoryError:
                raise
            except Exception as exc:  # tifffile and its codecs raise many kinds
                raise InputError(f"{self.path}: page {keys[t]} of the TIFF file could not be decoded "
                                 f"({one_line(exc) or type(exc).__name__})") from None
            bad = log.damage()
        if bad:
            raise InputError(f"{self.path}: the TIFF file is damaged ({bad})")
        return out




class NpyVersionError(ValueError):
    """A ``.npy`` header of a format version the reader does not take; `version` says which."""

    def __init__(self, version):
        super().__init__(f"unsupported .npy format version {version}")
        self.version = version


def npy_header(fh, versions=((1, 0), (2, 0), (3, 0))):
    """(shape, fortran_order, dtype) from the ``.npy`` header at `fh`'s position, which is left at the data.

    The one parser of ``.npy`` headers (stacks, ``.npz`` members, model files):
    numpy's, with the format version checked first against `versions`
    (`NpyVersionError` otherwise). numpy's own errors (ValueError, SyntaxError
    and the like, for a damaged header) propagate for the caller to word.
    """
    from numpy.lib import format as npformat

    version = npformat.read_magic(fh)
    if version not in versions:
        raise NpyVersionError(version)
    read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    return shape, fortran, np.dtype(dtype)


def npz_member_layout(path, zf, info, raw=None):
    """(shape, fortran_order, dtype, where) of one ``.npy`` member of an open zip file, from headers only.

    `raw` is the archive's open binary file, if the caller has it. `where` is
    the byte offset of the array data in the file for a member stored
    without compression (so it can be memory-mapped), else the offset of the
    data within the decompressed member. Raises InputError for a member that is
    encrypted, not an array, holds Python objects, or is smaller than its header says.
    """
    name = info.filename
    if info.flag_bits & 0x1:
        raise InputError(f"{path}: the .npz member {name} is encrypted")
    try:
        with zf.open(info) as fh:
            shape, fortran, dtype = npy_header(fh)
            header = fh.tell()
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # numpy's header parser, zipfile and zlib raise many kinds
        raise InputError(f"{path}: the .npz member {name} is not a valid .npy array "
                         f"({one_line(exc) or type(exc).__name__})") from None
    if dtype.hasobject:
        raise InputError(f"{path}: the .npz member {name} holds Python objects, not an image array")
    if 0 in shape or not shape:
        raise InputError(f"{path}: the .npz member {name} holds no images (shape {shape})")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header + nbytes > info.file_size:
        raise InputError(f"{path}: truncated or damaged .npz member {name}: its header announces shape {shape} "
                         f"({header + nbytes} bytes) but the member holds {info.file_size} bytes")
    if info.compress_type != zipfile.ZIP_STORED:
        return shape, fortran, dtype, header
    # the local header's own name and extra lengths give the data offset
    if raw is None:
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
    else:
        raw.seek(info.header_offset)
        local = raw.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise InputError(f"{path}: damaged .npz archive: no local header for member {name}")
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    return shape, fortran, dtype, start + header


class NpzMember(_FileBacked):
    """A compressed ``.npz`` member (C order, images first) as a lazy stack, decompressed a slice at a time.

    Reading images a..b decompresses the member up to image b (from where the
    last read ended when that is before a, else from the start), so passes in
    order cost one decompression of the member each and memory stays one slice.
    """

    _what = "a compressed .npz member"
    _handles = ("_fh", "_zip", "_raw")

    def __init__(self, path, name, shape, dtype, data_start):
        self._init_file(path, shape, dtype)
        self.name = name
        self.data_start = int(data_start)
        self.frame_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __repr__(self):
        return f"NpzMember({self.path!r}, {self.name!r}, shape {self.shape})"

    def _open(self, raw):
        self._raw = raw
        self._zip = zipfile.ZipFile(raw)
        self._fh = self._zip.open(self.name)

    def _read_frames(self, frames):
        if not isinstance(frames, range) or frames.step != 1:
            frames = list(frames)
            return np.stack([self._read_frames(range(k, k + 1))[0] for k in frames]) if frames else \
                np.empty((0,) + self.shape[1:], self.dtype)
        n = len(frames)
        if n == 0:
            return np.empty((0,) + self.shape[1:], self.dtype)
        want = n * self.frame_bytes
        with self._lock:
            try:
                fh = self._handle()
                fh.seek(self.data_start + frames.start * self.frame_bytes)
                buf = fh.read(want)
            except (OSError, EOFError, zipfile.BadZipFile, ValueError, RuntimeError, zlib.error) as exc:
                self.close()
                raise InputError(f"{self.path}: the .npz member {self.name} could not be decompressed "
                                 f"({one_line(exc)})") from None
        if len(buf) != want:
            raise InputError(f"{self.path}: the .npz member {self.name} ends before image {frames.stop - 1}")
        return np.frombuffer(buf, dtype=self.dtype).reshape((n,) + self.shape[1:])


class ScaledStack(LazyStack):
    """Stored values scaled as they are read: ``scale * raw + zero`` (FITS ``BSCALE``, ``BZERO``), float64.

    Parameters
    ----------
    raw : array-like (K, H, W) or (H, W)
        The stored values (a memory map).
    scale, zero : float
    """

    _what = "a scaled stack"

    def __init__(self, raw, scale, zero):
        self.raw, self.scale, self.zero = raw, float(scale), float(zero)
        self.shape = tuple(int(v) for v in raw.shape)
        self.dtype = np.dtype(np.float64)

    def __repr__(self):
        return f"ScaledStack({self.shape}, scale {self.scale:g}, zero {self.zero:g})"

    def _read_frames(self, frames):
        key = slice(frames.start, frames.stop, frames.step) if isinstance(frames, range) else list(frames)
        return np.asarray(self.raw[key], dtype=np.float64) * self.scale + self.zero

    def _index(self, key):
        return [int(k) for k in np.atleast_1d(np.arange(len(self))[key])]


class FitsTiles(_FileBacked):
    """A tile-compressed FITS image (K, H, W) read a slice of images at a time (through astropy's ``section``,
    which decompresses only the tiles a slice needs).

    Parameters
    ----------
    path : str
    hdu : int
        The HDU's index in the file.
    shape : tuple
    dtype : numpy dtype
        What the stack holds (astropy's decompressed, scaled values are converted to it).
    single : bool
        The HDU holds one 2-D image, seen as a stack of one (`shape` is (1, H, W)).
    """

    _what = "a compressed FITS image"
    _handles = ("_hdus", "_fh")

    def __init__(self, path, hdu, shape, dtype, single=False):
        self._init_file(path, shape, dtype)
        self.hdu, self.single = int(hdu), bool(single)

    def __repr__(self):
        return f"FitsTiles({self.path!r}, HDU {self.hdu}, shape {self.shape})"

    def _open(self, raw):
        from astropy.io import fits

        self._fh = raw
        self._hdus = fits.open(raw, memmap=False, lazy_load_hdus=True)

    def _read_frames(self, frames):
        keys = [int(k) for k in frames]
        out = np.empty((len(keys),) + self.shape[1:], dtype=self.dtype)
        if not keys:
            return out
        with self._lock:
            try:
                section = self._handle()[self.hdu].section
                if isinstance(frames, range) and frames.step == 1 and not self.single:
                    out[...] = section[frames.start:frames.stop]
                else:
                    for t, k in enumerate(keys):
                        out[t] = section[...] if self.single else section[k]
            except MemoryError:
                raise
            except Exception as exc:  # astropy and its codecs raise many kinds on a damaged file
                self.close()
                raise InputError(f"{self.path}: the compressed FITS image could not be decompressed "
                                 f"({one_line(exc) or type(exc).__name__})") from None
        return out
