"""The check every reader makes before it opens a path: a regular file, not a FIFO or a device.

Public as `emface.io.check_regular_file`; here, below every reader, so that
video.py and persistence.py use it without importing io.py.
"""

import os
import stat

from .errors import InputError

__all__ = ["check_regular_file", "not_regular_message", "open_regular"]

_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def check_regular_file(path):
    """Refuse anything but a regular file (a FIFO, a device, a socket, a folder), without opening it.

    Opening a FIFO blocks until something writes to it, and a device can be
    endless: both are refused from ``os.stat`` alone (which follows symbolic
    links, so a link to a regular file is accepted).

    Parameters
    ----------
    path : str or path-like

    Raises
    ------
    InputError
        The path does not exist, or is not a regular file; the message says what it is.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or 'cannot be read'}") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: {not_regular_message(mode)}")


def not_regular_message(mode):
    """What a file of this ``st_mode`` is, said as the reason it is refused."""
    what = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {what}, not a regular file; emface reads regular files only"


def open_regular(path):
    """Open a file for reading and check, through the open descriptor, that it is a regular file.

    Opened without waiting (``O_NONBLOCK``: a FIFO would wait for a writer for
    ever), then looked at with ``fstat``, so what is checked is what is read
    (no window between a check by name and the open). The model loader reads
    its files this way too.

    Returns
    -------
    (file, os.stat_result)
        A binary file object (the caller closes it) and its status.

    Raises
    ------
    InputError
        The path cannot be opened, or is not a regular file.
    """
    path = os.fspath(path)

    def opener(name, flags):
        return os.open(name, flags | getattr(os, "O_NONBLOCK", 0))

    try:
        fh = open(path, "rb", opener=opener)  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or 'cannot be read'}") from None
    try:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: {not_regular_message(st.st_mode)}")
        return fh, st
    except BaseException:
        fh.close()
        raise
