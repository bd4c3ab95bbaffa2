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
