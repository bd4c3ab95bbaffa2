"""Errors of emface's readers: the one every reader raises for input it cannot use, and its one-line form."""

__all__ = ["InputError", "ModelFileError", "one_line"]


class InputError(ValueError):
    """An input that cannot be read as an image stack."""


class ModelFileError(InputError):
    """A model file (``model.npz``, a checkpoint) that cannot be used: unreadable, or not a consistent model.

    Its message names the file and says what is wrong, on one line.
    """


def one_line(msg):
    """An exception or message on one line (a traceback-free error line)."""
    return " ".join(str(msg).split())
