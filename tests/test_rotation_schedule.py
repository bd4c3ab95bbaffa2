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


def test_a_candidate_defers_a_due_sweep():
    ex, model, theta = _setup(sweep_every=2)
    stats = model.e_step(ex, theta)  # the first pass sweeps and gives windows
    theta, _ = model.m_step(stats, theta)
    assert model.full_passes == 1
    model._state["next_full"] = True  # a sweep is due
    model.e_step(ex, model.extrapolate(theta, theta, 1.5))  # the candidate scores the windows
    assert (model.full_passes, model.sparse_passes) == (1, 1)
    model.e_step(ex, theta)  # rejected: the plain step sweeps
    assert (model.full_passes, model.sparse_passes) == (2, 1)
    # accepted candidates defer the sweep until 2·sweep_every passes have gone without one
    model._state.update(next_full=True, since_full=2)
    model.e_step(ex, model.extrapolate(theta, theta, 1.5))
    assert (model.full_passes, model.sparse_passes) == (2, 2)
    model._state.update(next_full=True, since_full=3)
    model.e_step(ex, model.extrapolate(theta, theta, 1.5))
    assert (model.full_passes, model.sparse_passes) == (3, 2)
    # a plain pass that is due sweeps
    model._state.update(next_full=True, since_full=0)
    model.e_step(ex, theta)
    assert (model.full_passes, model.sparse_passes) == (4, 2)
    # the sweep that confirms convergence is not deferred
    model._state.update(last_full=False, since_full=0)
    assert not model.confirm_converged()
    model.e_step(ex, model.extrapolate(theta, theta, 1.5))
    assert (model.full_passes, model.sparse_passes) == (5, 2) and not model._state["confirming"]


def test_bound_never_decreases_with_deferred_sweeps():
    ex, model, start = _setup(sweep_every=3)
    run = run_em(ex, model, start, EMSettings(max_iter=30, tol=0.0, accelerate=True))
    _assert_monotone(run.objectives)
    assert model.sparse_passes > 0 and model.full_passes > 1


def test_sweeps_give_the_narrowest_window_that_loses_nothing():
    from emface.engine.rotstep import SETTLE, _choose_sets

    R, width = 12, 2
    la = np.full((5, R), -1000.0)
    la[0, 5] = 0.0                                   # one angle: half-width 0
    la[1, [5, 6]] = [0.0, -1.0]                      # two neighbours: half-width 1
    la[2, [4, 5, 6, 3]] = [-20.0, 0.0, -20.0, -40.0]  # e^-20 > SETTLE at ±1, e^-40 < SETTLE at -2
    la[3, [5, 7]] = [0.0, -20.0]                     # mass at +2: half-width 2
    la[4] = 0.0                                      # flat: all angles
    assert np.exp(-20.0) > SETTLE > np.exp(-40.0)
    cen, allowed = _choose_sets(la, np.full(5, -1), width, False)
    assert np.array_equal(cen[:4] % R, [5, 5, 5, 5]) and cen[4] == -1
    assert np.array_equal(width - cen[:4] // R, [0, 1, 1, 2])
    assert np.array_equal(allowed.sum(axis=1), [1, 3, 3, 5, 12])
    assert allowed[1, [4, 5, 6]].all() and allowed[3, [3, 4, 5, 6, 7]].all()
    # an old window that holds more mass is kept (the bound never drops): image 1's old 5-wide window
    old = np.array([-1, 5, -1, -1, -1])
    la2 = la.copy()
    la2[1, 7] = -30.0  # inside the old window only, e^-30 < SETTLE: the new narrow window loses it
    cen2, allowed2 = _choose_sets(la2, old, width, False)
    assert cen2[1] == 5 and allowed2[1].sum() == 5
    # hard EM keeps the full width
    cen_h, allowed_h = _choose_sets(la, np.full(5, -1), width, True)
    assert np.array_equal(cen_h, [5, 5, 5, 5, cen_h[4]]) and np.array_equal(allowed_h.sum(axis=1), [5] * 5)


def test_windows_of_every_width_are_the_restricted_posteriors():
    import reference_rotations as ref
    from emface.engine.chunk import Chunk
    from emface.engine.rotstep import chunk_pass, make_rot_plan
    from test_rotations_engine import _problem, _ref

    R = 8
    theta, X = _problem(6, K=4, C=1, angles=angle_grid(R))
    codes = np.array([2 + R * 2, 7 + R * 1, 0, -1])  # half-widths 0, 1, 2 and all angles
    stats, cen = chunk_pass(Chunk(X), make_rot_plan(theta, cache_spectra=False), codes, full=False)
    assert np.array_equal(cen, codes)
    lj = ref.log_joint(X, *_ref(theta))
    for k, keep in enumerate([[2], [6, 7, 0], [6, 7, 0, 1, 2], list(range(R))]):
        mask = np.isin(np.arange(R), keep)[None, :, None, None]
        l = np.where(mask, lj[k], -np.inf)
        m = l.max()
        assert abs(stats.image_loglik[k] - (m + np.log(np.exp(l - m).sum()))) <= 1e-10 * abs(m)
        assert stats.angle_index[k] in keep
