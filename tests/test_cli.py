"""End-to-end tests of the emface command on tiny generated stacks."""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import optional
from emface.datasets import make_faces

K, IMG, FACE = 40, (24, 30), (10, 8)


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "emface.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def stack():
    X, truth = make_faces(K, IMG, FACE, noise=0.5, random_state=1)
    return X, truth


def _check_outputs(out, truth, names=None):
    for f in ("face.png", "background.png", "prior.png", "objective.png", "positions.csv", "model.npz",
              "report.html"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    with open(out / "positions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == K
    assert list(rows[0]) == ["index", "file", "face", "row", "col", "probability", "face_probability", "entropy",
                             "misfit", "no_face_probability", "empty"]
    pos = np.array([[int(r["row"]), int(r["col"])] for r in rows])
    assert np.mean((pos == truth.positions).all(axis=1)) >= 0.95
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert all(r["face"] == "0" for r in rows)
    if names is not None:
        assert [r["file"] for r in rows] == names
    from emface import FaceEM

    est = FaceEM.load(out / "model.npz")
    assert est.face_.shape == FACE and est.background_.shape == IMG
    with np.load(out / "model.npz") as z:
        assert "history" in z.files
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "http://" not in html and "https://" not in html


def test_fit_npy(tmp_path, stack):
    X, truth = stack
    np.save(tmp_path / "s.npy", X)
    r = run("fit", tmp_path / "s.npy", "--face-shape", "10x8", "--out", tmp_path / "out", "--seed", 0)
    assert r.returncode == 0, r.stderr
    assert "run 1" in r.stderr and "objective" in r.stderr  # the progress bar
    _check_outputs(tmp_path / "out", truth)


def test_fit_quiet_hard_options(tmp_path, stack):
    X, truth = stack
    np.save(tmp_path / "s.npy", X)
    r = run("fit", tmp_path / "s.npy", "--face-shape", "10x8", "--out", tmp_path / "o", "--hard", "--restarts", 2,
            "--smoothing", 4, "--max-iter", 30, "--tol", 1e-4, "--init", "random", "--dtype", "float32", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout == ""
    with np.load(tmp_path / "o" / "model.npz") as z:
        import json

        meta = json.loads(str(z["meta"]))
    assert meta["settings"]["hard"] is True and meta["settings"]["n_init"] == 2
    assert meta["settings"]["prior_smoothing"] == 4.0 and meta["settings"]["dtype"] == "float32"


def test_fit_npz_and_hwk_layout(tmp_path, stack):
    X, truth = stack
    np.savez(tmp_path / "s.npz", images=np.moveaxis(X, 0, -1))
    r = run("fit", tmp_path / "s.npz", "--face-shape", "10x8", "--out", tmp_path / "out", "--layout", "hwk", "-q")
    assert r.returncode == 0, r.stderr
    _check_outputs(tmp_path / "out", truth)


def test_fit_multipage_tiff(tmp_path, stack):
    tifffile = optional("tifffile")
    X, truth = stack
    tifffile.imwrite(tmp_path / "s.tif", X.astype(np.float32))
    r = run("fit", tmp_path / "s.tif", "--face-shape", "10x8", "--out", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    _check_outputs(tmp_path / "out", truth)


def test_fit_folder_of_frames_in_natural_order(tmp_path, stack):
    iio = optional("imageio.v3")
    X, truth = stack
    frames = tmp_path / "frames"
    frames.mkdir()
    u8 = np.clip(np.round(X), 0, 255).astype(np.uint8)
    names = [f"frame{k}.png" for k in range(K)]  # frame2 before frame10: natural order
    for k, n in enumerate(names):
        # colour frames are converted to grey with --grey
        iio.imwrite(frames / n, np.repeat(u8[k][..., None], 3, axis=2))
    r = run("fit", frames, "--face-shape", "10x8", "--out", tmp_path / "out", "-q", "--grey")
    assert r.returncode == 0, r.stderr
    _check_outputs(tmp_path / "out", truth, names)


def test_fit_video(tmp_path, stack):
    optional("av")  # the video extra; imageio's pyav plugin writes the file
    import imageio.v3 as iio

    X, truth = make_faces(K, (48, 64), (20, 16), noise=0.3, random_state=2)
    u8 = np.clip(np.round(X), 0, 255).astype(np.uint8)
    iio.imwrite(tmp_path / "v.avi", np.repeat(u8[..., None], 3, axis=3), plugin="pyav", codec="ffv1", fps=10)
    r = run("fit", tmp_path / "v.avi", "--face-shape", "20x16", "--out", tmp_path / "out", "-q", "--grey")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "out" / "positions.csv") as fh:
        rows = list(csv.DictReader(fh))
    pos = np.array([[int(r["row"]), int(r["col"])] for r in rows])
    assert len(rows) == K and np.mean((pos == truth.positions).all(axis=1)) >= 0.9


def test_predict_and_generate(tmp_path):
    r = run("generate", "--out", tmp_path / "g.npy", "--n-images", 30, "--image-shape", "24x30",
            "--face-shape", "10x8", "--noise", 0.4, "--seed", 5, "--prior", "band", "-q")
    assert r.returncode == 0, r.stderr
    X = np.load(tmp_path / "g.npy")
    with np.load(tmp_path / "g.truth.npz") as t:
        truth_pos = t["positions"]
        assert t["faces"].shape == (1, 10, 8) and t["prior"].shape == (15, 23)
    assert X.shape == (30, 24, 30)
    r = run("fit", tmp_path / "g.npy", "--face-shape", "10x8", "--out", tmp_path / "m", "-q")
    assert r.returncode == 0, r.stderr
    r = run("predict", tmp_path / "m" / "model.npz", tmp_path / "g.npy", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    pos = np.array([[int(r["row"]), int(r["col"])] for r in rows])
    assert np.mean((pos == truth_pos).all(axis=1)) >= 0.95


def test_several_faces_end_to_end(tmp_path):
    """generate --faces 3, fit --faces 3: every face with its weight in the report, a face column, predict."""
    r = run("generate", "--out", tmp_path / "g.npy", "--n-images", 150, "--image-shape", "30x34",
            "--face-shape", "12x10", "--faces", 3, "--noise", 0.5, "--seed", 2, "-q")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "g.truth.npz") as t:
        labels, truth_pos = t["labels"], t["positions"]
        assert t["faces"].shape == (3, 12, 10)
    r = run("fit", tmp_path / "g.npy", "--face-shape", "12x10", "--faces", 3, "--out", tmp_path / "m", "-q",
            "--seed", 0)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "m"
    for f in ("face_0.png", "face_1.png", "face_2.png", "faces.png", "prior.png", "report.html"):
        assert (out / f).is_file()
    html = (out / "report.html").read_text()
    assert "face 0: weight" in html and "face 2: weight" in html and "<h2>Faces</h2>" in html
    r = run("predict", out / "model.npz", tmp_path / "g.npy", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    faces = np.array([int(r["face"]) for r in rows])
    pos = np.array([[int(r["row"]), int(r["col"])] for r in rows])
    # the same partition as the truth, whatever the faces' numbering
    pairs = set(zip(faces.tolist(), labels.tolist()))
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3
    assert np.mean((pos == truth_pos).all(axis=1)) >= 0.95


def test_colour_stays_colour(tmp_path):
    iio = optional("imageio.v3")
    r = run("generate", "--out", tmp_path / "g.npy", "--n-images", 60, "--image-shape", "24x30",
            "--face-shape", "10x8", "--colour", "--noise", 0.5, "--seed", 3, "-q", "--dtype", "uint8")
    assert r.returncode == 0, r.stderr
    X = np.load(tmp_path / "g.npy")
    assert X.shape == (60, 24, 30, 3)
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(len(X)):  # RGBA frames: the alpha channel is dropped with a note
        iio.imwrite(frames / f"{k}.png", np.concatenate([X[k], np.full((24, 30, 1), 255, np.uint8)], axis=2))
    r = run("fit", frames, "--face-shape", "10x8", "--out", tmp_path / "o", "--seed", 0)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "alpha channel is dropped" in ln]
    assert len(notes) == 1 and notes[0].startswith("emface: note:")
    face = iio.imread(tmp_path / "o" / "face.png")
    assert face.shape == (10, 8, 3)
    assert not np.array_equal(face[..., 0], face[..., 2])  # really in colour
    bg = iio.imread(tmp_path / "o" / "background.png")
    assert bg.shape == (24, 30, 3)


def test_frames_with_different_channel_counts(tmp_path):
    iio = optional("imageio.v3")
    frames = tmp_path / "f"
    frames.mkdir()
    iio.imwrite(frames / "1.png", np.zeros((10, 12, 3), np.uint8))
    iio.imwrite(frames / "2.png", np.zeros((10, 12), np.uint8))
    _bad(run("fit", frames, "--face-shape", "4x4", "--out", tmp_path / "o"),
         "frames differ in channel count", "1.png is 10x12, 3 channels", "2.png is 10x12, grey")


def test_a_missing_extra_is_named_with_its_pip_install(tmp_path, stack):
    """Without the distributed extra, --scheduler says which pip install adds it: one line, exit 2."""
    np.save(tmp_path / "s.npy", stack[0])
    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def fake(name, globals=None, locals=None, fromlist=(), level=0):\n"
            "    if level == 0 and name.split('.')[0] in ('distributed', 'dask'):\n"
            "        raise ImportError('No module named ' + repr(name))\n"
            "    return real(name, globals, locals, fromlist, level)\n"
            "builtins.__import__ = fake\n"
            "from emface.cli import main\n"
            "main(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", code, "fit", str(tmp_path / "s.npy"), "--face-shape", "4x4",
                        "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:1"],
                       capture_output=True, text=True, timeout=120)
    _bad(r, "pip install 'emface[distributed]'")


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and "emface" in r.stdout
    r = run("fit", "--help")
    assert r.returncode == 0 and "--face-shape" in r.stdout


# ------------------------------------------------------------------------------ errors

def _bad(r, *phrases):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def test_error_missing_file(tmp_path):
    _bad(run("fit", tmp_path / "nope.npy", "--face-shape", "4x4", "--out", tmp_path / "o"), "no such file")


def test_error_unreadable_file(tmp_path, stack):
    p = tmp_path / "locked.npy"
    np.save(p, stack[0])
    if os.geteuid() == 0:  # root reads anything: a dangling link is the unreadable file here
        p.unlink()
        p.symlink_to(tmp_path / "gone.npy")
        _bad(run("fit", p, "--face-shape", "4x4", "--out", tmp_path / "o"), "no such file")
    else:
        p.chmod(0)
        _bad(run("fit", p, "--face-shape", "4x4", "--out", tmp_path / "o"), "not readable")


def test_error_truncated_npy(tmp_path, stack):
    p = tmp_path / "t.npy"
    np.save(p, stack[0])
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _bad(run("fit", p, "--face-shape", "4x4", "--out", tmp_path / "o"), "truncated or damaged .npy")


def test_error_image_that_is_not_an_image(tmp_path):
    frames = tmp_path / "f"
    frames.mkdir()
    (frames / "a.png").write_text("this is not a picture")
    _bad(run("fit", frames, "--face-shape", "4x4", "--out", tmp_path / "o"), "not an image this tool can read")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _bad(run("fit", tmp_path / "b.png", "--face-shape", "4x4", "--out", tmp_path / "o"), "not an image")


def test_error_frames_of_different_sizes(tmp_path):
    iio = optional("imageio.v3")
    frames = tmp_path / "f"
    frames.mkdir()
    iio.imwrite(frames / "1.png", np.zeros((10, 12), np.uint8))
    iio.imwrite(frames / "2.png", np.zeros((10, 13), np.uint8))
    _bad(run("fit", frames, "--face-shape", "4x4", "--out", tmp_path / "o"),
         "frames differ in size", "1.png is 10x12", "2.png is 10x13")


def test_error_face_larger_than_frames(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack[0])
    _bad(run("fit", tmp_path / "s.npy", "--face-shape", "25x8", "--out", tmp_path / "o"),
         "face_shape=(25, 8) does not fit in images of shape (H, W)=(24, 30)")


@pytest.mark.parametrize("shape", ["10", "10x", "ax8", "0x8", "10x-8", "10x8x2"])
def test_error_malformed_face_shape(tmp_path, stack, shape):
    np.save(tmp_path / "s.npy", stack[0])
    _bad(run("fit", tmp_path / "s.npy", "--face-shape", shape, "--out", tmp_path / "o"),
         "--face-shape", "expected HxW with two positive integers")


def test_error_output_folder_cannot_be_written(tmp_path, stack):
    np.save(tmp_path / "s.npy", stack[0])
    (tmp_path / "file").write_text("x")
    _bad(run("fit", tmp_path / "s.npy", "--face-shape", "4x4", "--out", tmp_path / "file" / "out"),
         "cannot create the output folder")


def test_error_unknown_option(tmp_path):
    _bad(run("fit", "x.npy", "--face-shape", "4x4", "--out", tmp_path, "--frobnicate"), "No such option")


def test_ctrl_c_writes_partial_results_and_exits_130(tmp_path):
    import signal

    X, truth = make_faces(3000, (64, 64), (24, 24), noise=1.5, random_state=0)
    np.save(tmp_path / "big.npy", X)
    proc = subprocess.Popen([sys.executable, "-m", "emface.cli", "fit", str(tmp_path / "big.npy"),
                             "--face-shape", "24x24", "--out", str(tmp_path / "out"), "--init", "random",
                             "--restarts", "3", "--tol", "0", "--max-iter", "1000"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            # as in a terminal: a shell runs background jobs (such as a CI script started
                            # with &) with SIGINT ignored, and Python keeps an ignored SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until the progress bar shows iterations, then press Ctrl-C
    import time

    buf = ""
    t0 = time.time()
    while time.time() - t0 < 120:
        ch = proc.stderr.read(1)
        if not ch:
            break
        buf += ch
        # an iteration done ("?it/s" shows before the first one)
        if "objective" in buf and re.search(r"\| *[1-9][0-9]*/1000 ", buf):
            break
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the fit went on for 120 s after Ctrl-C; its stderr ends:\n{err[-3000:]}")
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "interrupted" in err
    assert (tmp_path / "out" / "model.npz").is_file() and (tmp_path / "out" / "report.html").is_file()
    assert "interrupted" in (tmp_path / "out" / "report.html").read_text()
