"""Misfit z-scores and the "no face" class through FaceEM: warnings, predictions, the CSV, saving and loading."""

import csv
import warnings

import numpy as np
import pytest

from emface import FaceEM
from emface.datasets import NO_FACE, make_faces, make_faces_with_outliers
from emface.errors import MisfitWarning
from emface.io import write_positions


def _fit(est, X):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X)
    return [w for w in caught if issubclass(w.category, MisfitWarning)]


@pytest.mark.parametrize("colour,n_faces,noise", [(False, 1, 1.0), (True, 1, 0.5), (False, 2, 1.5)])
def test_clean_stack_has_z_near_standard_normal_and_no_warning(colour, n_faces, noise):
    X, truth = make_faces(400, (40, 44), (16, 14), n_faces=n_faces, colour=colour, noise=noise, random_state=3)
    est = FaceEM((16, 14), n_faces=n_faces, random_state=0)
    assert _fit(est, X) == []
    z = est.misfit_
    assert z.shape == (400,)
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2
    assert np.mean(z > 5) <= 0.005
    # the same numbers in the fit's own summary; a new pass judges the frames as new images (under the
    # predictive prior), which moves z only a little
    assert np.allclose(est.posterior_summary().misfit, z, rtol=0, atol=1e-12)
    assert np.allclose(est.posterior_summary(X).misfit, z, rtol=0, atol=0.05)


def test_bad_frames_stand_out_and_fit_warns():
    # a bad frame's excess residual is about the face's area times its contrast over the noise, against a
    # spread of sqrt(2 n): a face that covers a third of the frame makes every bad frame stand out
    X, truth, kinds = make_faces_with_outliers(400, (32, 34), (20, 18), no_face=0.04, other_object=0.03,
                                               noise=0.5, random_state=4)
    est = FaceEM((20, 18), random_state=0)
    caught = _fit(est, X)
    assert len(caught) == 1
    bad = kinds != 0
    n_high = int((est.misfit_ > 5).sum())
    assert f"{n_high} of 400 frames" in str(caught[0].message)
    assert "empty_frames=True" in str(caught[0].message)
    assert np.mean(est.misfit_[bad] > 5) >= 0.95
    assert np.mean(est.misfit_[~bad] > 5) <= 0.005
    summ = est.posterior_summary(X)
    worst = np.argsort(-summ.misfit)[: int(bad.sum())]
    assert bad[worst].mean() >= 0.95


def test_per_channel_noise_weighs_each_channel_by_its_own_s():
    X, _ = make_faces(300, (36, 40), (14, 12), colour=True, noise=0.8, random_state=5)
    X = X * np.array([1.0, 3.0, 0.3])  # channels of very different noise levels
    est = FaceEM((14, 12), noise="per_channel", random_state=0)
    assert _fit(est, X) == []
    assert 0.8 < est.misfit_.std() < 1.2 and np.mean(est.misfit_ > 5) <= 0.005


def _empty_stack(n=400, share=0.3, **kw):
    return make_faces_with_outliers(n, (32, 34), (16, 14), no_face=share, other_object=0.0, random_state=6, **kw)


def test_empty_frames_are_found_and_reported():
    X, truth, kinds = _empty_stack(noise=1.0)
    est = FaceEM((16, 14), empty_frames=True, random_state=0)
    assert _fit(est, X) == []
    empty = kinds == NO_FACE
    assert np.mean((est.labels_ == -1) == empty) >= 0.99
    assert np.mean((est.positions_[~empty] == truth.positions[~empty]).all(axis=1)) >= 0.99
    assert (est.positions_[est.labels_ == -1] == -1).all()
    assert abs(est.empty_weight_ - empty.mean()) < 0.03
    assert np.isclose(est.prior_.sum() + est.empty_weight_, 1.0)
    assert np.array_equal(est.predict_face(X), est.labels_)
    assert np.array_equal(est.predict(X), est.positions_)
    summ = est.posterior_summary()
    assert np.array_equal(summ.no_face_probability > 0.5, est.labels_ == -1)
    assert np.all(summ.face_probability[est.labels_ == -1] == summ.no_face_probability[est.labels_ == -1])
    assert np.mean(summ.misfit > 5) <= 0.005
    # the lower bound never decreases
    lb = np.asarray(est.lower_bounds_)
    assert (np.diff(lb) >= -1e-9 * np.abs(lb[1:])).all()


def test_without_empty_frames_a_stack_of_empty_frames_warns():
    X, truth, kinds = _empty_stack(noise=0.5)
    caught = _fit(FaceEM((16, 14), random_state=0), X)
    assert len(caught) == 1


@pytest.mark.parametrize("hard", [False, True])
def test_empty_frames_with_two_colour_faces(hard):
    X, truth, kinds = _empty_stack(n_faces=2, colour=True, noise=0.8)
    est = FaceEM((16, 14), n_faces=2, hard=hard, empty_frames=True, random_state=0)
    _fit(est, X)
    empty = kinds == NO_FACE
    assert np.mean((est.labels_ == -1) == empty) >= 0.99
    # faces agree with the truth up to their order
    a, b = truth.labels[~empty], est.labels_[~empty]
    assert max(np.mean(a == b), np.mean(a == 1 - b)) >= 0.99
    lb = np.asarray(est.lower_bounds_)
    assert (np.diff(lb) >= -1e-9 * np.abs(lb[1:])).all()


def test_empty_frames_by_incremental_em():
    X, truth, kinds = _empty_stack(n=1200, noise=1.0)
    est = FaceEM((16, 14), empty_frames=True, algorithm="incremental", random_state=0)
    _fit(est, X)
    assert est.algorithm_ == "incremental"
    empty = kinds == NO_FACE
    assert np.mean((est.labels_ == -1) == empty) >= 0.99
    assert abs(est.empty_weight_ - empty.mean()) < 0.03


def test_save_and_load_keep_the_empty_weight(tmp_path):
    X, truth, kinds = _empty_stack(noise=1.0)
    est = FaceEM((16, 14), empty_frames=True, random_state=0).fit(X)
    est.save(tmp_path / "m.npz")
    back = FaceEM.load(tmp_path / "m.npz")
    assert back.empty_frames is True
    assert back.empty_weight_ == est.empty_weight_
    assert np.array_equal(back.predict_face(X), est.predict_face(X))
    with np.load(tmp_path / "m.npz") as z:
        assert "empty_weight" in z.files
    plain = FaceEM((16, 14), random_state=0).fit(X[kinds != NO_FACE])
    plain.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as z:
        assert "empty_weight" not in z.files  # a model without the class: the file of before
    assert FaceEM.load(tmp_path / "p.npz").empty_weight_ is None


def test_positions_csv_has_misfit_and_no_face_columns(tmp_path):
    X, truth, kinds = _empty_stack(noise=1.0)
    est = FaceEM((16, 14), empty_frames=True, random_state=0).fit(X)
    summ = est.posterior_summary(X)
    write_positions(tmp_path / "p.csv", summ)
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(X)
    assert {"misfit", "no_face_probability", "empty"} <= set(rows[0])
    for k, r in enumerate(rows):
        assert np.isclose(float(r["misfit"]), summ.misfit[k], rtol=1e-3, atol=1e-3)
        assert int(r["empty"]) == int(summ.faces[k] == -1)
        if r["empty"] == "1":
            assert (r["face"], r["row"], r["col"]) == ("-1", "-1", "-1")
    assert sum(r["empty"] == "1" for r in rows) == int((kinds == NO_FACE).sum())


def test_sample_draws_frames_without_a_face_at_the_fitted_weight():
    X, truth, kinds = _empty_stack(noise=1.0)
    est = FaceEM((16, 14), empty_frames=True, random_state=0).fit(X)
    Xs, pos = est.sample(2000, random_state=1)
    empty = (pos == -1).all(axis=1)
    assert abs(empty.mean() - est.empty_weight_) < 0.04
    assert np.mean((est.predict(Xs) == pos).all(axis=1)) >= 0.97
