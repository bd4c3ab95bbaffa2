"""Rotations with per-image brightness through FaceEM: the bound never decreases (soft and hard EM, colour,
two faces, the sparse angle search), "auto" chooses, the outputs, new images, files and the CLI."""

import csv
import subprocess
import sys
import warnings

import numpy as np
import pytest

from emface import FaceEM
from emface.em import EMSettings, run_em
from emface.engine.records import Params
from emface.engine.rotations import Rotations, angle_grid
from emface.executor import EngineConfig, LocalExecutor
from emface.rotation_model import RotationMixture
from emface.sources import ArraySource


def _object(h, rng, Ch=1):
    i, j = np.mgrid[:h, :h]
    F = np.sin(i / 2.0) * np.cos(j / 2.7) + (i > h / 2) + np.exp(-((i - 0.3 * h) ** 2 + (j - 0.7 * h) ** 2) / 6.0)
    F = F[None] if Ch == 1 else np.stack([F, F[::-1], F.T], axis=0)[:Ch]
    return F + 0.2 * rng.normal(size=F.shape)


def _stack(K, H, h, R, noise, seed, *, Ch=1, C=1, gain=0.3, offset=1.0):
    """Turned objects with a gain in 1 ± gain and an offset in ±offset·noise per image:
    (X, angle index, corners, gains, offsets)."""
    rng = np.random.default_rng(seed)
    angles = angle_grid(R)
    faces = np.stack([_object(h, rng, Ch) if c == 0 else _object(h, rng, Ch)[..., ::-1] for c in range(C)])
    rot = Rotations((H, H), (h, h), angles)
    T = rot.templates(faces)
    B = 0.3 * rng.normal(size=(Ch, H, H))
    r = rng.integers(R, size=K)
    lab = rng.integers(C, size=K)
    pos = rng.integers(H - h + 1, size=(K, 2))
    a = rng.uniform(1 - gain, 1 + gain, K)
    b = rng.uniform(-offset, offset, K) * noise
    X = np.repeat(B[None], K, axis=0)
    for k in range(K):
        X[k][:, pos[k, 0]:pos[k, 0] + h, pos[k, 1]:pos[k, 1] + h][:, rot.mask] = T[lab[k], r[k]][:, rot.mask]
    X = a[:, None, None, None] * X + b[:, None, None, None] + noise * rng.normal(size=X.shape)
    X = X[:, 0] if Ch == 1 else np.moveaxis(X, 1, -1)
    return X, r, pos, a, b


def _fit(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X)


def _assert_monotone(history):
    h = np.asarray(history)
    assert len(h) >= 2
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h).max()), np.diff(h).min()


@pytest.mark.parametrize("hard", [False, True])
def test_bound_never_decreases_with_brightness_and_the_sparse_search(hard):
    X, *_ = _stack(40, 20, 8, 12, 0.3, seed=1)
    src = ArraySource(X, (8, 8), standardize=False, chunk_size=16)
    ex = LocalExecutor(src, EngineConfig(backend="numpy"))
    model = RotationMixture((8, 8), hard=hard, angles=angle_grid(12), sweep_every=4, brightness_groups=1,
                            n_images=40)
    rng = np.random.default_rng(0)
    start = model.start(Params(rng.normal(size=(8, 8)), X.mean(0), 1.0, np.full((13, 13), 1 / 169)))
    run = run_em(ex, model, start, EMSettings(max_iter=25, tol=0.0, accelerate=True))
    _assert_monotone(run.objectives)
    assert model.sparse_passes > 0 and model.full_passes > 1
    assert run.params.gains.shape == (40, 1) and abs(run.params.gains.mean() - 1.0) < 1e-12


@pytest.mark.parametrize("hard", [False, True])
def test_estimator_bound_never_decreases_colour_two_faces(hard):
    X, *_ = _stack(40, 18, 8, 8, 0.7, seed=2, Ch=2, C=2)
    est = _fit(FaceEM((8, 8), n_faces=2, rotations=8, hard=hard, brightness="per_image", init="random", n_init=1,
                      max_iter=20, tol=0.0, random_state=0), X)
    _assert_monotone(est.runs_[est.best_run_]["objectives"])
    assert est.brightness_ == "per_image" and est.gains_.shape == (40,)


def test_recovers_positions_angles_and_brightness():
    X, r, pos, a, b = _stack(120, 28, 12, 12, 0.4, seed=3)
    est = _fit(FaceEM((12, 12), rotations=12, brightness="per_image", random_state=0), X)
    s = est.posterior_summary()
    assert np.mean(np.abs(s.positions - pos).max(axis=1) <= 1) >= 0.98
    off = (s.angles - est.angles_[r]) % 360
    assert np.mean(off == np.bincount((off / 30).astype(int)).argmax() * 30.0) >= 0.98
    # gains up to the mean-1 normalisation; offsets up to the common level the model cannot pin down
    assert np.corrcoef(s.gain, a)[0, 1] > 0.95 and np.corrcoef(s.offset, b)[0, 1] > 0.9
    assert np.array_equal(s.gain, est.gains_) and np.array_equal(s.offset, est.offsets_)


def test_auto_chooses():
    X, *_ = _stack(80, 22, 10, 8, 0.4, seed=4)
    est = _fit(FaceEM((10, 10), rotations=8, random_state=0), X)
    assert est.brightness_ == "per_image" and est.brightness_test_["significant"]
    X, *_ = _stack(80, 22, 10, 8, 0.4, seed=4, gain=0.0, offset=0.0)
    est = _fit(FaceEM((10, 10), rotations=8, random_state=0), X)
    assert est.brightness_ == "fixed" and not est.brightness_test_["significant"] and est.gains_ is None


def test_new_images_save_load_and_csv(tmp_path):
    X, r, pos, a, b = _stack(60, 20, 8, 6, 0.3, seed=5)
    est = _fit(FaceEM((8, 8), rotations=6, brightness="per_image", random_state=0), X[:50])
    path = tmp_path / "m.npz"
    est.save(path)
    back = FaceEM.load(path)
    assert np.array_equal(back.gains_, est.gains_) and np.array_equal(back.offsets_, est.offsets_)
    assert back._theta.gains is not None and back.angles_ is not None
    new = back.posterior_summary(X[50:])
    # new images' (a, b) are fitted from a = 1, b = 0: their gains follow the truth's, relative to the fit's
    ratio = new.gain / a[50:]
    assert np.std(ratio) / np.mean(ratio) < 0.1
    assert np.array_equal(back.predict(X[50:]), new.positions)
    q = back.predict_proba(X[50:54])
    assert q.shape == (4, 6, 13, 13) and np.allclose(q.sum(axis=(1, 2, 3)), 1.0)
    # the training images judged as such start from their fitted (a, b): one more ECM update moves them little
    train = est.posterior_summary(X[:50], as_training=True)
    assert np.abs(train.gain - est.gains_).max() < 1e-3


def test_per_channel_is_refused():
    X, *_ = _stack(10, 16, 8, 4, 0.5, seed=9, Ch=2)
    with pytest.raises(ValueError, match="per image, not per channel"):
        FaceEM((8, 8), rotations=4, brightness="per_channel").fit(X)


def test_cli_writes_gain_offset_and_angle_columns(tmp_path):
    X, *_ = _stack(40, 18, 8, 6, 0.3, seed=6)
    np.save(tmp_path / "x.npy", X)
    r = subprocess.run([sys.executable, "-m", "emface.cli", "fit", str(tmp_path / "x.npy"), "--face-shape", "8x8",
                        "--rotations", "6", "--brightness", "per-image", "--out", str(tmp_path / "out"),
                        "--max-iter", "10", "--seed", "0", "-q"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "out" / "positions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and {"angle", "gain", "offset"} <= set(rows[0])
    assert abs(np.mean([float(row["gain"]) for row in rows]) - 1.0) < 1e-6


def test_checkpoint_resume_and_out_of_core(tmp_path):
    X, *_ = _stack(40, 18, 8, 6, 0.4, seed=7)
    ck = tmp_path / "ck.npz"
    _fit(FaceEM((8, 8), rotations=6, brightness="per_image", random_state=0, max_iter=4, tol=0.0, checkpoint=ck,
                checkpoint_every=2, n_init=1), X)
    est = FaceEM.resume(ck)
    assert est.gains_ is not None and est.gains_.shape == (40,)
    _fit(est, X)
    assert est.n_iter_ >= 4 and est.brightness_ == "per_image"
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mm[:] = X
    mm.flush()
    a = _fit(FaceEM((8, 8), rotations=6, brightness="per_image", random_state=0, n_init=1, max_iter=15), X)
    b = _fit(FaceEM((8, 8), rotations=6, brightness="per_image", random_state=0, n_init=1, max_iter=15,
                    max_memory="2MB"), np.load(tmp_path / "x.npy", mmap_mode="r"))
    assert np.array_equal(a.positions_, b.positions_)
    assert np.allclose(a.gains_, b.gains_, atol=1e-8) and np.allclose(a.face_, b.face_, atol=1e-6)
