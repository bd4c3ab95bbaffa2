"""The model object: what is specific to emface's model, behind the seam the EM loop calls.

`FaceMixture` is C faces of one size h×w on one background, each image showing
one face at one unknown top-left corner, with Gaussian noise of one shared s
(or one s per channel). It owns the E-step call, the closed-form M-step, the
objective and free energy, and the moves that escape its local optima; the
loop in `emface.em` only calls these. A new model (another transformation
group, another noise) is another such object, not a branch in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .engine import Translations, free_energy, objective, params_from
from .engine._formulas import gaussian_profile
from .engine.brightness import normalize, start_gains
from .engine.mstep import NOISE_MODELS, face_sums
from .engine.records import Params

__all__ = ["FaceMixture", "NOISE_MODELS"]


@dataclass
class FaceMixture:
    """C faces at unknown positions on one background (MODEL.md, "Several faces" and "Colour").

    Parameters
    ----------
    face_shape : (h, w)
    n_faces : int
        C.
    hard : bool
        Hard (MAP) EM: each image's posterior is one-hot at its best (face, position).
    prior_smoothing : float
        Dirichlet pseudo-count α added to every (face, position) of A.
    noise : {"shared", "per_channel"}
    noise_floor : float
        Smallest s, in working units.
    shift_escape : bool
        After convergence, try each face shifted by up to `max_shift` pixels.
    max_shift : int
    split_merge : bool
        With several faces, after convergence try merging two faces that hold
        the same object and splitting one that holds two.
    escape_sample : int
        Images on which the moves rank their candidates (all when fewer);
        only the best candidate is then confirmed on every image.
    empty_frames : bool
        A "no face" class, ``X_k = B + noise``, with its own weight π_∅
        (``Params.empty_weight``), fitted with A (MODEL.md, "Frames that do not fit").
    brightness_groups : int
        0: the note's model. 1: a gain and an offset per image; Ch: one per
        image and channel (`emface.engine.brightness`; ``Params.gains``).
    n_images : int
        K, the images the per-image gains belong to (with brightness).
    """

    face_shape: tuple
    n_faces: int = 1
    hard: bool = False
    prior_smoothing: float = 0.0
    noise: str = "shared"
    noise_floor: float = 1e-12
    shift_escape: bool = True
    max_shift: int = 2
    split_merge: bool = True
    escape_sample: int = 500
    empty_frames: bool = False
    brightness_groups: int = 0
    n_images: int = 0

    #: the weight a start gives "no face" when it has none
    EMPTY_START = 0.1

    # ------------------------------------------------------------------ the pose axis
    def pose(self, image_shape):
        """The pose object of this model in frames of `image_shape`: the translations of an h×w face.

        What the engine asks about the latent pose (the grid, the prior's
        shape, the window sums, the coverage, the neighbours) it asks this.
        """
        return Translations(image_shape, self.face_shape)

    # ------------------------------------------------------------------ the steps
    def e_step(self, executor, params, **kw):
        """One E-step pass: the sufficient statistics of θ (``kw``: ``chunks``, ``per_image``)."""
        return executor.pass_stats(params, hard=self.hard, **kw)

    def m_step(self, stats, previous, *, update_prior=True):
        """The closed-form M-step; returns (Params, MStepInfo).

        With ``update_prior=False`` A stays `previous`'s (a partial M-step, as
        incremental EM's first sweep needs: sums over part of the stack would
        set A to zero wherever the images not yet seen have their faces).
        """
        params, info = params_from(stats, previous, prior_smoothing=self.prior_smoothing,
                                   noise_floor=self.noise_floor, noise=self.noise, empty_frames=self.empty_frames,
                                   pose=self.pose(stats.XC.shape[-2:]))
        if not update_prior:
            params = replace(params, prior=np.array(previous.prior, copy=True), empty_weight=previous.empty_weight)
        return self._with_brightness(params, stats, previous), info

    def _with_brightness(self, params, stats, previous):
        """θ with the (a, b) of the E-step's images (mean gain 1, mean offset 0), or `previous`'s.

        A pass over a subsample (the moves') carries its own images' (a, b) only:
        the whole stack's stay `previous`'s then.
        """
        if not self.brightness_groups:
            return params
        if stats.gains is not None and len(stats.gains) == self.n_images:
            F, B, a, b = normalize(params.faces, params.background, stats.gains, stats.offsets)
            return replace(params, faces=F, background=B, gains=a, offsets=b)
        if previous is not None and previous.gains is not None:
            return replace(params, gains=previous.gains.copy(), offsets=previous.offsets.copy())
        return params

    def start(self, params):
        """A starting θ with this model's classes: "no face" added (weight `EMPTY_START`, A scaled to
        share the simplex) or removed (A renormalised) as `empty_frames` says."""
        G = self.brightness_groups
        if G and (params.gains is None or params.gains.shape != (self.n_images, G)):
            params = replace(params, **dict(zip(("gains", "offsets"), start_gains(self.n_images, G))))
        elif not G and params.gains is not None:
            params = replace(params, gains=None, offsets=None)
        if self.empty_frames and params.empty_weight is None:
            return replace(params, prior=params.prior * (1.0 - self.EMPTY_START), empty_weight=self.EMPTY_START)
        if not self.empty_frames and params.empty_weight is not None:
            return replace(params, prior=params.prior / params.prior.sum(), empty_weight=None)
        return params

    def objective(self, stats, params):
        """The total objective of θ from its own E-step (log-likelihood or MAP joint, plus α Σ log A)."""
        return objective(stats, params, self.prior_smoothing)

    def free_energy(self, stats, params):
        """The total free energy of the posteriors summed in `stats` under θ (incremental EM)."""
        return free_energy(stats, params, self.prior_smoothing, pose=self.pose(params.image_shape))

    def extrapolate(self, old, new, eta):
        """θ stretched past an M-step: ``old + η (new - old)``, in coordinates where any η keeps θ valid.

        F and B move linearly; s and A move in log space (A stays a
        distribution, its zeros zero) and s stays above the noise floor, as the
        M-step keeps it: from a θ outside the M-step's constraints the next
        EM step could lose ground.
        """
        F = old.faces + eta * (new.faces - old.faces)
        B = old.background + eta * (new.background - old.background)
        s = np.maximum(old.noise_std * (new.noise_std / old.noise_std) ** eta, self.noise_floor)
        # "no face" is one more entry of the simplex that A spans
        empty = new.empty_weight is not None and old.empty_weight is not None
        a_old = np.append(old.prior.ravel(), old.empty_weight) if empty else old.prior.ravel()
        a_new = np.append(new.prior.ravel(), new.empty_weight) if empty else new.prior.ravel()
        pos = (a_new > 0) & (a_old > 0)
        la = np.full(a_new.shape, -np.inf)
        la[pos] = np.log(a_old[pos]) + eta * (np.log(a_new[pos]) - np.log(a_old[pos]))
        keep = (a_new > 0) & ~pos
        la[keep] = np.log(a_new[keep])
        A = np.exp(la - la.max())
        A /= A.sum()
        # the images' (a, b) are those of the M-step's E-step: the stretched θ is judged with them
        if empty:
            return Params(F, B, s, A[:-1].reshape(new.prior.shape), float(A[-1]), new.gains, new.offsets)
        return Params(F, B, s, A.reshape(new.prior.shape), new.empty_weight, new.gains, new.offsets)

    @staticmethod
    def compact(stats):
        """The sums a block of incremental EM keeps: no per-image arrays, S_F in image space."""
        st = stats.without_per_image()
        return replace(st, S_F=face_sums(st), S_F_hat=None) if st.S_F_hat is not None else st

    # ------------------------------------------------------------------ escapes from local optima
    def moves(self):
        """The moves tried after convergence, in order: each ``move(executor, model, run, resume) -> run``."""
        from . import moves

        out = []
        if self.shift_escape:
            out.append(moves.shift_escape)
        if self.split_merge and self.n_faces > 1:
            out.append(moves.split_merge)
        return out

    def hard_score(self, params, n_images):
        """The Gaussian part of the hard objective after its own noise M-step: the fitted s decides."""
        H, W = params.image_shape
        return float(gaussian_profile(n_images * H * W, params.noise_std ** 2))
