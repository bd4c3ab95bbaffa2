"""emface fit --brightness: the option from the table, and the gain and offset columns of positions.csv."""

import csv
import subprocess
import sys

import numpy as np

from emface.datasets import make_faces


def _run(*args):
    return subprocess.run([sys.executable, "-m", "emface.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_fit_writes_gain_and_offset_columns(tmp_path):
    X, truth = make_faces(60, (24, 24), (8, 8), noise=0.0, random_state=0)
    s = float(truth.faces.std())
    rng = np.random.default_rng(1)
    a = rng.uniform(0.7, 1.3, 60)[:, None, None]
    X = a * X + rng.uniform(-s, s, 60)[:, None, None] + rng.normal(0.0, s, X.shape)
    np.save(tmp_path / "s.npy", X)
    r = _run("fit", tmp_path / "s.npy", "--face-shape", "8x8", "--out", tmp_path / "out", "--brightness",
             "per-image", "--seed", "0", "-q")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "out" / "positions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 and "gain" in rows[0] and "offset" in rows[0]
    gains = np.array([float(row["gain"]) for row in rows])
    assert abs(gains.mean() - 1.0) < 1e-6 and np.corrcoef(gains, a.ravel())[0, 1] > 0.9
    bad = _run("fit", tmp_path / "s.npy", "--face-shape", "8x8", "--out", tmp_path / "o2", "--brightness", "never")
    assert bad.returncode != 0 and "brightness" in bad.stderr
