"""Errors of emface's readers: the one every reader raises for input it cannot use, and its one-line form;
and the warning a fit gives when frames do not follow the model."""

__all__ = ["InputError", "MisfitWarning", "ModelFileError", "one_line"]


class InputError(ValueError):
    """An input that cannot be read as an image stack."""


class ModelFileError(InputError):
    """A model file (``model.npz``, a checkpoint) that cannot be used: unreadable, or not a consistent model.

    Its message names the file and says what is wrong, on one line.
    """


def one_line(msg):
    """An exception or message on one line (a traceback-free error line)."""
    return " ".join(str(msg).split())


class MisfitWarning(UserWarning):
    """Too many frames fit the model badly: a misfit z > 5 on more than 1% of them.

    The misfit of a frame (``FaceEM.posterior_summary(X).misfit``) is a
    z-score of its residual, about N(0, 1) for a frame the model explains.
    """
