"""Errors of emface's readers: the one every reader raises for input it cannot use, and its one-line form."""

__all__ = ["InputError", "one_line"]


class InputError(ValueError):
    """An input that cannot be read as an image stack."""


def one_line(msg):
    """An exception or message on one line (a traceback-free error line)."""
    return " ".join(str(msg).split())
