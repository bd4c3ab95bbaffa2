"""emface: recover an object seen at unknown positions in many noisy images, by EM.

The public names:

- `FaceEM`: the scikit-learn-style estimator;
- `make_faces`: synthetic stacks from photographs, with the truth;
- `load_stack`: read image stacks from files and folders;
- `emface.classic`: the course API, images last.
"""

from ._version import __version__

__all__ = ["FaceEM", "Params", "ConvergenceWarning", "make_faces", "load_stack", "__version__"]

_LAZY = {
    "FaceEM": ("estimator", "FaceEM"),
    "ConvergenceWarning": ("em", "ConvergenceWarning"),
    "Params": ("engine.records", "Params"),
    "make_faces": ("datasets", "make_faces"),
    "load_stack": ("io", "load_stack"),
    "classic": ("classic", None),
}


def __getattr__(name):
    # the parts load on first use, so `import emface` stays light
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(f".{module}", __name__)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'emface' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
