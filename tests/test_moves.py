"""The escapes from local optima accept moves: each test fails when its move is switched off."""

import warnings

import numpy as np

from emface import FaceEM
from emface.datasets import make_faces


def _fit(X, face_shape, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FaceEM(face_shape, n_init=1, random_state=0, **kw).fit(X)


def test_shift_escape_moves_a_shifted_optimum_to_the_truth():
    """EM started from the face shifted by (1, 1) settles on the shifted optimum; the escape leaves it."""
    X, truth = make_faces(300, (40, 48), (20, 16), face="astronaut", background="brick", noise=1.0,
                          random_state=1)
    shifted = np.roll(truth.face, (-1, -1), axis=(0, 1))
    kw = dict(face_init=shifted, background_init=truth.background, noise_std_init=truth.noise_std)
    stuck = _fit(X, (20, 16), shift_escape=False, **kw)
    off = stuck.predict(X) - truth.positions
    assert np.mean((off == 0).all(axis=1)) < 0.05  # the shifted optimum: almost every face one pixel off
    assert np.array_equal(np.median(off, axis=0), [1, 1])
    freed = _fit(X, (20, 16), shift_escape=True, **kw)
    assert np.mean((freed.predict(X) == truth.positions).all(axis=1)) >= 0.99
    assert freed.lower_bound_ > stuck.lower_bound_ + 1.0  # per image: a real rise, not rounding
    assert any(m[0] == "shift" for m in freed.runs_[0]["moves"])
    assert np.abs(freed.face_ - truth.face).mean() < np.abs(stuck.face_ - truth.face).mean()


def test_split_and_merge_separates_two_faces_held_by_one():
    """Faces 0 and 1 start as one object and face 2 as the blend of the other two: split and merge fixes it."""
    X, truth = make_faces(600, (40, 48), (16, 14), n_faces=3, noise=0.7, random_state=4, background="coffee")
    F = truth.faces
    rng = np.random.default_rng(0)
    start = np.stack([F[0], F[0] + rng.normal(0, 1, F[0].shape), 0.5 * (F[1] + F[2])])
    kw = dict(n_faces=3, face_init=start, background_init=truth.background, noise_std_init=truth.noise_std)

    def partition_right(est):
        labels = est.posterior_summary().faces
        pairs = set(zip(labels.tolist(), truth.labels.tolist()))
        return len(pairs) == 3 and len({a for a, _ in pairs}) == 3

    stuck = _fit(X, (16, 14), split_merge=False, **kw)
    assert not partition_right(stuck)
    freed = _fit(X, (16, 14), split_merge=True, **kw)
    assert partition_right(freed)
    assert freed.lower_bound_ > stuck.lower_bound_ + 1.0
    assert any(m[0] == "split-merge" for m in freed.runs_[0]["moves"])
    assert np.allclose(np.sort(freed.weights_), np.sort(np.bincount(truth.labels) / len(X)), atol=0.01)
