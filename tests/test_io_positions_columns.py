"""positions.csv: the fixed columns, then one column for every other per-image field of the summary."""

import csv
import dataclasses

import numpy as np
import pytest

from emface.datasets import FacesTruth, load_truth, save_truth
from emface.estimator import PosteriorSummary
from emface.io import write_positions

FIXED = ["index", "file", "face", "row", "col", "probability", "face_probability", "entropy", "misfit",
         "no_face_probability", "empty"]


def _summary(K=5, seed=0, **extra):
    rng = np.random.default_rng(seed)
    base = dict(positions=rng.integers(0, 9, size=(K, 2)), faces=rng.integers(0, 3, size=K),
                probability=rng.random(K), entropy=rng.random(K), face_probability=rng.random(K),
                log_likelihood=rng.normal(size=K), misfit=rng.normal(size=K), no_face_probability=rng.random(K) / 10)
    if not extra:
        return PosteriorSummary(**base)
    fields = [(name, np.ndarray, dataclasses.field(default=None)) for name in extra]
    Extended = dataclasses.make_dataclass("Extended", fields, bases=(PosteriorSummary,))
    return Extended(**base, **extra)


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_fixed_columns_and_values(tmp_path):
    s = _summary()
    s.faces[1] = -1  # a frame without a face
    write_positions(tmp_path / "p.csv", s, names=[f"f{k}.png" for k in range(5)])
    rows = _read(tmp_path / "p.csv")
    assert rows[0] == FIXED  # log_likelihood is not a column
    for k, r in enumerate(rows[1:]):
        assert r[:5] == [str(k), f"f{k}.png", str(s.faces[k]), str(s.positions[k, 0]), str(s.positions[k, 1])]
        assert float(r[5]) == pytest.approx(s.probability[k], rel=1e-5)
        assert float(r[8]) == pytest.approx(s.misfit[k], rel=1e-3)
        assert float(r[9]) == pytest.approx(s.no_face_probability[k], rel=1e-5)
        assert r[10] == ("1" if s.faces[k] < 0 else "0")


def test_missing_optional_fields_keep_their_columns(tmp_path):
    s = dataclasses.replace(_summary(), misfit=None, no_face_probability=None)
    write_positions(tmp_path / "p.csv", s)
    rows = _read(tmp_path / "p.csv")
    assert rows[0] == FIXED
    assert all(r[8] == "nan" and float(r[9]) == 0 and r[1] == "" for r in rows[1:])


def test_every_other_per_image_field_is_a_column(tmp_path):
    K = 5
    gain = np.linspace(0.7, 1.3, K)
    offset = np.arange(K * 3, dtype=float).reshape(K, 3) / 7  # one per channel
    angle = np.array([0, 10, 20, 350, 180])
    s = _summary(K, gain=gain, offset=offset, angle=angle)
    write_positions(tmp_path / "p.csv", s)
    rows = _read(tmp_path / "p.csv")
    assert rows[0] == FIXED + ["gain", "offset_0", "offset_1", "offset_2", "angle"]
    table = np.array([[float(v) for v in r[-5:]] for r in rows[1:]])
    np.testing.assert_allclose(table[:, 0], gain, rtol=1e-5)
    np.testing.assert_allclose(table[:, 1:4], offset, rtol=1e-5)
    assert [r[-1] for r in rows[1:]] == [str(a) for a in angle]  # integers stay integers


def test_fields_that_are_not_per_image_are_not_columns(tmp_path):
    s = _summary(5, note=np.zeros(3), grid=np.zeros((2, 2, 2)))
    write_positions(tmp_path / "p.csv", s)
    assert _read(tmp_path / "p.csv")[0] == FIXED


def test_truth_file_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    t = FacesTruth(rng.random((1, 4, 3)), rng.random((9, 8)), 0.5, np.full((6, 6), 1 / 36),
                   rng.integers(0, 6, size=(10, 2)), np.zeros(10, dtype=int))
    save_truth(tmp_path / "t.truth.npz", t)
    with np.load(tmp_path / "t.truth.npz") as z:
        np.testing.assert_array_equal(z["face"], t.faces[0])  # one face: also under "face"
    back = load_truth(tmp_path / "t.truth.npz")
    for key in ("faces", "background", "prior", "positions", "labels"):
        np.testing.assert_array_equal(getattr(back, key), getattr(t, key))
    assert back.noise_std == t.noise_std
    np.savez(tmp_path / "other.npz", faces=t.faces)
    with pytest.raises(ValueError, match="not a truth file"):
        load_truth(tmp_path / "other.npz")
