"""Choosing the face size: the criterion peaks at the true size, and the search finds it."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from emface import FaceEM
from emface.datasets import make_faces
from emface.face_size import profile_criterion, size_range


def _stack(K, image_shape, face_shape, noise, seed, n_faces=1, **kw):
    face = "astronaut" if n_faces == 1 else ["astronaut", "chelsea", "coffee"][:n_faces]
    return make_faces(K, image_shape, face_shape, n_faces=n_faces, face=face, background="camera", noise=noise,
                      random_state=seed, **kw)


def _criterion_around(X, truth, face_shape, top, bottom, left, right):
    """The criterion of the window whose sides moved by (top, bottom, left, right) pixels (out is +), with
    the corners held where the true face's are."""
    H, W = X.shape[1:3]
    h, w = face_shape[0] + top + bottom, face_shape[1] + left + right
    pos = truth.positions - np.array([top, left])
    pos[:, 0] = np.clip(pos[:, 0], 0, H - h)
    pos[:, 1] = np.clip(pos[:, 1], 0, W - w)
    return profile_criterion(X, (h, w), pos, truth.labels, n_faces=int(truth.labels.max()) + 1)


@pytest.mark.parametrize("n_faces,colour", [(1, False), (2, False), (1, True)])
def test_the_criterion_prefers_the_true_size_to_one_and_three_pixels_more_or_less(n_faces, colour):
    face_shape = (12, 10)
    X, truth = _stack(300, (40, 48), face_shape, 0.7, 3, n_faces=n_faces, colour=colour)
    best = _criterion_around(X, truth, face_shape, 0, 0, 0, 0)
    for d in (-3, -1, 1, 3):
        for side in range(4):  # top, bottom, left, right
            moves = [0, 0, 0, 0]
            moves[side] = d
            other = _criterion_around(X, truth, face_shape, *moves)
            assert best > other, (moves, best, other)


def test_the_criterion_prefers_a_full_height_face_to_a_shorter_one():
    face_shape = (36, 12)
    X, truth = _stack(300, (36, 50), face_shape, 0.7, 1)
    best = _criterion_around(X, truth, face_shape, 0, 0, 0, 0)
    for moves in [(0, -1, 0, 0), (0, -3, 0, 0), (-1, 0, 0, 0), (-3, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, -3),
                  (0, 0, 3, 0), (0, 0, -1, 0)]:
        assert best > _criterion_around(X, truth, face_shape, *moves), moves


@pytest.mark.parametrize("image_shape,face_shape,K", [((48, 56), (16, 12), 400), ((40, 60), (40, 20), 300)])
def test_auto_finds_the_size_and_the_positions(image_shape, face_shape, K):
    X, truth = _stack(K, image_shape, face_shape, 0.6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM("auto", random_state=0).fit(X)
    assert est.face_shape_ == face_shape
    assert est.face_.shape == face_shape
    assert np.mean((est.predict(X) == truth.positions).all(axis=1)) >= 0.99
    tried = {tuple(s["shape"]) for s in est.face_shape_scores_}
    assert face_shape in tried and len(tried) > 3
    best = max(est.face_shape_scores_, key=lambda s: s["score"])
    assert tuple(best["shape"]) == face_shape


def test_a_range_bounds_the_search():
    X, truth = _stack(300, (48, 56), (16, 12), 0.6, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM(((10, 20), (8, 11)), random_state=0).fit(X)
    # the full-resolution stage stays in the range (the coarse one works on shrunk images, in steps of the
    # shrink factor)
    shapes = np.array([s["shape"] for s in est.face_shape_scores_ if s["stage"] == "fine"])
    assert len(shapes) > 3
    assert (shapes[:, 0] >= 10).all() and (shapes[:, 0] <= 20).all()
    assert (shapes[:, 1] >= 8).all() and (shapes[:, 1] <= 11).all()
    # the true width is outside the range: the widest allowed, and the true height
    assert est.face_shape_ == (16, 11)


def test_size_range():
    assert size_range("auto", (100, 60)) == ((5, 100), (3, 60))
    assert size_range(((0, 200), (10, 20)), (100, 60)) == ((1, 100), (10, 20))


def test_cli_face_shape_auto_and_ranges(tmp_path):
    X, truth = _stack(200, (40, 48), (12, 10), 0.5, 4)
    np.save(tmp_path / "s.npy", X)
    for spec in ("auto", "8-16x6-14"):
        out = tmp_path / spec
        r = subprocess.run([sys.executable, "-m", "emface.cli", "fit", tmp_path / "s.npy", "--face-shape", spec,
                            "--out", out, "-q"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        with np.load(out / "model.npz") as z:
            assert z["faces"].shape[-2:] == (12, 10)
        assert (out / "face_size.png").exists()
    r = subprocess.run([sys.executable, "-m", "emface.cli", "fit", tmp_path / "s.npy", "--face-shape", "16-8x6",
                        "--out", tmp_path / "bad", "-q"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "ranges such as 20-60x20-60" in r.stderr
