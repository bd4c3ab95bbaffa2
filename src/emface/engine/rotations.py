"""In-plane rotations: the pose axis of angles × corners, with a disc support (MODEL.md, "In-plane rotations").

`Rotations` owns the angle grid, the disc D inscribed in the h×h window, the
rotation operators ``D∘R_r`` (sparse h²×h² matrices of Keys cubic-convolution
weights, a = -1/2, zero outside the window; their adjoints are their
transposes), the disc window sums ``D ⋆ z`` and the coverage ``q ⊛ D`` (both by
FFT: a disc has no summed-area table), and the M-step's normal equations of
the faces. Angles are in degrees, counter-clockwise in the image's row-column
axes as ``scipy.ndimage.rotate(img, angle, reshape=False)`` turns.

`RotParams` is θ with the angle prior ρ (the prior over (c, r, d) factors as
``A(c, d)·ρ_r``) and the angle grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .poses import grid_shape
from .records import Params

__all__ = ["Rotations", "RotParams", "disc_mask", "rotation_operator", "angle_grid", "KEYS_A"]

#: Keys' cubic-convolution parameter (a = -1/2: third-order accurate)
KEYS_A = -0.5


def angle_grid(rotations):
    """The angle grid in degrees from ``rotations``: an int R (R angles equally spaced over 360°,
    starting at 0) or a sequence of distinct angles in degrees."""
    if isinstance(rotations, (int, np.integer)) and not isinstance(rotations, bool):
        R = int(rotations)
        if R < 1:
            raise ValueError(f"rotations must be an int >= 1 or a sequence of angles in degrees, got {rotations!r}")
        return 360.0 * np.arange(R) / R
    try:
        a = np.asarray(rotations, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"rotations must be an int >= 1 or a sequence of angles in degrees, "
                         f"got {rotations!r}") from None
    if a.size < 1 or not np.all(np.isfinite(a)):
        raise ValueError(f"rotations must hold at least one finite angle in degrees, got {rotations!r}")
    wrapped = np.round(np.mod(a, 360.0), 9) % 360.0
    if len(np.unique(wrapped)) != a.size:
        raise ValueError(f"rotations must hold distinct angles (modulo 360°), got {list(a)}")
    return a


def disc_mask(h):
    """The disc inscribed in an h×h window: pixel centres within h/2 of the window's centre, (h, h) bool."""
    c = (h - 1) / 2.0
    i, j = np.mgrid[:h, :h]
    return (i - c) ** 2 + (j - c) ** 2 <= (h / 2.0) ** 2


def _keys(t):
    """Keys cubic-convolution weights at offsets t (vectorised)."""
    t = np.abs(t)
    a = KEYS_A
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return np.where(t <= 1.0, near, np.where(t < 2.0, far, 0.0))


def _snap(u):
    r = np.round(u)
    return np.where(np.abs(u - r) < 1e-9, r, u)


def rotation_operator(h, angle, mask=None):
    """``D∘R_θ`` as a CSR matrix (h², h²): row o (flat, in D) holds the weights of F's pixels in the
    value of the face turned by `angle` degrees at o; rows outside D are zero.

    Counter-clockwise as displayed (row 0 at the top), about the window's
    centre ((h-1)/2, (h-1)/2): ``(R_θ F)(o) = F(c + Rot(-θ)(o - c))`` in
    (x = column, y = -row) axes, interpolated by Keys cubic convolution;
    samples outside the window read 0.
    """
    mask = disc_mask(h) if mask is None else mask
    c = (h - 1) / 2.0
    oi, oj = np.nonzero(mask)
    x, y = oj - c, -(oi - c)
    th = np.deg2rad(float(angle))
    cs, sn = np.cos(th), np.sin(th)
    xs = cs * x + sn * y
    ys = -sn * x + cs * y
    u, v = _snap(c - ys), _snap(c + xs)  # source row, column
    bu, bv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    taps = np.arange(-1, 3)
    ru = bu[:, None] + taps[None, :]
    rv = bv[:, None] + taps[None, :]
    wu = _keys(u[:, None] - ru)
    wv = _keys(v[:, None] - rv)
    W = (wu[:, :, None] * wv[:, None, :]).reshape(len(oi), 16)
    RU = np.broadcast_to(ru[:, :, None], (len(oi), 4, 4)).reshape(len(oi), 16)
    RV = np.broadcast_to(rv[:, None, :], (len(oi), 4, 4)).reshape(len(oi), 16)
    rows = np.broadcast_to((oi * h + oj)[:, None], W.shape)
    ok = (RU >= 0) & (RU < h) & (RV >= 0) & (RV < h) & (W != 0.0)
    return sp.csr_matrix((W[ok], (rows[ok], (RU * h + RV)[ok])), shape=(h * h, h * h))


@functools.lru_cache(maxsize=8)
def _stacked(h, angles):
    ops = [rotation_operator(h, a) for a in angles]
    stack = sp.vstack(ops, format="csr")
    return stack, stack.T.tocsr()


@dataclass
class RotParams(Params):
    """θ with rotations: `Params` plus the angle grid and its prior ρ.

    The prior over (face, angle, corner) is ``prior[c, d] · angle_prior[r]``.

    Attributes
    ----------
    angles : ndarray (R,)
        The angle grid, degrees.
    angle_prior : ndarray (R,)
        ρ, sums to 1.
    """

    angles: np.ndarray = None
    angle_prior: np.ndarray = None

    def __post_init__(self):
        super().__post_init__()
        self.angles = np.asarray(self.angles, dtype=np.float64).reshape(-1)
        R = self.angles.size
        rho = np.full(R, 1.0 / R) if self.angle_prior is None else self.angle_prior
        self.angle_prior = np.asarray(rho, dtype=np.float64).reshape(-1)
        if self.angle_prior.shape != (R,) or R < 1:
            raise ValueError(f"angle_prior must have one weight per angle ({R}), got {self.angle_prior.shape}")
        if self.faces.shape[2] != self.faces.shape[3]:
            raise ValueError(f"rotations need a square face window, got faces {self.faces.shape[2:]}")

    @classmethod
    def from_params(cls, params, angles, angle_prior=None):
        """θ with rotations from a `Params` (its angle prior uniform unless given)."""
        return cls(faces=params.faces, background=params.background, noise_std=params.noise_std,
                   prior=params.prior, empty_weight=params.empty_weight, gains=params.gains, offsets=params.offsets,
                   angles=angles, angle_prior=angle_prior)

    def copy(self):
        return RotParams.from_params(Params.copy(self), self.angles.copy(), self.angle_prior.copy())

    def affine(self, scale, offset):
        base = Params.affine(self, scale, offset)
        return RotParams.from_params(base, self.angles.copy(), self.angle_prior.copy())


class Rotations:
    """The pose axis (angle r, corner d) with the disc support D (see the module docstring).

    It answers the pose interface of `emface.engine.poses` (``shape``,
    ``size``, ``ndim``, ``prior_shape``, ``decode``, ``neighbours``,
    ``support``, ``window_sums``, ``coverage``) for the pose (r, i, j): the
    disc is the same at every angle, so the window sums and the coverage are
    over the corners, and the prior A(c, d) has the corners' shape (ρ_r
    beside it: the prior factors).

    Parameters
    ----------
    image_shape : (H, W)
    face_shape : (h, h), square
    angles : sequence of float, degrees
    """

    ndim = 3

    def __init__(self, image_shape, face_shape, angles):
        h, w = (int(v) for v in face_shape)
        if h != w:
            raise ValueError(f"rotations need a square face_shape (the face is the disc inscribed in it), "
                             f"got {tuple(face_shape)}")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.face_shape = (h, h)
        self.angles = np.asarray(angles, dtype=np.float64).reshape(-1)
        self.mask = disc_mask(h)
        H, W = self.image_shape
        self.grid_shape = grid_shape(self.image_shape, self.face_shape)
        self._disc_hat = None

    def __repr__(self):
        return f"Rotations(image_shape={self.image_shape}, face_shape={self.face_shape}, R={self.n_angles})"

    def __eq__(self, other):
        return (type(other) is type(self) and other.image_shape == self.image_shape
                and other.face_shape == self.face_shape and np.array_equal(other.angles, self.angles))

    def __hash__(self):
        return hash((type(self).__name__, self.image_shape, self.face_shape, tuple(self.angles)))

    @property
    def n_angles(self):
        return self.angles.size

    @property
    def size(self):
        """R·P·Q poses."""
        return self.n_angles * self.grid_shape[0] * self.grid_shape[1]

    @property
    def support(self):
        """The face's pixels: the disc D, (h, h) bool."""
        return self.mask.copy()

    #: the offsets (dr, di, dj) of a pose's neighbours in `Stats.near`: the 8 corners about it, at its angle
    neighbours = np.array([(0, -1, -1), (0, -1, 0), (0, -1, 1), (0, 0, -1), (0, 0, 1), (0, 1, -1), (0, 1, 0),
                           (0, 1, 1)], dtype=np.int64)

    def prior_shape(self, n_faces):
        """The shape of the prior A over (face, corner): ``(C, P, Q)`` (the angle's ρ_r factors out)."""
        return (int(n_faces),) + self.grid_shape

    def decode(self, flat):
        """A flat index over (face, angle, corner), ``((c·R + r)·P + i)·Q + j``: (faces, angles, rows, cols)."""
        P, Q = self.grid_shape
        R = self.n_angles
        flat = np.asarray(flat)
        rest, j = np.divmod(flat, Q)
        rest, i = np.divmod(rest, P)
        c, r = np.divmod(rest, R)
        return c, r, i, j

    @property
    def shape(self):
        """(R, P, Q): angles × corners."""
        return (self.n_angles,) + self.grid_shape

    def _ops(self):
        return _stacked(self.face_shape[0], tuple(float(a) for a in self.angles))

    def operator(self, r):
        """``D∘R_r`` (CSR, h²×h²) of angle index r."""
        h2 = self.face_shape[0] ** 2
        return self._ops()[0][r * h2:(r + 1) * h2]

    # ------------------------------------------------------------------ templates and their adjoint
    def templates(self, faces):
        """``D∘R_r F_c`` for every face and angle: faces (C, Ch, h, h) -> (C, R, Ch, h, h)."""
        C, Ch, h, _ = faces.shape
        stack = self._ops()[0]
        out = stack @ faces.reshape(C * Ch, h * h).T  # (R·h², C·Ch)
        return np.ascontiguousarray(out.T.reshape(C, Ch, self.n_angles, h, h).transpose(0, 2, 1, 3, 4))

    def adjoint(self, S):
        """``Σ_r R_rᵀ D S_(c,r)``: S (C, R, Ch, h, h) -> (C, Ch, h, h)."""
        C, R, Ch, h, _ = S.shape
        stackT = self._ops()[1]
        flat = np.ascontiguousarray(S.transpose(1, 3, 4, 0, 2)).reshape(R * h * h, C * Ch)
        return (stackT @ flat).T.reshape(C, Ch, h, h)

    def normal_matrix(self, weights):
        """``Σ_r w_r R_rᵀ D R_r`` (CSR, h²×h²) for weights (R,)."""
        stack, stackT = self._ops()
        h2 = self.face_shape[0] ** 2
        return (stackT @ sp.diags(np.repeat(np.asarray(weights, dtype=np.float64), h2)) @ stack).tocsr()

    def solve_faces(self, S, N_cr, previous, rtol=1e-12):
        """F_c solving ``(Σ_r N_cr R_rᵀ D R_r) F_c = Σ_r R_rᵀ D S_(c,r)`` (MODEL.md), per channel.

        By preconditioned conjugate gradients from `previous` (C, Ch, h, h) on
        the pixels the operators reach; the others keep their previous value
        (no evidence), as does a face with no weight. CG from the last F never
        raises the quadratic it minimises, so the M-step never lowers the bound.

        Returns (F, tuple of faces with no weight).
        """
        C, R, Ch, h, _ = S.shape
        rhs = self.adjoint(S).reshape(C, Ch, h * h)
        F = np.array(previous, dtype=np.float64, copy=True).reshape(C, Ch, h * h)
        empty = []
        total = float(np.sum(N_cr))
        for c in range(C):
            if N_cr[c].sum() <= 1e-12 * max(total, 1.0):
                empty.append(c)
                continue
            M = self.normal_matrix(N_cr[c])
            d = M.diagonal()
            act = d > 1e-12 * d.max()
            Ma = M[act][:, act]
            pre = sp.diags(1.0 / d[act])
            for ch in range(Ch):
                b = rhs[c, ch, act] - M[act][:, ~act] @ F[c, ch, ~act]
                x0 = F[c, ch, act]
                x, _ = spla.cg(Ma, b, x0=x0, rtol=rtol, atol=0.0, maxiter=20 * int(act.sum()), M=pre)
                F[c, ch, act] = x
        return F.reshape(C, Ch, h, h), tuple(empty)

    # ------------------------------------------------------------------ disc window sums and coverage
    def disc_spectrum(self):
        """``rfft2(D zero-padded to H×W)``, (H, W//2+1) complex128."""
        if self._disc_hat is None:
            self._disc_hat = sfft.rfft2(self.mask.astype(np.float64), s=self.image_shape)
        return self._disc_hat

    def window_sums(self, z, workers=1):
        """``(D ⋆ z)(d)`` over the P×Q corners: z (..., H, W) -> (..., P, Q) float64, by FFT."""
        P, Q = self.grid_shape
        zh = sfft.rfft2(np.asarray(z, dtype=np.float64), axes=(-2, -1), workers=workers)
        zh *= np.conj(self.disc_spectrum())
        # the inverse transform of the P rows and Q columns kept only (as `kernels.correlate_fft`)
        rows = sfft.ifft(zh, axis=-2, workers=workers, overwrite_x=True)[..., :P, :]
        return sfft.irfft(rows, n=self.image_shape[1], axis=-1, workers=workers)[..., :Q]

    def coverage(self, q, workers=1):
        """``q ⊛ D``, the probability the disc covers each pixel: q (..., P, Q) -> (..., H, W), by FFT.

        The full convolution of P×Q with h×h is H×W: a circular one of that size does not wrap.
        """
        qh = sfft.rfft2(np.asarray(q, dtype=np.float64), s=self.image_shape, axes=(-2, -1), workers=workers)
        return sfft.irfft2(qh * self.disc_spectrum(), s=self.image_shape, axes=(-2, -1), workers=workers)
