"""The formats of the fields whose objects turn: MRC/MRCS particle stacks (cryo-EM) and FITS cubes (astronomy).

Both are optional extras (``mrc``: mrcfile; ``fits``: astropy). Each file is opened once
(`emface._paths.open_regular`: no FIFO, checked through the open descriptor), its header
parsed by the library, its size checked against the header, and its data memory-mapped
from that open file, so a stack larger than memory streams through the engine. FITS data
scaled by ``BSCALE``/``BZERO`` are scaled a slice at a time as they are read
(`emface._lazyfiles.ScaledStack`); tile-compressed FITS images are decompressed a slice
at a time (`emface._lazyfiles.FitsTiles`), one tile at most `max_memory`.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._lazyfiles import FitsTiles, ScaledStack
from .._paths import open_regular
from ..errors import InputError, one_line
from ._common import has_module, map_file, missing_extra, too_big

__all__ = ["load_mrc", "load_fits", "MRC_EXTS", "FITS_EXTS"]

MRC_EXTS = (".mrc", ".mrcs")
FITS_EXTS = (".fits", ".fit", ".fts")
#: FITS BITPIX -> the dtype of the stored data (big-endian)
_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def load_mrc(path):
    """An MRC/MRCS file's images (nz sections of ny x nx; one image for a 2-D file), memory-mapped."""
    if not has_module("mrcfile"):
        raise missing_extra("MRC files", "mrc")
    from mrcfile import utils
    from mrcfile.mrcinterpreter import MrcInterpreter

    fh, st = open_regular(path)
    with fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # what permissive=False lets through is only advice
                header = MrcInterpreter(iostream=fh, permissive=False, header_only=True).header
            mode = int(header.mode)
            dtype = np.dtype(utils.data_dtype_from_header(header))
            shape = tuple(int(v) for v in utils.data_shape_from_header(header))
            offset = 1024 + int(header.nsymbt)
        except (ValueError, TypeError, OverflowError, EOFError, OSError) as exc:
            raise InputError(f"{path}: not a valid MRC file ({one_line(exc) or type(exc).__name__})") from None
        if mode == 101:
            raise InputError(f"{path}: the MRC file holds 4-bit packed data (mode 101), which emface does not read")
        _check_dimensions(path, "MRC file", shape)
        _check_size(path, "MRC file", st.st_size, offset, shape, dtype)
        return map_file(path, fh, dtype, offset, shape)


def load_fits(path, hdu=None, limit=None):
    """A FITS file's image cube (NAXIS3 images of NAXIS2 x NAXIS1; a 2-D image is one image).

    `hdu` names the HDU (its index or EXTNAME, from ``file.fits:HDU``); by default the
    first HDU that holds an image of 2 or more axes.
    """
    if not has_module("astropy"):
        raise missing_extra("FITS files", "fits")
    fh, st = open_regular(path)
    with fh:
        index, header, info, tiles, shape = _fits_layout(path, fh, hdu)
        single = len(shape) == 2
        shape = (1,) + shape if single else shape  # one image: a stack of one, the same bytes
        dtype, scale, zero = _fits_values(path, index, header)
        scaled = (scale, zero) != (1.0, 0.0)
        if tiles is not None:
            nbytes = int(np.prod(tiles, dtype=object)) * dtype.itemsize
            if limit is not None and nbytes > limit:
                raise too_big(path, f"one compressed tile {tiles} of HDU {index}", nbytes, limit)
            end = int(info.get("datLoc", 0)) + int(info.get("datSpan", 0))
            if end > st.st_size:
                raise InputError(f"{path}: truncated FITS file: HDU {index} ends at byte {end} but the file has "
                                 f"{st.st_size} bytes")
            # astropy decompresses and scales; the stack holds what it gives
            return FitsTiles(path, index, shape, np.float64 if scaled else dtype.newbyteorder("="), single)
        _check_size(path, "FITS file", st.st_size, int(info["datLoc"]), shape, dtype)
        raw = map_file(path, fh, dtype, int(info["datLoc"]), shape)
    return ScaledStack(raw, scale, zero) if scaled else raw


def _fits_layout(path, fh, hdu):
    """(HDU index, its header, its place in the file, its tiles or None, its shape) from the headers of
    the open FITS file `fh` (which astropy reads but does not close: no HDUList is closed here)."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdus = fits.open(fh, memmap=False, lazy_load_hdus=False)
            index, h = _choose_hdu(path, hdus, hdu)
            info = h.fileinfo() or {}
            tiles = tuple(int(v) for v in h.tile_shape) if isinstance(h, fits.CompImageHDU) else None
            shape = tuple(int(v) for v in h.shape)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError) as exc:
        raise InputError(f"{path}: not a valid FITS file ({one_line(exc) or type(exc).__name__})") from None
    damage = next((str(w.message) for w in caught if "truncat" in str(w.message).lower()), None)
    if damage:
        raise InputError(f"{path}: truncated or damaged FITS file ({one_line(damage)})")
    return index, h.header, info, tiles, _cube_shape(path, shape)


def _fits_values(path, index, header):
    """(stored dtype, BSCALE, BZERO) of an image HDU, checked."""
    bitpix = int(header["BITPIX"])
    if bitpix not in _BITPIX:
        raise InputError(f"{path}: HDU {index} has BITPIX {bitpix}; expected one of {sorted(_BITPIX)}")
    scale, zero = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
    if not (np.isfinite(scale) and np.isfinite(zero)):
        raise InputError(f"{path}: HDU {index} has BSCALE {scale} and BZERO {zero}; expected finite numbers")
    return np.dtype(_BITPIX[bitpix]), scale, zero


def _choose_hdu(path, hdus, which):
    """(index, HDU): the one named, else the first image HDU with 2 or more axes."""
    from astropy.io import fits

    images = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
    if which is not None:
        key = int(which) if str(which).lstrip("-").isdigit() else str(which)
        try:
            h = hdus[key]
        except (KeyError, IndexError):
            raise InputError(f"{path}: no HDU {which!r} (found {_describe(hdus)})") from None
        if not isinstance(h, images) or not h.header.get("NAXIS"):
            raise InputError(f"{path}: HDU {which!r} holds no image (found {_describe(hdus)})")
        return hdus.index_of(key), h
    for i, h in enumerate(hdus):
        if isinstance(h, images) and int(h.header.get("NAXIS", 0)) >= 2:
            return i, h
    raise InputError(f"{path}: no image of 2 or 3 axes in this FITS file (found {_describe(hdus)}); "
                     f"name the HDU as {path}:N")


def _describe(hdus):
    return ", ".join(f"{i}: {type(h).__name__} {tuple(getattr(h, 'shape', ()) or ())}" for i, h in enumerate(hdus))


def _cube_shape(path, shape):
    """A FITS image's numpy shape as (K, H, W) or (H, W): leading axes of length 1 dropped."""
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    _check_dimensions(path, "FITS image", shape)
    return shape


def _check_dimensions(path, what, shape):
    if len(shape) not in (2, 3) or 0 in shape:
        raise InputError(f"{path}: the {what} has data of shape {shape}; expected images (K, H, W) or one image "
                         f"(H, W)")


def _check_size(path, what, size, offset, shape, dtype):
    need = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size < need:
        raise InputError(f"{path}: truncated or damaged {what}: its header announces shape {shape} of {dtype.name} "
                         f"({need} bytes) but the file has {size} bytes")

