"""emface: recover an object seen at unknown positions in many noisy images, by EM.

The public names:

- `FaceEM`: the scikit-learn-style estimator;
- `make_faces`: synthetic stacks from photographs, with the truth;
- `load_stack`: read image stacks from files and folders;
- `emface.classic`: the course API, images last.
"""

from ._version import __version__
from .em import ConvergenceWarning
from .estimator import FaceEM
from .model import Params

__all__ = ["FaceEM", "Params", "ConvergenceWarning", "make_faces", "load_stack", "__version__"]


def __getattr__(name):
    # heavy or optional parts load on first use, so `import emface` stays light
    if name == "make_faces":
        from .datasets import make_faces

        return make_faces
    if name == "load_stack":
        from .io import load_stack

        return load_stack
    raise AttributeError(f"module 'emface' has no attribute {name!r}")
