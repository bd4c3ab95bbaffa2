"""`emface fit --empty-frames`, and the misfit in positions.csv and in the report."""

import csv
import subprocess
import sys

import numpy as np

from emface.datasets import NO_FACE, OTHER_OBJECT, make_faces_with_outliers


def run(*args):
    return subprocess.run([sys.executable, "-m", "emface.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_fit_with_empty_frames_marks_them_and_reports_misfits(tmp_path):
    X, truth, kinds = make_faces_with_outliers(200, (32, 34), (20, 18), no_face=0.2, other_object=0.05,
                                               noise=0.5, random_state=2)
    np.save(tmp_path / "s.npy", X)
    r = run("fit", tmp_path / "s.npy", "--face-shape", "20x18", "--out", tmp_path / "o", "--seed", 0,
            "--empty-frames")
    assert r.returncode == 0, r.stderr
    assert "do not fit the model" in r.stderr  # the other objects: the MisfitWarning, on one line
    with open(tmp_path / "o" / "positions.csv") as fh:
        rows = list(csv.DictReader(fh))
    empty = np.array([r["empty"] == "1" for r in rows])
    z = np.array([float(r["misfit"]) for r in rows])
    assert (empty[kinds == NO_FACE]).all()
    assert all(rows[k]["face"] == "-1" and rows[k]["row"] == "-1" for k in np.flatnonzero(empty))
    assert (z[kinds == OTHER_OBJECT] > 5).all() and (z[kinds != OTHER_OBJECT] <= 5).all()
    html = (tmp_path / "o" / "report.html").read_text()
    assert "frames without a face" in html and "misfit z of each frame" in html
    assert "worst-fitting frames" in html
    assert (tmp_path / "o" / "misfit.png").stat().st_size > 0 and (tmp_path / "o" / "worst_frames.png").is_file()
    from emface import FaceEM

    est = FaceEM.load(tmp_path / "o" / "model.npz")
    assert est.empty_frames and 0.15 < est.empty_weight_ < 0.35


def test_the_misfit_pictures_replace_a_symlink_and_leave_its_target(tmp_path):
    X, truth, kinds = make_faces_with_outliers(60, (24, 26), (12, 10), no_face=0.1, other_object=0.0,
                                               noise=0.5, random_state=3)
    np.save(tmp_path / "s.npy", X)
    out = tmp_path / "o"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    for name in ("misfit.png", "worst_frames.png"):
        (out / name).symlink_to(target)
    r = run("fit", tmp_path / "s.npy", "--face-shape", "12x10", "--out", out, "--seed", 0, "-q")
    assert r.returncode == 0, r.stderr
    assert target.read_text() == "keep me"
    for name in ("misfit.png", "worst_frames.png"):
        assert not (out / name).is_symlink() and (out / name).read_bytes()[:4] == b"\x89PNG"


def test_render_and_sample_show_no_face_as_the_background():
    from emface import FaceEM
    from emface.datasets import render

    B = np.arange(12.0).reshape(3, 4)
    F = np.full((1, 2, 2), -1.0)
    X = render(B, F, np.array([0, -1]), np.array([[1, 2], [-1, -1]]))
    np.testing.assert_array_equal(X[1], B)
    assert (X[0, 1:3, 2:4] == -1).all() and X[0, 0, 0] == B[0, 0]
    Y, truth, kinds = make_faces_with_outliers(150, (24, 26), (12, 10), no_face=0.3, other_object=0.0,
                                               noise=0.5, random_state=4)
    est = FaceEM((12, 10), empty_frames=True, random_state=0).fit(Y)
    S, pos = est.sample(400, random_state=1)
    empty = (pos == -1).all(axis=1)
    assert 0.15 < empty.mean() < 0.45
    # an empty draw is the background plus noise: its mean over the draws is the background
    np.testing.assert_allclose(S[empty].mean(axis=0), est.background_, atol=6 * est.noise_std_ / np.sqrt(empty.sum()))
