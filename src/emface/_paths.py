"""The check every reader makes before it opens a path: a regular file, not a FIFO or a device.

Public as `emface.io.check_regular_file`; here, below every reader, so that
video.py and persistence.py use it without importing io.py.
"""

import os
import stat

from .errors import InputError

__all__ = ["check_regular_file", "not_regular_message"]

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
