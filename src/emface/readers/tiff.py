"""Multi-page TIFF stacks: every page, alike, memory-mapped when the file allows, else decoded a slice at a time."""

from __future__ import annotations

import numpy as np

from .._lazyfiles import TiffPages, tifffile_log
from .._paths import open_regular
from ..errors import InputError, one_line
from ._common import too_big

__all__ = ["load_tiff", "TIFF_EXTS"]

TIFF_EXTS = (".tif", ".tiff")


def load_tiff(path, limit=None):
    """A TIFF stack: every page (whichever library wrote the file), checked to share one shape and
    dtype from the headers; memory-mapped when tifffile can, else decoded a slice of pages at a time.
    One picture (a single page, even a colour one) is a stack of one."""
    import tifffile

    fh, _ = open_regular(path)
    with fh, tifffile_log() as log:
        try:
            with tifffile.TiffFile(fh) as tf:
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
        raise too_big(path, f"one TIFF page ({'x'.join(map(str, page))} of {dtype})", nbytes, limit)
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
