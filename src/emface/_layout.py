"""The user's images-first layouts and the engine's channel-first layout, in one place.

Users see a face as (h, w) for one grey face, (C, h, w) for several grey
faces, and (h, w, Ch) or (C, h, w, Ch) in colour; a background as (H, W) or
(H, W, Ch); a prior as (P, Q) for one face or (C, P, Q); s as a number, or one
per channel. The engine holds faces (C, Ch, h, w), background (Ch, H, W),
prior (C, P, Q) and s (Ch,) always.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["public_faces", "public_background", "public_prior", "public_noise", "public_params", "PublicParams",
           "LUMA"]

#: ITU-R 601 luma: colour (..., 3) to grey by ``rgb @ LUMA``
LUMA = np.array([0.299, 0.587, 0.114])


def public_faces(faces, colour):
    """(C, Ch, h, w) -> (C, h, w) grey or (C, h, w, Ch) colour."""
    return np.moveaxis(faces, 1, -1).copy() if colour else faces[:, 0].copy()


def public_background(background, colour):
    """(Ch, H, W) -> (H, W) grey or (H, W, Ch) colour."""
    return np.moveaxis(background, 0, -1).copy() if colour else background[0].copy()


def public_prior(prior):
    """(C, P, Q) -> (P, Q) for one face, (C, P, Q) for several."""
    return prior[0].copy() if prior.shape[0] == 1 else prior.copy()


def public_noise(noise_std, per_channel):
    """(Ch,) -> a float for one shared s, an array (Ch,) with one s per channel."""
    return np.asarray(noise_std, dtype=np.float64).copy() if per_channel else float(noise_std[0])


@dataclass
class PublicParams:
    """θ in the user's layouts, as the fitted ``faces_``, ``background_``, ``noise_std_``, ``prior_`` and
    ``empty_weight_`` show it (data units): what a fit's callback receives as ``params``."""

    faces: np.ndarray
    background: np.ndarray
    noise_std: object
    prior: np.ndarray
    empty_weight: float | None = None


def public_params(theta, colour, per_channel):
    """`emface.engine.records.Params` (engine layout) -> `PublicParams` (the user's layouts)."""
    return PublicParams(public_faces(theta.faces, colour), public_background(theta.background, colour),
                        public_noise(theta.noise_std, per_channel), public_prior(theta.prior), theta.empty_weight)
