"""The error every reader raises for input it cannot use (its own module, so readers need not import each other)."""

__all__ = ["InputError", "one_line"]


class InputError(ValueError):
    """An input that cannot be read as an image stack."""


def one_line(msg):
    """An exception or message on one line (a traceback-free error line)."""
    return " ".join(str(msg).split())
