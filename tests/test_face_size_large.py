"""Auto face size for a face that fills most of the frame (issue 20, "the hard cases")."""

import warnings

import numpy as np

from emface import FaceEM
from emface.datasets import make_faces


def test_a_face_filling_85_percent_of_the_frame_is_sized_exactly():
    """A 40x47 face in 47x55 frames: the coarse grid of sizes 1, 5, 23 of a side chose a 13x54 strip."""
    X, truth = make_faces(300, (47, 55), (40, 47), face="rocket", background="camera", noise=1.0, random_state=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM("auto", random_state=2).fit(X)
    assert est.face_shape_ == (40, 47)
    assert np.mean((est.positions_ == truth.positions).all(axis=1)) >= 0.99


def test_the_coarse_grid_is_geometric_in_the_margin_too():
    from emface.face_size import _axis_grid

    # one side of 23 shrunk pixels: sizes 1, 5, 23 as before, and 19 (a margin of 4) in the gap
    assert _axis_grid(1, 23, 23, 3) == [1, 5, 19, 23]
    for lo, hi, side in [(1, 23, 23), (2, 10, 10), (3, 40, 40), (2, 30, 40)]:
        g = _axis_grid(lo, hi, side, 3)
        assert g == sorted(set(g)) and g[0] == lo and g[-1] == hi
        # no two neighbours further apart than 4.7x in size or in margin (side - size)
        for a, b in zip(g, g[1:]):
            assert b / a <= 5.0 or (side - a + 1) / (side - b + 1) <= 5.0
