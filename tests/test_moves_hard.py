"""The shift escape with several faces, one of them started shifted (issue 20, "the hard cases").

Each test starts EM from the true faces with the last face moved sideways, and
checks that the default escape brings it back; both fail with the escape of
emface 0.x before the fix (a reach of 2 pixels times 3 rounds, and a candidate
refitted from a subsample, whose noisier faces and background cost more than
fixing one face of several gains).
"""

import warnings

import numpy as np

from emface import FaceEM
from emface.datasets import FACES, make_faces


def _shifted_start(truth, dj):
    """The true faces, the last one moved `dj` columns to the right (its revealed strip: the background's mean)."""
    F = truth.faces.copy()
    F[-1] = np.roll(F[-1], dj, axis=1)
    F[-1][:, :dj] = truth.background.mean()
    return F


def _fit(X, truth, start, escape):
    C, h, w = truth.faces.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FaceEM((h, w), n_faces=C, face_init=start, shift_escape=escape, split_merge=False,
                      random_state=0).fit(X)


def _right(est, truth):
    s = est.posterior_summary()
    return (s.positions == truth.positions).all(axis=1) & (s.faces == truth.labels)


def test_two_tall_faces_one_shifted_far_sideways_is_moved_back():
    """Two full-height faces; the second starts 10 px off, beyond 3 rounds of 2-px steps: the walk reaches it."""
    X, truth = make_faces(400, (40, 60), (40, 24), n_faces=2, face=list(FACES[:2]), background="brick",
                          noise=0.6, random_state=0)
    start = _shifted_start(truth, 10)
    stuck = _fit(X, truth, start, escape=False)
    wrong = ~_right(stuck, truth)
    assert wrong.mean() > 0.3                       # the second face's images sit 10 px off
    assert np.all(truth.labels[wrong] == 1)
    freed = _fit(X, truth, start, escape=True)
    assert _right(freed, truth).mean() >= 0.99
    assert freed.lower_bound_ > stuck.lower_bound_ + 1.0
    moves = freed.runs_[0]["moves"]
    assert moves and moves[0][0] == "shift" and moves[0][1] == 1 and abs(moves[0][2][1]) > 2


def test_several_faces_at_low_snr_one_shifted_by_a_pixel_is_moved_back():
    """Three faces at noise 2x, far more images than the escape's subsample: the full-stack refit confirms the move."""
    X, truth = make_faces(1500, (40, 40), (14, 14), n_faces=3, face=list(FACES[:3]), background="brick",
                          noise=2.0, random_state=0)
    start = _shifted_start(truth, 1)
    stuck = _fit(X, truth, start, escape=False)
    last = truth.labels == 2
    assert _right(stuck, truth)[last].mean() < 0.2
    freed = _fit(X, truth, start, escape=True)
    assert _right(freed, truth)[last].mean() > 0.9
    assert freed.lower_bound_ > stuck.lower_bound_
    assert any(m[0] == "shift" and m[1] == 2 for m in freed.runs_[0]["moves"])
