"""zarr stores and HDF5 files, read lazily; data outside the file or store refused unless allowed."""

from __future__ import annotations

import os

import numpy as np

from .._paths import check_regular_file
from ..errors import InputError, one_line
from ._common import too_big

__all__ = ["load_h5", "load_zarr", "check_store_files", "is_zarr_folder"]


def is_zarr_folder(path):
    """Whether the folder `path` is a zarr store (v2 array or group, or v3)."""
    return any(os.path.exists(os.path.join(path, n)) for n in (".zarray", "zarr.json", ".zgroup"))


def load_h5(path, dataset, limit=None, allow_external=False):
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
            raise too_big(path, f"one chunk {chunks} of dataset {dataset!r}", nbytes, limit)
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


def check_store_files(root, allow_external=False):
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


def load_zarr(path, dataset, limit=None):
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
            raise too_big(path, f"one chunk {tuple(chunks)} of the zarr array", nbytes, limit)
    return z
