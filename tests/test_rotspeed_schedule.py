"""The sparse angle search's schedule with over-relaxation: a candidate defers a due sweep once."""

import numpy as np

from emface.em import EMSettings, run_em
from emface.engine.records import Params
from emface.engine.rotations import angle_grid
from emface.executor import EngineConfig, LocalExecutor
from emface.rotation_model import RotationMixture
from emface.sources import ArraySource

from test_rotations_estimator import _assert_monotone, _stack


def _setup(**kw):
    X, *_ = _stack(30, 20, 8, 12, 0.3, seed=1)
    src = ArraySource(X, (8, 8), standardize=False, chunk_size=16)
    ex = LocalExecutor(src, EngineConfig(backend="numpy"))
    model = RotationMixture((8, 8), angles=angle_grid(12), **kw)
    rng = np.random.default_rng(0)
    start = model.start(Params(rng.normal(size=(8, 8)), X.mean(0), 1.0, np.full((13, 13), 1 / 169)))
    return ex, model, start


def test_a_candidate_defers_a_due_sweep_once():
    ex, model, theta = _setup()
    stats = model.e_step(ex, theta)  # the first pass sweeps and gives windows
    theta, _ = model.m_step(stats, theta)
    assert model.full_passes == 1
    model._state["next_full"] = True  # a sweep is due
    cand = model.extrapolate(theta, theta, 1.5)
    model.e_step(ex, cand)  # the candidate scores the windows
    assert (model.full_passes, model.sparse_passes) == (1, 1)
    model.e_step(ex, theta)  # rejected: the plain step sweeps
    assert (model.full_passes, model.sparse_passes) == (2, 1)
    # a candidate after a deferral sweeps (no second deferral in a row)
    model._state["next_full"] = True
    model.e_step(ex, model.extrapolate(theta, theta, 1.5))
    model._state["next_full"] = True
    model.e_step(ex, model.extrapolate(theta, theta, 1.5))
    assert (model.full_passes, model.sparse_passes) == (3, 2)


def test_bound_never_decreases_with_deferred_sweeps():
    ex, model, start = _setup(sweep_every=3)
    run = run_em(ex, model, start, EMSettings(max_iter=30, tol=0.0, accelerate=True))
    _assert_monotone(run.objectives)
    assert model.sparse_passes > 0 and model.full_passes > 1
