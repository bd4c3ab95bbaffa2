"""The error every reader raises for input it cannot use (its own module, so readers need not import each other)."""

__all__ = ["InputError"]


class InputError(ValueError):
    """An input that cannot be read as an image stack."""
