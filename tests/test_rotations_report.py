"""Rotations in the report: faces upright inside their disc, the angle histogram, the worst frames' means."""

import warnings

import numpy as np
import pytest

from test_rotations_estimator import _fit, _stack
from emface import FaceEM
from emface.engine.rotations import Rotations, disc_mask

pytest.importorskip("matplotlib")


def test_pictures_of_a_rotation_fit(tmp_path):
    from emface.figures import _fitted_means, upright_faces, write_fit_pictures

    X, *_ = _stack(40, 18, 8, 6, 0.4, seed=11)
    est = _fit(FaceEM((8, 8), rotations=6, random_state=0, max_iter=8), X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pics = write_fit_pictures(str(tmp_path), est)
    assert {"angles.png", "face.png"} <= set(pics) and (tmp_path / "angles.png").exists()
    up = upright_faces(est.faces_)
    D = disc_mask(8)
    assert np.array_equal(up[0][D], est.faces_[0][D]) and np.allclose(up[0][~D], est.faces_[0][D].mean())
    # the worst frames' fitted means are the model's mean images: the face turned by the frame's angle
    s = est.posterior_summary()
    means = _fitted_means(est, s.faces[:3], s.positions[:3], s.angles[:3])
    T = Rotations((18, 18), (8, 8), est.angles_).templates(est.faces_[:, None])
    for k in range(3):
        (i, j), r = s.positions[k], int(np.flatnonzero(est.angles_ == s.angles[k])[0])
        want = est.background_.copy()
        win = want[i:i + 8, j:j + 8]
        win[D] = T[s.faces[k], r, 0][D]
        assert np.allclose(means[k], want, atol=1e-12)


def test_positions_csv_has_an_angle_column(tmp_path):
    import csv

    from emface.outputs import write_positions

    X, *_ = _stack(20, 16, 6, 4, 0.4, seed=12)
    est = _fit(FaceEM((6, 6), rotations=4, random_state=0, max_iter=5), X)
    s = est.posterior_summary()
    write_positions(str(tmp_path / "p.csv"), s)
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    col = rows[0].index("angle")
    assert [float(r[col]) for r in rows[1:]] == list(s.angles)
