"""Every file emface writes goes through here: atomically, never through a symlink.

A file is written to a temporary file in the same folder (``.emface-tmp-<pid>-*``,
created with ``mkstemp``, so never through an existing file or link), flushed to
disk, and renamed over the destination with ``os.replace``. The rename replaces
a symlink at the destination by a regular file: the file the link pointed to is
never written. A failure removes the temporary file, leaves the earlier file as
it was, and raises `OutputError` (an `OSError`) whose one-line message names the
destination. Temporary files of this process are removed at exit; those of a
killed process are removed by `remove_stale_temporaries` at the next run.

`all_or_nothing` groups several writes: each is staged to its temporary file,
and only when every one is staged are they renamed into place, so a full disk
leaves the earlier result whole. `OutputFolder` is the ``--out`` folder of one
run: created if needed (and removed again if nothing was written to it), locked
against a second run, cleared of stale temporaries and of the pictures an
earlier run wrote that this one does not.

Functions
---------
atomic_write(path, write_fn, *, suffix=None)
    ``write_fn(tmp_path)`` writes the content; the result is renamed to `path`.
atomic_open(path, mode="wb", **kw)
    A context manager yielding an open temporary file that becomes `path`.
atomic_path(path, *, suffix=None)
    A context manager yielding a temporary file's path, for writers that open by name.
write_positions(path, summary, names=None)
    The per-image table ``positions.csv``: a column for every per-image field of the posterior summary.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import stat
import tempfile
import threading

from .errors import one_line

__all__ = ["OutputError", "atomic_write", "atomic_open", "atomic_path", "all_or_nothing", "remove_quietly",
           "remove_stale_temporaries", "OutputFolder", "FolderLocked", "TMP_PREFIX", "LOCK_NAME", "write_positions"]

#: the start of every temporary file's name (followed by the writing process's id and a dash)
TMP_PREFIX = ".emface-tmp-"
#: the lock file of an output folder
LOCK_NAME = ".emface.lock"

_live = set()  # temporary files of this process not yet renamed or removed
_live_lock = threading.Lock()
_staging = threading.local()  # the open `all_or_nothing` group of this thread, if any


class OutputError(OSError):
    """A file emface could not write; the message names it."""

    def __init__(self, path, exc, what="write"):
        code = getattr(exc, "errno", None) or errno.EIO
        reason = getattr(exc, "strerror", None) or one_line(exc)
        super().__init__(code, reason, os.fspath(path))
        self.what = what

    def __str__(self):
        return f"cannot {self.what} {self.filename}: {self.strerror}"


class FolderLocked(OSError):
    """Another emface run is writing to the same output folder."""

    def __init__(self, folder, pid=None):
        who = f" (process {pid})" if pid else ""
        super().__init__(errno.EBUSY, f"another emface run{who} is writing to {folder}; wait for it to end "
                                      f"or choose another --out", os.fspath(folder))

    def __str__(self):
        return self.strerror


# ----------------------------------------------------------------------------- temporaries

def remove_quietly(path):
    """Remove a file if it is there; a file that cannot be removed is left (nothing to report)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _forget(tmp):
    with _live_lock:
        _live.discard(tmp)


@atexit.register
def _remove_live():
    """Temporary files of this process that an interrupted write left (run at exit)."""
    with _live_lock:
        left = list(_live)
        _live.clear()
    for tmp in left:
        remove_quietly(tmp)


def _new_temporary(path, suffix):
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    with _live_lock:
        _live.add(tmp)
    return fd, tmp


def _file_mode(path):
    """The mode the written file gets: the replaced regular file's, else the umask's default."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask():
    """The process's umask: read where the system tells it (Linux), else set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync(tmp):
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rename(tmp, path):
    try:
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        _forget(tmp)
        raise OutputError(path, exc) from None
    _forget(tmp)
    _sync_folder(os.path.dirname(os.path.abspath(path)))


def _default_suffix(path):
    ext = os.path.splitext(os.fspath(path))[1]
    return ext if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", ext) else ""


@contextlib.contextmanager
def _staged(path, suffix):
    """(fd, tmp) of a new temporary file beside `path`; on success it becomes `path` (or joins the
    open `all_or_nothing` group), on any failure it is removed."""
    try:
        fd, tmp = _new_temporary(path, suffix)
    except OSError as exc:
        raise OutputError(path, exc) from None
    try:
        yield fd, tmp
        os.chmod(tmp, _file_mode(path))
    except OSError as exc:
        remove_quietly(tmp)
        _forget(tmp)
        raise OutputError(path, exc) from None
    except BaseException:
        remove_quietly(tmp)
        _forget(tmp)
        raise
    group = getattr(_staging, "group", None)
    if group is not None:
        group.append((tmp, path))
    else:
        _rename(tmp, path)


def atomic_write(path, write_fn, *, suffix=None):
    """Write `path` atomically: ``write_fn(tmp)`` writes a temporary file, which is then renamed.

    Parameters
    ----------
    path : str or path-like
        The destination. A symlink there is replaced by the new file; the
        file it pointed to is not touched.
    write_fn : callable
        Called with the temporary file's path (a str ending in `suffix`, in
        the destination's folder); it writes the whole content there.
    suffix : str, optional
        The temporary file's extension (default: `path`'s), for writers that
        choose a format, or append an extension, by the file name.

    Returns
    -------
    str
        `path`.

    Raises
    ------
    OutputError
        An `OSError` naming `path` when the file cannot be written; the
        earlier file at `path`, if any, is left as it was. Other exceptions
        of `write_fn` propagate unchanged; the temporary file is removed in
        every case.
    """
    path = os.fspath(path)
    with _staged(path, _default_suffix(path) if suffix is None else suffix) as (fd, tmp):
        os.close(fd)
        write_fn(tmp)
        _sync(tmp)
    return path


@contextlib.contextmanager
def atomic_open(path, mode="wb", *, encoding=None, newline=None, suffix=None):
    """``with atomic_open(path, "w") as fh:`` writes `fh`, which becomes `path` when the block ends
    without an error (as `atomic_write`); an error leaves `path` as it was. Text is UTF-8 unless
    `encoding` says otherwise."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes a new file: expected mode 'w', 'wb' or 'wt', got {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    path = os.fspath(path)
    with _staged(path, _default_suffix(path) if suffix is None else suffix) as (fd, tmp):
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path, *, suffix=None):
    """``with atomic_path(path) as tmp:`` gives the path of a new temporary file (ending in `suffix`,
    default `path`'s extension) for writers that open files by name; when the block ends without an
    error it becomes `path` (as `atomic_write`), otherwise it is removed."""
    path = os.fspath(path)
    with _staged(path, _default_suffix(path) if suffix is None else suffix) as (fd, tmp):
        os.close(fd)
        yield tmp
        _sync(tmp)


@contextlib.contextmanager
def all_or_nothing():
    """Stage every `atomic_write` / `atomic_open` of the block, and rename them all at its end.

    If any write fails (a full disk, Ctrl-C), every staged temporary file is
    removed and no destination is touched: the earlier result stays whole.
    Groups do not nest: an inner group joins the outer one.
    """
    if getattr(_staging, "group", None) is not None:
        yield
        return
    _staging.group = staged = []
    try:
        yield
    except BaseException:
        _staging.group = None
        for tmp, _ in staged:
            remove_quietly(tmp)
            _forget(tmp)
        raise
    _staging.group = None
    for i, (tmp, path) in enumerate(staged):
        try:
            _rename(tmp, path)
        except BaseException:
            for t, _ in staged[i + 1:]:
                remove_quietly(t)
                _forget(t)
            raise


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def remove_stale_temporaries(folder):
    """Remove the ``.emface-tmp-<pid>-*`` files in `folder` whose process has ended (a killed run's).

    Returns
    -------
    list of str
        The names removed.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = re.match(re.escape(TMP_PREFIX) + r"(\d+)-", name)
        if not m or _alive(int(m.group(1))):
            continue
        full = os.path.join(folder, name)
        try:
            if stat.S_ISDIR(os.lstat(full).st_mode):
                continue
            os.unlink(full)
            removed.append(name)
        except OSError:
            pass
    return removed


# ----------------------------------------------------------------------------- the output folder

class OutputFolder:
    """The ``--out`` folder of one run: ``with OutputFolder(path) as out: ...``.

    On entry: creates the folder if it does not exist, checks that it can be
    written, takes its lock (``.emface.lock``, an ``flock`` that the system
    releases when the process ends, so a killed run's lock is no obstacle),
    and removes stale temporary files of ended processes. On exit: releases
    the lock and, if this run created the folder and nothing was written to
    it (bad input, Ctrl-C before any result), removes the folder again.

    Raises
    ------
    FolderLocked
        Another process holds the folder's lock.
    OutputError
        The folder cannot be created or written.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.created = []  # the folders this run created, deepest first
        self._fd = None

    def __enter__(self):
        path = self.path
        if not os.path.isdir(path):
            if os.path.lexists(path):
                raise OutputError(path, OSError(errno.ENOTDIR, "it exists and is not a folder"),
                                  "create the output folder")
            missing, p = [], os.path.abspath(path)
            while not os.path.lexists(p) and p != os.path.dirname(p):
                missing.append(p)
                p = os.path.dirname(p)
            try:
                os.makedirs(path)
                self.created = missing
            except FileExistsError:
                pass
            except OSError as exc:
                raise OutputError(path, exc, "create the output folder") from None
        try:
            self._lock()
        except BaseException:
            self._remove_if_created()
            raise
        remove_stale_temporaries(path)
        return self

    def __exit__(self, *exc):
        self.release()
        self._remove_if_created()
        return False

    def _remove_if_created(self):
        for folder in self.created:
            try:
                os.rmdir(folder)  # only an empty folder goes
            except OSError:
                break

    def _lock(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, the rest still holds
            return
        lock = os.path.join(self.path, LOCK_NAME)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(10):
            try:
                fd = os.open(lock, flags, 0o666)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symlink planted as the lock: replace it, never follow it
                    remove_quietly(lock)
                    continue
                raise OutputError(self.path, exc, "write to the output folder") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise FolderLocked(self.path, pid) from None
                raise OutputError(lock, exc) from None
            # the file may have been removed by the run that held it, between our open and our lock
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(lock))
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as exc:
                os.close(fd)
                raise OutputError(self.path, exc) from None
            self._fd = fd
            return
        raise FolderLocked(self.path)

    def release(self):
        """Release the lock (and remove the lock file); called on exit."""
        if self._fd is None:
            return
        remove_quietly(os.path.join(self.path, LOCK_NAME))
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def remove_stale(self, written, patterns):
        """Remove the files matching `patterns` (regular expressions of names emface writes) that are
        not in `written` (the names this run wrote): an earlier run's ``face_3.png`` and the like.

        Returns
        -------
        list of str
            The names removed.
        """
        keep = {os.path.basename(n) for n in written}
        removed = []
        for name in sorted(os.listdir(self.path)):
            if name in keep or not any(re.fullmatch(p, name) for p in patterns):
                continue
            try:
                os.unlink(os.path.join(self.path, name))  # a link is removed, never its target
                removed.append(name)
            except OSError:
                pass
        return removed


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except (OSError, AttributeError):
        return None
    return int(text) if text.isdigit() else None


# ----------------------------------------------------------------------------- the per-image table

#: the columns every positions.csv has, in order, after ``index`` and ``file``: (name, summary field, format)
_POSITION_COLUMNS = (("face", "faces", "d"), ("row", "positions", "d"), ("col", "positions", "d"),
                     ("probability", "probability", ".6g"), ("face_probability", "face_probability", ".6g"),
                     ("entropy", "entropy", ".6g"), ("misfit", "misfit", ".4g"),
                     ("no_face_probability", "no_face_probability", ".6g"))
#: per-image fields of the summary that are not columns (log p(X_k) stays in `posterior_summary`)
_NOT_COLUMNS = frozenset({"log_likelihood"})


def write_positions(path, summary, names=None):
    """Write the per-image table ``positions.csv`` (atomically, as `atomic_open`).

    Columns: ``index``, ``file``, ``face``, ``row``, ``col``, ``probability``,
    ``face_probability``, ``entropy``, ``misfit``, ``no_face_probability``,
    ``empty``, then one column for every other per-image field of `summary`
    that is present (an array with one value, or one row, per image; not
    ``log_likelihood``), in the summary's order: a field ``gain`` of shape
    (K,) is a column ``gain``, one of shape (K, 3) the columns ``gain_0``,
    ``gain_1``, ``gain_2``.

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
    import csv

    header, columns = _position_columns(summary)
    K = len(summary.positions)
    with atomic_open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(header)
        for k in range(K):
            wr.writerow([k, "" if names is None else names[k]] + [format(col[k], fmt) for col, fmt in columns])


def _position_columns(summary):
    """(header, [(values of one column, their format)]) of the summary's per-image table."""
    import numpy as np

    K = len(summary.positions)
    fields = _summary_fields(summary)
    known = {"faces": summary.faces, "positions": summary.positions,
             "misfit": np.full(K, np.nan) if fields.get("misfit") is None else fields["misfit"],
             "no_face_probability": np.zeros(K) if fields.get("no_face_probability") is None
             else fields["no_face_probability"]}
    header, columns = ["index", "file"], []
    for name, field, fmt in _POSITION_COLUMNS:
        values = np.asarray(known.get(field, fields.get(field)))
        if field == "positions":
            values = values[:, 0 if name == "row" else 1]
        header.append(name)
        columns.append((values.astype(np.int64) if fmt == "d" else values.astype(np.float64), fmt))
    header.append("empty")
    columns.append(((np.asarray(summary.faces) < 0).astype(np.int64), "d"))
    used = {field for _, field, _ in _POSITION_COLUMNS} | _NOT_COLUMNS
    for field, value in fields.items():
        if field in used or value is None or np.ndim(value) not in (1, 2) or len(value) != K:
            continue
        value = np.asarray(value)
        fmt = "d" if value.dtype.kind in "biu" else ".6g"
        value = value.astype(np.int64) if fmt == "d" else value.astype(np.float64)
        if value.ndim == 1:
            header.append(field)
            columns.append((value, fmt))
        else:
            header += [f"{field}_{j}" for j in range(value.shape[1])]
            columns += [(value[:, j], fmt) for j in range(value.shape[1])]
    return header, columns


def _summary_fields(summary):
    """The summary's fields, name -> value, in their declared order (a dataclass's, else its attributes')."""
    import dataclasses

    if dataclasses.is_dataclass(summary):
        return {f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)}
    return dict(vars(summary))
