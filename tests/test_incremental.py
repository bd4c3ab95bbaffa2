"""Incremental EM (Neal and Hinton): its free energy never falls, and it ends at the batch answer."""

import warnings

import numpy as np
import pytest

import emface.schedule as schedule_module
from emface import FaceEM
from emface.datasets import make_faces
from emface.em import EMSettings, run_em
from emface.engine import free_energy
from emface.executor import EngineConfig, LocalExecutor
from emface.init import auto_start
from emface.model import FaceMixture
from emface.sources import ArraySource


def _blocks(ex, per_block):
    out, cur = [], []
    for i in range(ex.n_chunks):
        cur.append(i)
        if len(cur) == per_block:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


@pytest.mark.parametrize("hard,alpha,n_faces,colour", [(False, 0.0, 1, False), (True, 5.0, 1, False),
                                                       (False, 0.0, 3, False), (False, 2.0, 2, True)])
def test_free_energy_never_falls_block_by_block(hard, alpha, n_faces, colour):
    """After every block's M-step, and after every sweep: F(q, θ) never decreases (checked against the
    free energy recomputed from the kept block sums, and the sweeps' recorded values)."""
    X, _ = make_faces(400, (24, 28), (9, 8), n_faces=n_faces, colour=colour, noise=2.0, random_state=3)
    src = ArraySource(X, (9, 8), chunk_size=25, n_faces=n_faces)
    ex = LocalExecutor(src, EngineConfig())
    model = FaceMixture((9, 8), n_faces, hard=hard, prior_smoothing=alpha, noise_floor=1e-9)
    params = auto_start(src, model, np.random.default_rng(0))
    values = []

    def track(info):
        if "block" in info and info["images"] > src.n_images:  # from the second sweep on: every block seen
            values.append(info["objective"])

    settings = EMSettings(max_iter=6, tol=0.0, algorithm="incremental", block_chunks=_blocks(ex, 2),
                          incremental_sweeps=5, accelerate=False)
    run = run_em(ex, model, params, settings, callback=track)
    assert len(values) >= 3 * len(settings.block_chunks)
    v = np.asarray(values)
    assert np.all(np.diff(v) >= -1e-9 * np.abs(v).max()), np.diff(v).min()
    sweeps = np.asarray(run.objectives[1:6])  # the sweeps' free energies, then the batch objective
    assert np.all(np.diff(sweeps) >= -1e-9 * np.abs(sweeps).max())
    # the batch objective of the θ the sweeps ended with is at least their last free energy
    assert run.objectives[5] >= sweeps[-2] - 1e-9 * abs(sweeps[-2])


def test_the_free_energy_of_the_kept_sums_is_the_likelihood_bound():
    """A block's kept (compact) sums give the same free energy as its full statistics."""
    X, _ = make_faces(120, (24, 28), (9, 8), noise=1.0, random_state=1)
    src = ArraySource(X, (9, 8), chunk_size=30)
    ex = LocalExecutor(src, EngineConfig())
    model = FaceMixture((9, 8))
    p = auto_start(src, model, np.random.default_rng(0))
    st = model.e_step(ex, p)
    new, _ = model.m_step(st, p)
    assert free_energy(FaceMixture.compact(st), new) == pytest.approx(free_energy(st, new), rel=1e-12)
    assert free_energy(st, p) == pytest.approx(st.loglik, rel=1e-12)


@pytest.mark.parametrize("n_faces", [1, 2])
def test_incremental_ends_at_the_batch_answer(n_faces, monkeypatch):
    monkeypatch.setattr(schedule_module, "BLOCK_IMAGES", 100)
    X, truth = make_faces(600, (32, 36), (12, 10), n_faces=n_faces, noise=1.0, random_state=4)
    kw = dict(n_faces=n_faces, random_state=0, n_init=1, tol=1e-10, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = FaceEM((12, 10), algorithm="batch", **kw).fit(X)
        incr = FaceEM((12, 10), algorithm="incremental", **kw).fit(X)
    assert incr.algorithm_ == "incremental" and batch.algorithm_ == "batch"
    assert np.array_equal(incr.predict(X), batch.predict(X))
    scale = np.abs(batch.faces_).max()
    assert np.abs(incr.faces_ - batch.faces_).max() <= 1e-6 * scale
    assert incr.lower_bound_ == pytest.approx(batch.lower_bound_, rel=1e-9)


def test_auto_picks_incremental_for_large_stacks_only(monkeypatch):
    X, _ = make_faces(300, (20, 24), (8, 8), noise=0.5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert FaceEM((8, 8), n_init=1).fit(X).algorithm_ == "batch"
        monkeypatch.setattr(schedule_module, "INCREMENTAL_MIN_IMAGES", 200)
        monkeypatch.setattr(schedule_module, "BLOCK_IMAGES", 50)
        assert FaceEM((8, 8), n_init=1).fit(X).algorithm_ == "incremental"


def test_progress_reports_images_per_second_after_every_block(monkeypatch):
    monkeypatch.setattr(schedule_module, "BLOCK_IMAGES", 50)
    X, _ = make_faces(300, (20, 24), (8, 8), noise=1.0, random_state=0)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FaceEM((8, 8), algorithm="incremental", n_init=1, callback=seen.append).fit(X)
    blocks = [i for i in seen if "block" in i]
    assert len(blocks) >= 6  # every block of the first sweep at least
    assert all(i["images"] > 0 and i["seconds"] > 0 and np.isfinite(i["objective"]) for i in blocks)


def test_the_first_sweep_does_not_pin_images_to_positions_seen_in_earlier_blocks(monkeypatch):
    """Far more positions than images per block: an A fitted to the first blocks alone would be zero where
    the later blocks' faces are, and those images would stay at wrong positions for good."""
    monkeypatch.setattr(schedule_module, "BLOCK_IMAGES", 60)
    X, truth = make_faces(480, (48, 56), (12, 12), noise=0.2, prior="uniform", random_state=7)
    kw = dict(random_state=0, n_init=1, shift_escape=False)
    batch = FaceEM((12, 12), algorithm="batch", **kw).fit(X)
    incr = FaceEM((12, 12), algorithm="incremental", **kw).fit(X)
    assert len(np.unique(truth.positions, axis=0)) > 5 * 60  # far more positions than a block holds
    assert np.mean((batch.predict(X) == truth.positions).all(axis=1)) >= 0.99
    assert np.mean((incr.predict(X) == batch.predict(X)).all(axis=1)) >= 0.99


@pytest.mark.parametrize("max_memory", [None, 200_000])
def test_the_blocks_kept_sums_stay_within_their_share_of_max_memory(max_memory, monkeypatch):
    """Each block keeps N, S_F and XC; under a small budget the blocks grow so that their sums fit it."""
    monkeypatch.setattr(schedule_module, "BLOCK_IMAGES", 25)
    X, _ = make_faces(300, (20, 24), (8, 8), noise=1.0, random_state=0)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FaceEM((8, 8), algorithm="incremental", n_init=1, max_iter=2, max_memory=max_memory,
               callback=seen.append).fit(X)
    n_blocks = {i["n_blocks"] for i in seen if "block" in i}.pop()
    per_block = 8 * (13 * 17 + 8 * 8 + 2 * 20 * 24)  # N, S_F, XC and SX, float64
    if max_memory is None:
        assert n_blocks >= 300 // (2 * 25)  # blocks of about 25 images (whole chunks)
    else:
        assert 2 <= n_blocks < 300 // (2 * 25)
        assert n_blocks * per_block <= schedule_module.BLOCK_SHARE * max_memory


def test_restarts_checkpoints_and_resume_with_incremental_em(tmp_path, monkeypatch):
    """Several runs of incremental EM keep the best; a run stopped after its sweeps resumes from its
    checkpoint by batch iterations and ends at the uninterrupted run's answer."""
    monkeypatch.setattr(schedule_module, "BLOCK_IMAGES", 50)
    X, truth = make_faces(400, (28, 32), (10, 9), n_faces=2, noise=1.0, random_state=6)
    kw = dict(n_faces=2, algorithm="incremental", tol=1e-9, max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multi = FaceEM((10, 9), n_init=3, **kw).fit(X)
        assert multi.algorithm_ == "incremental" and len(multi.runs_) == 3
        assert multi.lower_bound_ == max(r["objectives"][-1] for r in multi.runs_)
        whole = FaceEM((10, 9), n_init=1, **kw).fit(X)
        path = tmp_path / "run.npz"
        stopped = FaceEM((10, 9), n_init=1, checkpoint=path, checkpoint_every=1, **{**kw, "max_iter": 3}).fit(X)
        assert not stopped.converged_
        resumed = FaceEM.resume(path)
        resumed.set_params(max_iter=300)
        resumed.fit(X)
    assert resumed.converged_
    assert np.array_equal(resumed.predict(X), whole.predict(X))
    assert np.abs(resumed.faces_ - whole.faces_).max() <= 1e-6 * np.abs(whole.faces_).max()
