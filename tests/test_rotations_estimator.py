"""Rotations through FaceEM: the bound never decreases with the sparse search, the answers, the API."""

import warnings

import numpy as np
import pytest

from emface import ConvergenceWarning, FaceEM
from emface.em import EMSettings, run_em
from emface.engine.rotations import Rotations, angle_grid
from emface.executor import EngineConfig, LocalExecutor
from emface.engine.records import Params
from emface.rotation_model import RotationMixture
from emface.sources import ArraySource


def _object(h, rng, Ch=1):
    i, j = np.mgrid[:h, :h]
    F = np.sin(i / 2.0) * np.cos(j / 2.7) + (i > h / 2) + np.exp(-((i - 0.3 * h) ** 2 + (j - 0.7 * h) ** 2) / 6.0)
    F = F[None] if Ch == 1 else np.stack([F, F[::-1], F.T], axis=0)[:Ch]
    return F + 0.2 * rng.normal(size=F.shape)


def _stack(K, H, h, R, noise, seed, *, Ch=1, C=1):
    """Images that turn: (X (K, H, H[, Ch]), faces (C, Ch, h, h), angle index, corners, labels)."""
    rng = np.random.default_rng(seed)
    angles = angle_grid(R)
    faces = np.stack([_object(h, rng, Ch) if c == 0 else _object(h, rng, Ch)[..., ::-1] for c in range(C)])
    rot = Rotations((H, H), (h, h), angles)
    T = rot.templates(faces)
    B = 0.3 * rng.normal(size=(Ch, H, H))
    r = rng.integers(R, size=K)
    lab = rng.integers(C, size=K)
    pos = rng.integers(H - h + 1, size=(K, 2))
    X = np.repeat(B[None], K, axis=0)
    for k in range(K):
        X[k][:, pos[k, 0]:pos[k, 0] + h, pos[k, 1]:pos[k, 1] + h][:, rot.mask] = T[lab[k], r[k]][:, rot.mask]
    X = X + noise * rng.normal(size=X.shape)
    X = X[:, 0] if Ch == 1 else np.moveaxis(X, 1, -1)
    return X, faces, r, pos, lab


def _fit(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*covered by a face")
        return est.fit(X)


def _assert_monotone(history):
    h = np.asarray(history)
    assert len(h) >= 2
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h).max()), np.diff(h).min()


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_bound_never_decreases_with_the_sparse_search(hard, alpha):
    X, *_ = _stack(40, 20, 8, 12, 0.3, seed=1)
    src = ArraySource(X, (8, 8), standardize=False, chunk_size=16)
    ex = LocalExecutor(src, EngineConfig(backend="numpy"))
    model = RotationMixture((8, 8), hard=hard, prior_smoothing=alpha, angles=angle_grid(12), sweep_every=4)
    rng = np.random.default_rng(0)
    start = model.start(Params(rng.normal(size=(8, 8)), X.mean(0), 1.0, np.full((13, 13), 1 / 169)))
    run = run_em(ex, model, start, EMSettings(max_iter=25, tol=0.0, accelerate=True))
    _assert_monotone(run.objectives)
    assert model.sparse_passes > 0 and model.full_passes > 1  # both kinds of pass were exercised


@pytest.mark.parametrize("hard", [False, True])
def test_estimator_bound_never_decreases_colour_two_faces(hard):
    X, *_ = _stack(40, 18, 8, 8, 0.7, seed=2, Ch=2, C=2)
    est = _fit(FaceEM((8, 8), n_faces=2, rotations=8, hard=hard, init="random", n_init=1, max_iter=20, tol=0.0,
                      random_state=0), X)
    _assert_monotone(est.runs_[est.best_run_]["objectives"])


def test_recovers_positions_angles_and_face():
    X, faces, r, pos, _ = _stack(120, 28, 12, 12, 0.4, seed=3)
    est = _fit(FaceEM((12, 12), rotations=12, random_state=0), X)
    s = est.posterior_summary()
    assert np.mean(np.abs(s.positions - pos).max(axis=1) <= 1) >= 0.98
    # angles relative to the fitted face: one global offset
    off = (s.angles - est.angles_[r]) % 360
    assert np.mean(off == np.bincount((off / 30).astype(int)).argmax() * 30.0) >= 0.98
    assert s.angles.shape == (120,) and est.angle_prior_.shape == (12,)
    assert abs(est.angle_prior_.sum() - 1) < 1e-12


def test_sparse_and_full_search_agree():
    X, *_ = _stack(60, 22, 10, 12, 0.4, seed=4)
    a = _fit(FaceEM((10, 10), rotations=12, angle_search="sparse", random_state=0, n_init=1), X)
    b = _fit(FaceEM((10, 10), rotations=12, angle_search="full", random_state=0, n_init=1), X)
    assert np.array_equal(a.posterior_summary().angles, b.posterior_summary().angles)
    assert np.array_equal(a.positions_, b.positions_)
    assert abs(a.lower_bound_ - b.lower_bound_) <= 1e-6 * abs(b.lower_bound_)


def test_save_load_predict_sample(tmp_path):
    X, *_ = _stack(50, 20, 8, 6, 0.4, seed=5)
    est = _fit(FaceEM((8, 8), rotations=6, random_state=0, max_iter=10), X)
    path = tmp_path / "m.npz"
    est.save(path)
    back = FaceEM.load(path)
    assert np.array_equal(back.angles_, est.angles_) and np.allclose(back.angle_prior_, est.angle_prior_)
    assert np.array_equal(back.predict(X), est.predict(X))
    assert np.array_equal(back.posterior_summary(X).angles, est.posterior_summary(X).angles)
    q = est.predict_proba(X[:4])
    assert q.shape == (4, 6, 13, 13) and np.allclose(q.sum(axis=(1, 2, 3)), 1.0)
    S, pos, ang = est.sample(5, random_state=0)
    assert S.shape == (5, 20, 20) and pos.shape == (5, 2) and set(ang) <= set(est.angles_)


def test_loaded_file_with_a_bad_angle_prior_is_refused(tmp_path):
    from emface.errors import ModelFileError

    X, *_ = _stack(30, 16, 6, 4, 0.4, seed=6)
    est = _fit(FaceEM((6, 6), rotations=4, random_state=0, max_iter=3), X)
    path = tmp_path / "m.npz"
    est.save(path)
    data = dict(np.load(path))
    data["angle_prior"] = np.array([0.5, 0.5, 0.5, -0.5])
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(ModelFileError, match="angle_prior"):
        FaceEM.load(tmp_path / "bad.npz")


def test_checkpoint_and_resume(tmp_path):
    X, *_ = _stack(40, 18, 8, 6, 0.5, seed=7)
    ck = tmp_path / "ck.npz"
    _fit(FaceEM((8, 8), rotations=6, random_state=0, max_iter=4, tol=0.0, checkpoint=ck, checkpoint_every=2,
                n_init=1), X)
    est = FaceEM.resume(ck)
    assert est.angles_ is not None
    _fit(est, X)
    assert est.n_iter_ >= 4 and est.posterior_summary().angles.shape == (40,)


def test_out_of_core_memmap_matches_in_memory(tmp_path):
    X, *_ = _stack(40, 18, 8, 6, 0.5, seed=8)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[:] = X
    mm.flush()
    a = _fit(FaceEM((8, 8), rotations=6, random_state=0, n_init=1), X)
    b = _fit(FaceEM((8, 8), rotations=6, random_state=0, n_init=1, max_memory="2MB"),
             np.load(tmp_path / "x.npy", mmap_mode="r"))
    assert np.array_equal(a.positions_, b.positions_)
    assert np.allclose(a.face_, b.face_, atol=1e-8)


@pytest.mark.parametrize("kw, match", [
    (dict(face_shape=(8, 9)), "square"),
    (dict(face_shape="auto"), "square face_shape"),
    (dict(empty_frames=True), "empty_frames"),
    (dict(backend="torch"), "torch"),
    (dict(rotations=0), "rotations"),
    (dict(rotations=[0, 360]), "distinct"),
    (dict(angle_search="some"), "angle_search"),
    (dict(brightness="per_channel"), "not per channel"),
])
def test_refusals(kw, match):
    X, *_ = _stack(10, 16, 8, 4, 0.5, seed=9)
    args = dict(face_shape=(8, 8), rotations=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        FaceEM(args.pop("face_shape"), **args).fit(X)


def test_dask_is_refused():
    da = pytest.importorskip("dask.array")
    X, *_ = _stack(10, 16, 8, 4, 0.5, seed=9)
    with pytest.raises(ValueError, match="Dask"):
        FaceEM((8, 8), rotations=4).fit(da.from_array(X, chunks=(5, 16, 16)))
