"""The on-disk cache of a video's decoded frames: one uncompressed ``.npy`` per video version.

Named from the video's absolute path, size, modification time and the grey
flag, so a changed video gets a new file; written through the one atomic
writer (`emface.outputs.atomic_open`), so an interrupted run leaves no half
cache; the caches of older versions of the same video are removed.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .._paths import check_regular_file
from ..errors import InputError, one_line
from ..outputs import atomic_open, remove_quietly, remove_stale_temporaries

__all__ = ["cache_path", "cached", "CHUNK_BYTES"]

#: about how many bytes of frames are decoded at a time into the cache
CHUNK_BYTES = 64 * 2**20


def cache_path(path, cache_dir, grey=False):
    """Where `cached` keeps the decoded frames of `path`: named from the video's absolute
    path, size, modification time and the grey flag, so a changed video gets a new file."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    where = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    version = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0][:60]
    kind = "grey" if grey else "rgb"
    return os.path.join(os.fspath(cache_dir), f"{stem}-{where}-{version}-{kind}.npy")


def cached(stack_cls, path, cache_dir, grey=False, chunk_bytes=CHUNK_BYTES):
    """The frames of the video `path` as a read-only memory map of the cache in `cache_dir`, decoded
    (by a `stack_cls`, a `VideoStack`) and written first when the cache is missing or damaged."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such video file")
    check_regular_file(path)
    cache_dir = _cache_folder(cache_dir)
    final = cache_path(path, cache_dir, grey)
    if os.path.isfile(final):
        try:
            return np.load(final, mmap_mode="r")
        except (ValueError, OSError, EOFError):  # damaged: write it again
            remove_quietly(final)
    stack = stack_cls(path, grey=grey)
    try:
        _write_cache(stack, final, chunk_bytes)
    finally:
        stack.close()
    stack_cls.caches_written += 1
    _remove_older_versions(final)
    try:
        return np.load(final, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{final}: could not read the video cache back ({one_line(exc)})") from None


def _cache_folder(cache_dir):
    cache_dir = os.fspath(cache_dir)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the cache folder {cache_dir}: {exc.strerror or exc}") from None
    if not os.path.isdir(cache_dir):
        raise InputError(f"the cache folder {cache_dir} exists and is not a folder")
    return cache_dir


def _write_cache(stack, final, chunk_bytes):
    from numpy.lib import format as npformat

    K = stack.n_frames
    per_frame = max(1, stack.nbytes // K)
    n = int(max(1, min(K, chunk_bytes // per_frame)))
    try:
        with atomic_open(final, "wb") as fh:
            header = {"descr": npformat.dtype_to_descr(stack.dtype), "fortran_order": False,
                      "shape": tuple(stack.shape)}
            npformat.write_array_header_2_0(fh, header)
            for a in range(0, K, n):
                block = np.ascontiguousarray(stack[a:min(K, a + n)])
                fh.write(memoryview(block).cast("B"))
    except OSError as exc:
        raise InputError(f"cannot write the video cache {final}: {exc.strerror or exc}") from None


def _remove_older_versions(final):
    """Remove the caches of older versions of the same video (same path and grey flag), and the
    temporary files that killed runs left (`emface.outputs.remove_stale_temporaries`)."""
    folder, name = os.path.split(final)
    remove_stale_temporaries(folder)
    stem_where, _, kind = name.rsplit("-", 2)
    for other in os.listdir(folder):
        if other != name and other.startswith(stem_where + "-") and other.endswith("-" + kind) \
                and other.count("-") == name.count("-"):
            remove_quietly(os.path.join(folder, other))
