"""The pose axis: where (and, for later pose objects, how turned) a face can lie in a frame.

A pose object answers every question the engine asks about the latent pose
d of an image, so that the plan, the prior's shape, the E-step's window sums,
the M-step's coverage and the posterior summary never spell the grid out:

=========================  =====================================================
``shape``, ``size``        the grid of poses, one axis per ``ndim``
``prior_shape(C)``         ``(C,) + shape``: the prior A, the counts N, q per image
``decode(t)``              a flat index over (face, pose) -> (faces, one index
                           array per pose axis)
``neighbours``             the offsets of `Stats.near`, an (m, ndim) int array
``support``                the face's pixels, a boolean (h, w) mask
``window_sums(z)``         Σ of z over the support at every pose: (..., H, W) ->
                           (..., *shape) (or broadcastable to it)
``coverage(q)``            q ⊛ support: how much each pixel is covered,
                           (..., *shape) -> (..., H, W)
``image_shape``,           the frame and the face
``face_shape``
=========================  =====================================================

`Translations` is the only pose object today: every top-left corner at which
an h×w box fits in an H×W frame, and ``H - h + 1``, ``W - w + 1`` are written
here and nowhere else (`grid_shape`). A pose object with a non-box support
(a disc, for in-plane rotations) computes its window sums and coverage by
FFT correlation and convolution with that support instead of the summed-area
table; the callers above do not change.
"""

from __future__ import annotations

import numpy as np

from . import _formulas, kernels

__all__ = ["Translations", "grid_shape", "pose_of"]


def grid_shape(image_shape, face_shape):
    """(P, Q) = (H - h + 1, W - w + 1): the top-left corners at which an h×w face fits in an H×W frame.

    The one place the corner grid is computed.
    """
    (H, W), (h, w) = image_shape, face_shape
    return (int(H) - int(h) + 1, int(W) - int(w) + 1)


class Translations:
    """The pose of a face that moves without turning: its top-left corner (i, j) on a P×Q grid.

    Parameters
    ----------
    image_shape : (H, W)
    face_shape : (h, w)
        At most the image's size along each axis.

    Attributes
    ----------
    shape : (P, Q)
        ``(H - h + 1, W - w + 1)``.
    size : int
        P·Q.
    ndim : int
        2: a pose is (row, column).
    support : bool ndarray (h, w)
        The face's pixels: the whole box.
    neighbours : int ndarray (8, 2)
        The corner offsets (di, dj) of `Stats.near`, in its order.
    """

    ndim = 2

    def __init__(self, image_shape, face_shape):
        H, W = (int(v) for v in image_shape)
        h, w = (int(v) for v in face_shape)
        if not (1 <= h <= H and 1 <= w <= W):
            raise ValueError(f"the face must fit in the frame: face_shape (h, w) with 1 <= h <= {H} and "
                             f"1 <= w <= {W} expected, got {(h, w)} in an image of {(H, W)}")
        self.image_shape = (H, W)
        self.face_shape = (h, w)
        self.shape = grid_shape(self.image_shape, self.face_shape)
        self.size = self.shape[0] * self.shape[1]
        self.neighbours = _formulas.NEAR_OFFSETS

    def __repr__(self):
        return f"Translations(image_shape={self.image_shape}, face_shape={self.face_shape})"

    def __eq__(self, other):
        return (type(other) is type(self) and other.image_shape == self.image_shape
                and other.face_shape == self.face_shape)

    def __hash__(self):
        return hash((type(self).__name__, self.image_shape, self.face_shape))

    @property
    def support(self):
        return np.ones(self.face_shape, dtype=bool)

    def prior_shape(self, n_faces):
        """The shape of the prior A over (face, pose): ``(C, P, Q)``."""
        return (int(n_faces),) + self.shape

    def decode(self, flat):
        """A flat index over (face, pose), ``(c·P + i)·Q + j``, split into (faces, rows, cols).

        Ints or int arrays (numpy or torch); an index of C·P·Q or more ("no
        face") decodes to a face of C or more.
        """
        return _formulas.decode(flat, *self.shape)

    def window_sums(self, z):
        """Sums of z over the face's support at every pose: (..., H, W) -> (..., P, Q) float64 (box sums)."""
        return kernels.box_sums(z, self.face_shape)

    def coverage(self, q):
        """``q ⊛ support``: the probability that the face covers each pixel, (..., P, Q) -> (..., H, W) float64."""
        return kernels.coverage(q, self.face_shape)


def pose_of(params):
    """The pose object of parameters θ (translations of its faces over its background's frame)."""
    return Translations(params.image_shape, params.face_shape)
