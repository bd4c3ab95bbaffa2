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

from .engine import free_energy, objective, params_from
from .engine.mstep import NOISE_MODELS, face_sums
from .model import Params

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
                                   noise_floor=self.noise_floor, noise=self.noise)
        if not update_prior:
            params = replace(params, prior=np.array(previous.prior, copy=True))
        return params, info

    def objective(self, stats, params):
        """The total objective of θ from its own E-step (log-likelihood or MAP joint, plus α Σ log A)."""
        return objective(stats, params, self.prior_smoothing)

    def free_energy(self, stats, params):
        """The total free energy of the posteriors summed in `stats` under θ (incremental EM)."""
        return free_energy(stats, params, self.prior_smoothing)

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
        pos = (new.prior > 0) & (old.prior > 0)
        la = np.full(new.prior.shape, -np.inf)
        la[pos] = np.log(old.prior[pos]) + eta * (np.log(new.prior[pos]) - np.log(old.prior[pos]))
        keep = (new.prior > 0) & ~pos
        la[keep] = np.log(new.prior[keep])
        A = np.exp(la - la.max())
        return Params(F, B, s, A / A.sum())

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
        s2 = params.noise_std ** 2
        return -0.5 * n_images * H * W * float(np.sum(np.log(2 * np.pi * s2) + 1.0))
