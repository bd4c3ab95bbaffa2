"""The fit's report page, written by emface.report from the estimator's public results; truth files go
through the one atomic writer."""

import os

import numpy as np
import pytest

from emface import FaceEM
from emface.datasets import make_faces, save_truth
from emface.figures import write_fit_pictures, write_misfit_pictures
from emface.report import fit_summary_rows, write_fit_report


@pytest.fixture(scope="module")
def fitted():
    X, truth = make_faces(60, (16, 18), (6, 5), n_faces=2, random_state=0)
    est = FaceEM((6, 5), n_faces=2, random_state=0, max_iter=5, shift_escape=False).fit(X)
    return X, truth, est


def test_summary_rows_say_what_was_fitted(fitted):
    X, _, est = fitted
    summ = est.posterior_summary()
    rows = dict(fit_summary_rows(est, summ, "in.npy", X.shape, elapsed=1.5, interrupted=True))
    assert rows["input"] == "in.npy" and rows["images"] == "60 of 16x18"
    assert rows["faces"] == "2 of 6x5" and rows["converged"] == "no (interrupted)"
    assert rows["iterations"] == est.n_iter_ and rows["time"] == "1.5 s"
    assert float(rows["mean posterior probability of the chosen position"]) == pytest.approx(
        np.mean(summ.probability), abs=1e-4)


def test_fit_page_has_every_picture_and_table(fitted, tmp_path):
    X, _, est = fitted
    summ = est.posterior_summary()
    pics = write_fit_pictures(tmp_path, est)
    pics.update(write_misfit_pictures(tmp_path, est, X, summ))
    names = [f"f{k}.png" for k in range(len(X))]
    write_fit_report(tmp_path / "report.html", est, summ, pics, source="frames/", image_shape=X.shape, names=names,
                     elapsed=2.0)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img") == len(pics)  # every picture written is on the page
    for heading in ("Summary", "Faces", "Runs", "Positions (first 25 of 60; all in positions.csv)"):
        assert f"<h2>{heading}</h2>" in page
    assert "every face, heaviest first" in page and "f24.png" in page and "f25.png" not in page
    assert "interrupted" not in page


def test_truth_file_is_written_through_the_atomic_writer(fitted, tmp_path):
    _, truth, _ = fitted
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    link = tmp_path / "t.truth.npz"
    os.symlink(target, link)
    save_truth(link, truth)
    assert not link.is_symlink() and target.read_text() == "keep"  # the link is replaced, never followed
    with np.load(link) as z:
        np.testing.assert_array_equal(z["labels"], truth.labels)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".emface-tmp-")] == []


def test_summary_and_positions_name_the_brightness_and_angles_fitted(tmp_path):
    rng = np.random.default_rng(0)
    X, _ = make_faces(40, (20, 20), (8, 8), random_state=1)
    X = X * rng.uniform(0.7, 1.3, len(X))[:, None, None]
    est = FaceEM((8, 8), rotations=4, brightness="per_image", random_state=0, max_iter=3).fit(X)
    summ = est.posterior_summary()
    rows = dict(fit_summary_rows(est, summ, "in.npy", X.shape))
    assert rows["brightness"] == "a gain and an offset per frame"
    assert rows["angles"] == "4 (sparse search)"
    write_fit_report(tmp_path / "report.html", est, summ, write_fit_pictures(tmp_path, est), source="in.npy",
                     image_shape=X.shape)
    page = (tmp_path / "report.html").read_text()
    assert "<th>angle</th>" in page and "<th>gain</th>" in page and "<th>offset</th>" in page
    assert f"<td>{summ.angles[0]:.4g}</td>" in page and f"<td>{summ.gain[0]:.4g}</td>" in page


def test_summary_says_what_autos_test_chose(fitted):
    X, _, est = fitted
    rows = dict(fit_summary_rows(est, est.posterior_summary(), "in.npy", X.shape))
    test = est.brightness_test_
    if test is None:  # the test runs only on converged fits: this one stopped at max_iter
        assert rows["brightness"] == "fixed (the note's model)"
    else:
        p = test["p_value"]
        assert rows["brightness"].endswith(f"(chosen by the test: p = {p:.3g})" if p > 0 else
                                           "(chosen by the test: p below 1e-300)")
    assert "angles" not in rows


@pytest.mark.parametrize("p, text", [(0.0, "p below 1e-300"), (2.5e-7, "p = 2.5e-07")])
def test_summary_writes_an_underflowed_p_value_as_a_bound(p, text):
    from types import SimpleNamespace

    from emface.report import _pose_rows

    est = SimpleNamespace(brightness_="per_image", brightness_test_={"p_value": p}, angles_=None)
    assert dict(_pose_rows(est))["brightness"] == f"a gain and an offset per frame (chosen by the test: {text})"
