"""How a fit is scheduled: how many runs and from which starts, batch or incremental, which blocks.

The EM driver (`emface.em`) runs what is decided here; the estimator only
passes its settings in. Each decision is a small function of the data's size
and the settings:

- `choose_algorithm`: batch or incremental EM (`INCREMENTAL_MIN_IMAGES`);
- `run_counts`, `make_starts` and `RestartRule`: the restarts of
  ``n_init="auto"`` (a restart only where the runs so far look like a poor
  optimum: `model_decisiveness`);
- `block_images`, `chunk_cap` and `em_settings`: incremental EM's blocks and
  the chunks they are made of.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from ._layout import public_background, public_faces
from .datasets import draw_assignments, render
from .em import EMSettings
from .engine import costs
from .engine.poses import grid_shape
from .executor import LocalExecutor
from .init import auto_start, random_start, user_start
from .sources import ArraySource

__all__ = ["INCREMENTAL_MIN_IMAGES", "choose_algorithm", "run_counts", "make_starts", "RestartRule",
           "model_decisiveness", "draw_means", "block_images", "chunk_cap", "em_settings"]

#: ``algorithm="auto"`` fits stacks of at least this many images by incremental
#: EM: a conservative threshold, its gain measured at 60,000 and 200,000 images
#: (``benchmarks/incremental.py``); small stacks take a few passes, the first
#: of which (it computes the spectra) costs the same either way.
INCREMENTAL_MIN_IMAGES = 20_000

#: images per block of incremental EM (about; whole chunks are grouped): on
#: 60,000 images of 64x64 at noise 6x, blocks of 250 reached the batch optimum
#: in 7 sweeps (32 s); smaller blocks mean more M-steps per sweep, each block
#: keeping a few face-sized sums (``benchmarks/incremental.py``)
BLOCK_IMAGES = 250
#: share of `max_memory` the blocks' kept sums may take (blocks grow past
#: `BLOCK_IMAGES` images to stay within it), and their bound without one
BLOCK_SHARE = 0.15
BLOCK_BYTES_DEFAULT = 512 * 2**20

#: n_init="auto": at most this many runs; always two below `SMALL_STACK`
#: images; more only while the best run's mean posterior probability of the
#: chosen position is below `CONFIDENT` AND below what the fitted model
#: predicts for its own images (`DECISIVE_SAMPLES` of them, drawn from it) by
#: more than `DECISIVE_GAP` or three standard errors: posteriors split by the
#: noise are no sign of a poor optimum, and a restart cannot make them decisive
AUTO_MAX_RUNS = 4
SMALL_STACK = 300
CONFIDENT = 0.95
DECISIVE_SAMPLES = 1000
DECISIVE_BYTES = 64 * 2**20
DECISIVE_GAP = 0.02


def choose_algorithm(algorithm, n_images, *, distributed=False):
    """"batch" or "incremental" for `n_images` images: `algorithm`, or its "auto" rule.

    A Dask cluster fits by batch EM (see the README's "Large stacks and
    clusters"): "incremental" warns there and runs batch.
    """
    if distributed:
        if algorithm == "incremental":
            warnings.warn("algorithm='incremental' runs on this machine only: a Dask cluster fits by batch "
                          "EM (each iteration one pass of the workers over their blocks)", UserWarning,
                          stacklevel=3)
        return "batch"
    if algorithm == "auto":
        return "incremental" if int(n_images) >= INCREMENTAL_MIN_IMAGES else "batch"
    return algorithm


def run_counts(n_init, n_images, *, user_faces=False):
    """(most runs, runs always made) for `n_images` images: ``n_init``, or its "auto" rule.

    Given starting faces (`user_faces`) make one run under "auto": restarts
    would replace the faces the user chose.
    """
    if isinstance(n_init, str):
        if user_faces:
            return 1, 1
        return AUTO_MAX_RUNS, (2 if n_images < SMALL_STACK else 1)
    return int(n_init), int(n_init)


def make_starts(src, model, user, rng, *, n_runs, init):
    """The starts of `n_runs` runs, each a callable made when its run begins (working units).

    The first run starts from the data-driven start with ``init="auto"``, the
    others from data-driven starts on random halves of the images (several
    faces) or the note's random start; the user's arrays (`user`, from
    `emface._validation.check_params_arrays`) replace their parts of each.
    """
    starts = []
    for i in range(n_runs):
        seed = rng.integers(2**63)

        def make(i=i, seed=seed):
            r = np.random.default_rng(seed)
            if init == "auto" and i == 0:
                base = auto_start(src, model, r)
            elif init == "auto" and model.n_faces > 1:
                base = auto_start(src, model, r, fraction=0.5)
            else:
                base = random_start(src, model, r)
            return model.start(user_start(src, base, **user))

        starts.append(make)
    return starts


class RestartRule:
    """The "auto" rule's question before another run: do the runs so far look like a poor optimum?

    Yes while fewer than `always` runs were made; then yes when the best run's
    images are less decisive (a lower mean posterior probability of the
    chosen position) than the fitted model's own images would be (see
    `model_decisiveness`). Posteriors that the noise splits are split under
    the right θ too, and no restart helps.

    Parameters
    ----------
    always : int
        Runs always made.
    executor, model : optional
        The fit's engine and model; without them a fit that is not confident
        restarts.
    """

    def __init__(self, always, executor=None, model=None):
        self.always = int(always)
        self.executor = executor
        self.model = model

    def __call__(self, runs):
        if len(runs) < self.always:
            return True
        best = max(runs, key=lambda r: r.objective)
        maxp = None if best.stats is None else best.stats.max_prob
        if maxp is None or float(np.mean(maxp)) >= CONFIDENT:
            return False
        if self.executor is None or self.model is None:
            return True
        seen = float(np.mean(maxp))
        expected, se = model_decisiveness(self.executor, self.model, best.params, np.random.default_rng(len(runs)))
        se = float(np.hypot(se, np.std(maxp) / np.sqrt(len(maxp))))
        return seen < expected - max(DECISIVE_GAP, 3.0 * se)


def draw_means(theta, n, rng):
    """n images' (face, corner) drawn from θ's prior ("no face" with its weight: label -1, corner (-1, -1))
    and their mean images, (n, H, W, Ch) float64 without noise: what `sample` and the restart rule draw."""
    labels, pos = draw_assignments(theta.prior, n, rng)
    if theta.empty_weight:
        empty = rng.random(n) < theta.empty_weight
        labels[empty] = -1
        pos[empty] = -1
    X = render(public_background(theta.background, True), public_faces(theta.faces, True), labels, pos)
    return X, labels, pos


def model_decisiveness(executor, model, params, rng):
    """(mean, standard error) of the posterior probability of the chosen position on images of θ itself.

    Draws up to `DECISIVE_SAMPLES` images from the model θ (working units:
    its prior, faces, background and noise) and runs one soft E-step on them
    with the engine of `executor`. A fit whose own images are as decisive as
    the data's is as decisive as the noise allows.
    """
    C, Ch, h, w = params.faces.shape
    H, W = params.image_shape
    n = int(max(8, min(DECISIVE_SAMPLES, executor.n_images, DECISIVE_BYTES // (8 * H * W * Ch))))
    X, _, _ = draw_means(params, n, rng)
    X += rng.standard_normal(X.shape) * params.noise_std
    X = X if Ch > 1 else X[..., 0]
    # one pass: spectra are not worth caching (and the fit's own cache is still held)
    src = ArraySource(X, (h, w), compute_dtype=executor.config.dtype, moments=(0.0, 1.0), check_finite=False,
                      n_faces=C, max_memory=DECISIVE_BYTES // 4)
    params = replace(params, gains=None, offsets=None)  # images drawn from θ have no brightness of their own
    maxp = LocalExecutor(src, executor.config).pass_stats(params, hard=model.hard).max_prob
    return float(np.mean(maxp)), float(np.std(maxp) / np.sqrt(n))


def block_images(n_images, image_shape, face_shape, n_faces, n_channels, max_memory):
    """Images per block of incremental EM: `BLOCK_IMAGES`, or more where the
    blocks' kept sums (N, S_F and XC, float64, per block) would pass their share
    of the memory budget (`BLOCK_SHARE` of `max_memory` in bytes, else
    `BLOCK_BYTES_DEFAULT`)."""
    (H, W), (h, w) = image_shape, face_shape
    P, Q = grid_shape(image_shape, face_shape)
    # N, S_F and XC; SX beside them while the first sweep runs
    per_block = 8 * (n_faces * P * Q + n_faces * n_channels * h * w + 2 * n_channels * H * W)
    budget = BLOCK_SHARE * max_memory if max_memory is not None else BLOCK_BYTES_DEFAULT
    max_blocks = max(2, int(budget // per_block))
    return max(BLOCK_IMAGES, -(-int(n_images) // max_blocks))


def chunk_cap(shape, face_shape, itemsize, *, n_faces):
    """Images per chunk for incremental EM on a stack of `shape`: the usual size, but at most a block's worth."""
    n = costs.chunk_size(tuple(shape[1:3]), face_shape, itemsize, n_images=int(shape[0]), n_faces=int(n_faces),
                         n_channels=int(shape[3]) if len(shape) == 4 else 1)
    return max(1, min(n, BLOCK_IMAGES // 4 or 1))


def _blocks(bounds, per_block):
    """Consecutive chunks grouped into blocks of at least `per_block` images (the last may be smaller)."""
    blocks, cur, size = [], [], 0
    for i, (a, b) in enumerate(bounds):
        cur.append(i)
        size += b - a
        if size >= per_block:
            blocks.append(cur)
            cur, size = [], 0
    if cur:
        blocks.append(cur)
    return blocks


def em_settings(executor, algorithm, *, max_iter, tol, accelerate, n_faces, max_memory):
    """The driver's `EMSettings` for a fit on `executor`: its stopping rule, and incremental EM's blocks.

    `max_memory` is in bytes (or None).
    """
    blocks = []
    if algorithm == "incremental":
        src = executor.source
        per_block = block_images(executor.n_images, src.image_shape, src.face_shape, int(n_faces), src.n_channels,
                                 max_memory)
        blocks = _blocks(executor.bounds, per_block)
    return EMSettings(max_iter=int(max_iter), tol=float(tol), algorithm=algorithm, block_chunks=blocks,
                      accelerate=bool(accelerate))
