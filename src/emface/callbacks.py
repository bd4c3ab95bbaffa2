"""What a fit reports as it runs: progress lines, checkpoints, and the user's callback.

`FitReporter` is the one callback the estimator hands the EM driver. After
every pass it prints a line (``verbose=2``), writes the best state so far to
the checkpoint file (atomically; a failure warns and the fit goes on), and
calls the user's callback with the objective in data units and θ in the
public layout of ``faces_`` and ``background_`` (`emface._layout.PublicParams`).
"""

from __future__ import annotations

import warnings

from ._layout import public_params
from .fitted import FittedState, write_state
from .persistence import atomic_save

__all__ = ["FitReporter"]


class FitReporter:
    """The driver's callback for one fit (see the module's docstring).

    Parameters
    ----------
    src : emface.sources.WorkingUnits
        The fit's source: its map between working and data units.
    colour, per_channel : bool
        The layouts of θ the user sees (channels axis; one s per channel).
    algorithm : str
        The schedule, recorded in checkpoints.
    settings : dict
        The estimator's settings, recorded in checkpoints.
    user : callable(dict), optional
    verbose, interval : int
        Lines every `interval` iterations with ``verbose >= 2``.
    checkpoint : path, optional
    every : int
        Checkpoint every `every` iterations.
    face_shape_scores : list of dict
        The face size search's record, kept in checkpoints.
    """

    def __init__(self, src, *, colour, per_channel, algorithm, settings, user=None, verbose=0, interval=10,
                 checkpoint=None, every=10, face_shape_scores=()):
        self.src = src
        self.colour = bool(colour)
        self.per_channel = bool(per_channel)
        self.algorithm = algorithm
        self.settings = settings
        self.user = user
        self.verbose = int(verbose)
        self.interval = int(interval)
        self.checkpoint = checkpoint
        self.every = int(every)
        self.face_shape_scores = list(face_shape_scores)
        self.best = None  # (objective in data units, info) of the best pass so far

    def __call__(self, info):
        obj = self.src.loglik_to_data(info["objective"])
        block = "block" in info
        if not block and (self.best is None or obj > self.best[0]):
            self.best = (obj, info)
        if self.verbose >= 2 and not block and info["iter"] % self.interval == 0:
            print(f"  run {info['run']} iteration {info['iter']}: objective {obj:.6g}")
        if self.checkpoint is not None and not block and info["iter"] > 0 and info["iter"] % self.every == 0:
            self._write_checkpoint(self.best[1])
        if self.user is not None:
            params = public_params(self.src.to_data(info["params"]), self.colour, self.per_channel)
            self.user(dict(info, objective=obj, params=params))

    def _write_checkpoint(self, info):
        state = FittedState.from_progress(info, self.src, self.colour, self.algorithm, self.face_shape_scores)
        try:
            atomic_save(self.checkpoint, lambda tmp: write_state(tmp, state, self.settings, kind="checkpoint"))
        except OSError as exc:  # a full disk must not end a long fit: warn, and the fit goes on
            warnings.warn(f"could not write the checkpoint {self.checkpoint}: {exc.strerror or exc}; the fit goes on",
                          UserWarning, stacklevel=2)
