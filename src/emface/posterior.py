"""What a fitted model says about images: the posterior of each image's face and position.

`PosteriorMixin` gives an estimator holding a fitted θ (`FaceEM`) its
inference methods -- `predict`, `predict_face`, `predict_proba`,
`score_samples`, `score`, `posterior_summary`, `sample` -- and
`PosteriorSummary` is what `posterior_summary` returns: a few numbers per image.
New images are judged under the posterior predictive prior
(`prior_predictive_`), the training images under the fitted prior.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import _validation as v
from ._layout import public_prior
from .engine.brightness import start_gains
from .engine.mstep import misfit_z, predictive_prior
from .schedule import draw_means

__all__ = ["PosteriorSummary", "PosteriorMixin", "summarise", "n_values", "public_brightness", "WORKING_LIMIT",
           "PREDICT_BRIGHTNESS_STEPS"]

#: alternations of the E-step and the (a, b) solve that fit a new image's brightness before its posterior
PREDICT_BRIGHTNESS_STEPS = 4

#: |values| in working units the kernels are trusted with: squares and ratios such as (F / s)²
#: summed over an image stay far inside float64 (data are mapped to about unit spread)
WORKING_LIMIT = 1e50


@dataclass
class PosteriorSummary:
    """What the posterior says about each image, in a few numbers per image.

    Attributes
    ----------
    positions : int ndarray (K, 2)
        Top-left corner (row, column) of the most probable (face, position).
    faces : int ndarray (K,)
        The face of that most probable (face, position).
    probability : ndarray (K,)
        Its posterior probability.
    entropy : ndarray (K,)
        The posterior's entropy over (face, position), in nats.
    face_probability : ndarray (K,)
        The posterior probability of that face, positions summed out.
    log_likelihood : ndarray (K,)
        ``log p(X_k | θ)``.
    misfit : ndarray (K,)
        How badly the model explains each image: the z-score
        ``(E_q[Σ_ch ||X_k,ch - μ_ch||² / s_ch²] - n) / sqrt(2n)``, n = H·W·Ch,
        each channel weighed by its own 1/s_ch² (MODEL.md, "Frames that do
        not fit"). About N(0, 1) for images that follow the model; above 5
        the image is very unlikely under it, whatever `probability` says (a
        high probability then means "the best of bad options").
    no_face_probability : ndarray (K,)
        The posterior probability of "no face" (0 without ``empty_frames=True``).
        Where it wins, `faces` is -1 and `positions` (-1, -1).
    gain, offset : ndarray (K,) or (K, Ch), or None
        Each image's gain a_k and offset b_k (data units) with per-image
        brightness: the fitted ones of the training images, and for new images
        those fitted by `PREDICT_BRIGHTNESS_STEPS` alternations of the E-step
        and the 2×2 solve from a = 1, b = 0, then one more solve under the
        final posterior. None for the note's model.
    angles : ndarray (K,) or None
        With ``rotations``: the angle of the most probable (face, angle,
        position), degrees, counter-clockwise as ``scipy.ndimage.rotate``
        turns, relative to the fitted face (the face turned by it is what the
        image shows). None without rotations.
    """

    positions: np.ndarray
    faces: np.ndarray
    probability: np.ndarray
    entropy: np.ndarray
    face_probability: np.ndarray
    log_likelihood: np.ndarray
    misfit: np.ndarray | None = None
    no_face_probability: np.ndarray | None = None
    gain: np.ndarray | None = None
    offset: np.ndarray | None = None
    angles: np.ndarray | None = None


def n_values(src):
    """n = H·W·Ch, the values of one image of `src` (the misfit's degrees of freedom)."""
    H, W = src.image_shape
    return H * W * src.n_channels


def public_brightness(gains, offsets):
    """(gains, offsets) (K, G) as users see them: (K,) for one per image, (K, Ch) for one per channel."""
    return (gains[:, 0].copy(), offsets[:, 0].copy()) if gains.shape[1] == 1 else (gains.copy(), offsets.copy())


def summarise(stats, src, params=None, angles=None):
    """The `PosteriorSummary` of a pass's per-image `Stats` over the images of `src` (data units).

    With brightness: the (a, b) of `params` (those its E-step used: the
    training images' fitted ones) when given, else the pass's updated ones.
    With rotations: each image's angle from the grid `angles` (or `params`'s).
    """
    angles = getattr(params, "angles", None) if angles is None else angles
    gains, offsets = (stats.gains, stats.offsets) if params is None or params.gains is None else (
        params.gains, params.offsets)
    if gains is not None:  # working units to the data's, as `Params.affine` maps them
        gains, offsets = public_brightness(gains, src.scale * offsets + src.offset * (1.0 - gains))
    cls = stats.class_prob
    empty = np.zeros(len(cls)) if stats.empty_prob is None else stats.empty_prob
    labels = stats.labels
    return PosteriorSummary(
        positions=stats.positions,
        faces=labels,
        probability=stats.max_prob,
        entropy=stats.entropy,
        face_probability=np.where(labels >= 0, cls[np.arange(len(cls)), np.maximum(labels, 0)], empty),
        log_likelihood=src.loglik_to_data(stats.image_loglik),
        misfit=None if stats.chi2 is None else misfit_z(stats.chi2, n_values(src)),
        no_face_probability=empty,
        gain=gains,
        offset=offsets,
        angles=None if angles is None or stats.angle_index is None else np.asarray(angles)[stats.angle_index],
    )




class PosteriorMixin:
    """Inference under a fitted θ (see the module's docstring).

    The host sets, when fitted: ``_theta`` (θ in data units, the engine's
    layout), ``_moments`` (its map to working units), ``_colour``,
    ``faces_``, ``background_``, ``n_images_fit_`` and ``_fit_smoothing``,
    ``_train_summary``; and provides ``_make_executor(X, face_shape, moments=)``.
    """

    @property
    def prior_predictive_(self):
        """The prior of a new image's (face, position), in the layout of `prior_` (see the class docstring)."""
        self._check_fitted()
        return public_prior(self._predictive_theta().prior)

    def _predictive_theta(self):
        """θ with A replaced by its posterior predictive: what a new image is judged under.

        A model saved without its number of training images keeps its fitted A.
        """
        th = self._theta
        K = getattr(self, "n_images_fit_", None)
        if K is None:
            return th
        # the α the fit used (a later set_params must not change what the fitted A's counts were)
        alpha = getattr(self, "_fit_smoothing", self.prior_smoothing)
        A, pi0 = predictive_prior(th.prior, K, float(alpha), th.empty_weight)
        return replace(th, prior=A, empty_weight=pi0)  # a θ with rotations keeps its angles

    # ------------------------------------------------------------------ inference
    def _check_fitted(self):
        if not hasattr(self, "faces_"):
            raise AttributeError(
                "This FaceEM instance is not fitted yet. Call 'fit' with appropriate arguments first."
            )

    def _check_X_predict(self, X):
        X = v.check_stack(X)
        self._check_fitted()
        shape = tuple(int(s) for s in X.shape[1:])
        want = tuple(self.background_.shape)
        if shape != want:
            raise ValueError(
                f"X has images of shape {shape}, but this FaceEM was fitted on images of shape {want}"
            )
        th = self._theta  # what the kernels read: the same geometry, whatever was set by hand
        if tuple(shape[:2]) != th.image_shape or (shape[2] if len(shape) == 3 else 1) != th.n_channels:
            raise ValueError(f"X has images of shape {shape}, but this FaceEM's parameters are for images of "
                             f"{th.image_shape[0]}x{th.image_shape[1]} with {th.n_channels} channel(s)")
        return X

    def _pass(self, X, output=None, as_training=False):
        X = self._check_X_predict(X)
        ex = self._make_executor(X, self._theta.face_shape, moments=self._moments)
        try:
            _check_working_range(ex.source)
            params = ex.source.to_working(self._theta if as_training else self._predictive_theta())
            params, steps = self._new_brightness(params, ex.n_images, as_training)
            if getattr(params, "angles", None) is not None:  # rotations: their own pass (emface.rotation_model)
                from .rotation_model import rotation_pass

                stats, full = rotation_pass(ex, params, output=output, fit_steps=steps)
                return ex, stats, full
            if output is None:
                return ex, ex.pass_stats(params, hard=False, fit_steps=steps), None
            stats, full = ex.collect(params, hard=False, output=output, fit_steps=steps)
            return ex, stats, full
        finally:
            ex.close()

    def _new_brightness(self, params, n_images, as_training):
        """θ with the (a, b) the pass starts from, and the alternations that fit them first.

        New images' brightness is not known: each starts at a = 1, b = 0 and
        `PREDICT_BRIGHTNESS_STEPS` alternations of the E-step and the 2×2
        solve fit it before the posterior is taken. The training images
        judged as such (``as_training``) keep their fitted (a, b).
        """
        g = self._theta.gains
        if g is None:
            return replace(params, gains=None, offsets=None), 0
        if as_training and params.gains is not None and len(params.gains) == n_images:
            return params, 0
        gains, offsets = start_gains(n_images, g.shape[1])
        return replace(params, gains=gains, offsets=offsets), PREDICT_BRIGHTNESS_STEPS

    def predict(self, X):
        """Top-left corner of the most probable (face, position) in each image.

        Returns
        -------
        ndarray of int, shape (K, 2): row and column; (-1, -1) where "no
        face" is more probable than every (face, position) (``empty_frames=True``).
        """
        _, stats, _ = self._pass(X)
        return stats.positions

    def predict_face(self, X):
        """The most probable face of each image, positions summed out.

        Returns
        -------
        ndarray of int, shape (K,)
            -1 where "no face" is more probable than every face (``empty_frames=True``).
        """
        _, stats, _ = self._pass(X)
        face = np.argmax(stats.class_prob, axis=1)
        empty = stats.empty_prob > stats.class_prob[np.arange(len(face)), face]
        return np.where(empty, -1, face)

    def predict_proba(self, X):
        """Posterior over positions for each image: (K, P, Q) for one face, (K, C, P, Q) for several
        (with rotations (K, R, P, Q) and (K, C, R, P, Q): each angle of `angles_` too).

        With ``empty_frames=True`` each image's posterior sums to 1 minus its
        probability of "no face" (`posterior_summary`'s ``no_face_probability``).
        """
        _, _, q = self._pass(X, output="q")
        return q[:, 0] if q.shape[1] == 1 else q

    def score_samples(self, X):
        """log p(X_k | θ) of each image, shape (K,)."""
        ex, stats, _ = self._pass(X)
        return ex.source.loglik_to_data(stats.image_loglik)

    def score(self, X, y=None):
        """Mean per-image log-likelihood of X."""
        return float(np.mean(self.score_samples(X)))

    def posterior_summary(self, X=None, *, as_training=False):
        """Per-image summaries of the soft posterior: position, face, their probabilities, entropy.

        Parameters
        ----------
        X : array-like, optional
            Images to summarise, by one soft E-step pass under the fitted θ,
            judged as new images (under `prior_predictive_`).
            None: the images of the last `fit`, from the E-step that fit ended
            with (soft fits only: a hard fit's posteriors are one-hot, so its
            images need to be passed again for their soft posteriors).
        as_training : bool, default=False
            Judge X as the images the model was fitted on, under the fitted
            prior `prior_` (as the fit's own answers are): for the soft
            summary of a hard fit's or an interrupted fit's own images.

        Returns
        -------
        PosteriorSummary
        """
        if X is None:
            self._check_fitted()
            if getattr(self, "_train_summary", None) is None:
                raise ValueError("posterior_summary() without X needs a soft fit (hard=False): pass the images")
            return self._train_summary
        ex, stats, _ = self._pass(X, as_training=as_training)
        return summarise(stats, ex.source, angles=getattr(self._theta, "angles", None))

    def sample(self, n_samples=1, random_state=None):
        """Draw images from the fitted model.

        Returns
        -------
        X : ndarray (n_samples, H, W) or (n_samples, H, W, Ch)
        positions : ndarray of int (n_samples, 2)
            (-1, -1) for an image drawn without a face (``empty_frames=True``).
        labels : ndarray of int (n_samples,)
            The face of each image (-1: no face); returned only for several faces.
        angles : ndarray (n_samples,)
            With rotations: each image's angle (degrees), returned last.
        """
        self._check_fitted()
        n_samples = v.check_int(n_samples, "n_samples", low=1)
        th = self._theta
        _check_sample_memory(n_samples, th)
        rng = v.check_random_state(random_state)
        turned = getattr(th, "angles", None) is not None
        if turned:
            from .rotation_model import draw_means as draw_turned

            X, labels, pos, r = draw_turned(th, n_samples, rng)
        else:
            X, labels, pos = draw_means(th, n_samples, rng)
        step = max(1, _SAMPLE_NOISE_BLOCK // max(1, X[0].size))
        for a in range(0, n_samples, step):  # the noise a block at a time: the same draws, no second copy of X
            X[a:a + step] += rng.normal(0.0, 1.0, size=X[a:a + step].shape) * th.noise_std
        X = X if self._colour else X[..., 0]
        out = (X, pos, labels) if th.n_faces > 1 else (X, pos)
        return out + (th.angles[r],) if turned else out


#: values per block of `sample`'s noise
_SAMPLE_NOISE_BLOCK = 2**22


def _check_working_range(src):
    """New images under a fitted map to working units: refuse values the kernels cannot square in float64."""
    dt = np.dtype(src.data.dtype)
    if src.data_range is None and dt.kind in "biu":  # integers: their dtype's range may do, without a pass
        info = np.iinfo(np.uint8 if dt.kind == "b" else dt)
        if max(abs(info.min - src.offset), abs(info.max - src.offset)) / src.scale <= WORKING_LIMIT:
            return
    lo, hi = src.working_range()
    big = max(abs(lo), abs(hi))
    if not big <= WORKING_LIMIT:
        raise ValueError(f"X holds values from {src.data_range[0]:.6g} to {src.data_range[1]:.6g}: too far "
                         f"from the data this model was fitted on (centre {src.offset:.6g}, spread "
                         f"{src.scale:.6g}) to be evaluated in float64; give X in the model's units")


def _check_sample_memory(n_samples, theta):
    """`sample` refuses a draw larger than the memory available, instead of being killed for it."""
    from .sources import available_memory

    per_image = 8 * int(np.prod(theta.background.shape)) + 64
    need = n_samples * per_image
    avail = available_memory()
    if need > avail:
        raise ValueError(f"sample(n_samples={n_samples}) needs about {need / 2**30:.3g} GiB ({per_image:,} bytes "
                         f"per image), more than the {avail / 2**30:.3g} GiB of memory available: draw fewer "
                         "images at a time")
