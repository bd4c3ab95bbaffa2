"""``.npy`` arrays and ``.npz`` archives: headers read first, memory-mapped where stored uncompressed."""

from __future__ import annotations

import zipfile
import zlib

import numpy as np

from .._lazyfiles import NpzMember, npy_header, npz_member_layout
from .._paths import open_regular
from ..errors import InputError, one_line
from ._common import map_file, too_big

__all__ = ["load_npy", "load_npz"]


def load_npy(path):
    """A ``.npy`` stack, memory-mapped, its header and size checked first (through the open file)."""
    fh, st = open_regular(path)
    with fh:
        try:
            shape, fortran, dtype = npy_header(fh)
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
        if st.st_size < need:
            raise InputError(f"{path}: truncated or damaged .npy file: the header announces shape {shape} "
                             f"({need} bytes) but the file has {st.st_size} bytes")
        return map_file(path, fh, dtype, offset, shape, fortran)



def load_npz(path, layout="khw", limit=None):
    """One array of an ``.npz`` archive, from its headers first: memory-mapped where stored
    uncompressed, decompressed a slice of images at a time where compressed (C order, images
    first), else read whole if its decompressed size is within `limit`."""
    fh, _ = open_regular(path)
    with fh:
        try:
            with zipfile.ZipFile(fh) as zf:
                infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
                if not infos:
                    raise InputError(f"{path}: the .npz archive is empty; expected one array of images")
                key = "X" if "X" in infos else ("images" if "images" in infos else next(iter(infos)))
                info = infos[key]
                shape, fortran, dtype, where = npz_member_layout(path, zf, info, raw=fh)
        except InputError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
                zlib.error) as exc:
            raise InputError(f"{path}: not a valid .npz file ({one_line(exc)})") from None
        if info.compress_type == zipfile.ZIP_STORED:
            return map_file(path, fh, dtype, where, shape, fortran, f"the .npz member {info.filename}")
        if not fortran and layout == "khw" and len(shape) in (3, 4):
            return NpzMember(path, info.filename, shape, dtype, where)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if limit is not None and nbytes > limit:
            raise too_big(path, f"the compressed array {key!r} (shape {shape}, read whole: "
                                 f"{'Fortran order' if fortran else 'images last'})", nbytes, limit)
        try:
            with zipfile.ZipFile(fh) as zf, zf.open(info) as member:
                member.seek(where)
                buf = member.read(nbytes)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, zlib.error) as exc:
            raise InputError(f"{path}: not a valid .npz file ({one_line(exc)})") from None
        if len(buf) != nbytes:
            raise InputError(f"{path}: truncated .npz member {info.filename}")
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
