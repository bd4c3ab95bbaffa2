"""What the Numba kernels share: the compile options, the formulas compiled, and the serial twins.

Every function of `_formulas` is here under its own name, compiled with
``inline="always"``: the fused kernels call it as ``fm.<name>`` (this module
imported as ``fm``), the one copy of each formula, at no cost in the hot loop.
"""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path

# Numba's OpenMP threading layer keeps its workers spinning for milliseconds after each
# parallel region unless told otherwise; here every region is followed by pocketfft's own
# threads on the same cores, which the spinning workers slow down. Passive workers sleep
# at once (measured on 2 cores, 128x128, 48x48 face, K = 2,000, soft EM: 0.10 s per
# iteration against 0.12-0.17 s; 8 faces 0.54 s against 0.85-1.2 s). Read by the OpenMP
# runtime when Numba first starts its threads; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba as nb  # noqa: E402

from . import _formulas  # noqa: E402

__all__ = ["nb", "OPTS", "FORMULAS", "serial_and_parallel"]  # and the compiled formulas

OPTS = dict(cache=True, nogil=True, error_model="numpy")

#: the files whose functions the kernels compile into each other (inlined or called)
SOURCES = ("_formulas.py", "_numba_base.py", "_numba_sums.py", "_numba_kernels.py")


def sources_stamp(folder=Path(__file__).parent, names=SOURCES):
    """A digest of the kernels' source files, all together."""
    digest = hashlib.sha256()
    for name in names:
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()


def drop_stale_caches(cache_dir, stamp, names=SOURCES):
    """Delete the on-disk Numba caches of these files in `cache_dir` unless they were written from `stamp`.

    Numba keys a kernel's cache on the kernel's own file only: a kernel that
    inlines a formula from `_formulas`, or calls a helper of `_numba_sums`,
    would keep the old code after only that other file changed. So every
    cache of these files goes when any of them changes (a mark in `cache_dir`
    records the sources they were compiled from). Only the in-tree cache
    (``__pycache__`` beside the sources, a working copy) is watched: an
    installation replaces every file, and Numba then drops the caches itself.
    """
    cache_dir = Path(cache_dir)
    mark = cache_dir / "emface_kernels.stamp"
    try:
        if mark.read_text() == stamp:
            return False
    except OSError:
        pass
    try:
        cache_dir.mkdir(exist_ok=True)
        for name in names:
            for path in cache_dir.glob(Path(name).stem + ".*.nb[ic]"):
                path.unlink(missing_ok=True)
        tmp = cache_dir / f"emface_kernels.stamp.{os.getpid()}"
        tmp.write_text(stamp)
        os.replace(tmp, mark)
    except OSError:  # a read-only tree: Numba uses its user-wide cache, keyed on each file anew at install
        return False
    return True


drop_stale_caches(Path(__file__).parent / "__pycache__", sources_stamp())

#: the formulas of `_formulas` compiled here, to be inlined into the kernels
FORMULAS = ("window_total", "class_free", "expanded_loss", "loss_term", "decode", "in_grid", "softmax_entropy",
            "expected_chi2")
for _name in FORMULAS:
    globals()[_name] = nb.njit(inline="always", **OPTS)(getattr(_formulas, _name))
del _name


def _renamed(fn, name):
    """A copy of the Python function `fn` under another name (same code, globals and defaults).

    Numba's on-disk cache is keyed by the function's qualified name and line,
    not by its compile options (numba/numba#6845): a serial and a parallel
    compilation of one function share one cache index, and whichever is
    compiled first is loaded for both. The serial twin gets its own name, so
    its own cache entry.
    """
    out = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    out.__qualname__ = name
    out.__doc__ = fn.__doc__
    return out


def serial_and_parallel(namespace, names):
    """Compile each plain function ``namespace[name]`` twice: parallel under its name, serial as ``name + "_serial"``.

    The serial twin (prange run as range) is for work too small to be worth
    waking the thread pool: on a machine whose other core is busy a parallel
    region waits a whole time slice (measured: 16 ms against 0.17 ms for the
    crops of 18 images).
    """
    for name in names:
        fn = namespace[name]
        namespace[name + "_serial"] = nb.njit(**OPTS)(_renamed(fn, name + "_serial"))
        namespace[name] = nb.njit(parallel=True, **OPTS)(fn)
