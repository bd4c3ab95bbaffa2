"""What every reader shares: the bound on a decompressed piece, its one-line error, the grey conversion."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from .._layout import LUMA
from ..errors import InputError, one_line

__all__ = ["decompression_limit", "too_big", "fmt_bytes", "has_module", "to_grey", "missing_extra", "map_file"]


def to_grey(img):
    """Colour pictures or stacks (..., 3 or 4) to grey (ITU-R 601 luma); grey ones pass through."""
    img = np.asarray(img)
    if img.ndim >= 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3].astype(np.float64)
        return rgb @ LUMA
    if img.ndim >= 3 and img.shape[-1] == 1:
        return img[..., 0]
    return img


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
    from ..engine import costs

    parsed = costs.parse_memory(max_memory)
    if parsed is not None:
        return int(parsed)
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        physical = 4 * _MIN_DECOMPRESS
    return max(_MIN_DECOMPRESS, int(physical) // 4)


def too_big(path, what, nbytes, limit):
    return InputError(f"{path}: {what} takes {fmt_bytes(nbytes)} once decompressed, more than the limit of "
                      f"{fmt_bytes(limit)}; raise it with max_memory (--max-memory) if this is intended")


def fmt_bytes(n):
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def has_module(name):
    """Whether the module `name` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


def missing_extra(what, extra):
    """The one-line error of a reader whose optional library is not installed: it names the pip extra."""
    return InputError(f"reading {what} needs the {extra} extra: pip install 'emface[{extra}]'")


def map_file(path, fh, dtype, offset, shape, fortran=False, what="the data"):
    """A read-only memory map of the open file `fh` (the map keeps its own handle on the file), or a
    one-line `InputError`."""
    try:
        return np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except (ValueError, OSError, OverflowError, TypeError) as exc:
        raise InputError(f"{path}: {what} cannot be mapped ({one_line(exc)})") from None
