"""Every numbered case of issue 21 ("untrusted files and half-written results") as a CLI run.

Used by tests/test_cli_untrusted.py (which asserts each case's outcome) and by
benchmarks/cli_errors.py (which prints the table). A case builds its crafted
input in a fresh folder, names the command line, and says what it must give:

- ``"error"``: exit 2, exactly one stderr line (run with ``-q``), no ``--out``
  folder left behind when the case created none;
- ``"ok"``: exit 0, and its own check passes;
- ``"either"``: a correct result (exit 0 and the check) or exit 2 with one line.

Whatever the outcome, no file outside the case's outputs changes, no
``.emface-tmp-*`` file is left, and the command ends within its timeout.
``owner`` says which branch of issue 21's work fixes the case.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import numpy as np

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
FIT = ("--restarts", "1", "--max-iter", "5", "--seed", "0", "-q")


@dataclass
class Case:
    item: str  # the item number
    name: str
    build: object  # build(case_dir, shared) -> dict(args=[...], outputs=[...], check=callable or None, ...)
    expect: str = "error"  # "error", "ok" or "either"
    owner: str = "outputs-cli"
    timeout: float = 120.0
    needs: tuple = ()  # "tmpfs", "fifo", "h5py", "tifffile", "av"
    marks: tuple = ()  # pytest marks by name: "slow" for the cases that fit for long (or encode a video)


# ----------------------------------------------------------------------------- shared inputs

def make_shared(folder):
    """A small stack with its truth, a fitted model and a fitted colour-free model file."""
    from emface import FaceEM
    from emface.datasets import make_faces

    os.makedirs(folder, exist_ok=True)
    X, truth = make_faces(60, (24, 28), (10, 8), noise=0.3, random_state=0)
    np.save(os.path.join(folder, "stack.npy"), X)
    np.save(os.path.join(folder, "positions.npy"), truth.positions)
    est = FaceEM((10, 8), n_init=1, max_iter=10, random_state=0).fit(X)
    est.save(os.path.join(folder, "model.npz"))
    return folder


def _model_arrays(shared):
    with np.load(os.path.join(shared, "model.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _crafted_model(d, shared, **change):
    arrays = _model_arrays(shared)
    for k, fn in change.items():
        arrays[k] = fn(arrays[k])
    path = os.path.join(d, "crafted.npz")
    np.savez(path, **arrays)
    return path


def _predict(d, shared, model):
    return dict(args=["predict", model, os.path.join(shared, "stack.npy"), "--out", os.path.join(d, "p.csv"), "-q"],
                outputs=["p.csv"])


def _fit(d, inp, *extra, out="out"):
    return dict(args=["fit", inp, "--face-shape", "10x8", "--out", os.path.join(d, out), *FIT, *extra],
                outputs=[out])


def _read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _positions_right(shared, csv_path, n=None):
    truth = np.load(os.path.join(shared, "positions.npy"))[:n]
    rows = _read_rows(csv_path)
    got = np.array([[int(r["row"]), int(r["col"])] for r in rows])
    return len(rows) == len(truth) and float(np.mean((got == truth).all(axis=1))) >= 0.9


# ----------------------------------------------------------------------------- the cases

def c_prior_grid(d, s):
    # the model: the prior's P*Q values in a (1, P*Q, 1) grid (41*41 = 1681 for its 64-pixel frames)
    return _predict(d, s, _crafted_model(d, s, prior=lambda a: a.reshape(1, -1, 1)))


def c_h5_external(d, s):
    import h5py

    secret = os.path.join(d, "secret.bin")
    data = np.random.default_rng(1).normal(size=(20, 24, 28))
    with open(secret, "wb") as fh:
        fh.write(data.tobytes())
    path = os.path.join(d, "ext.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=data.shape, dtype=np.float64, external=[(secret, 0, data.nbytes)])
    return _fit(d, path + ":x")


def _tiff_pages(d, shapes):
    import tifffile

    path = os.path.join(d, "pages.tif")
    rng = np.random.default_rng(2)
    with tifffile.TiffWriter(path) as tw:
        for shp in shapes:
            tw.write(rng.integers(0, 255, size=shp, dtype=np.uint8), contiguous=False)
    return path


def c_tiff_100_pages(d, s):
    path = _tiff_pages(d, [(24, 28)] * 100)
    r = _fit(d, path)
    r["check"] = lambda d: len(_read_rows(os.path.join(d, "out", "positions.csv"))) == 100
    return r


def c_tiff_page_sizes(d, s):
    return _fit(d, _tiff_pages(d, [(24, 28)] * 5 + [(20, 28)] * 5))


def _earlier_result(d, s, out="out"):
    """A finished fit in d/out (run here through the API: the case's command is the second run)."""
    from emface import FaceEM
    from emface.io import write_positions

    X = np.load(os.path.join(s, "stack.npy"))
    os.makedirs(os.path.join(d, out), exist_ok=True)
    shutil.copy(os.path.join(s, "model.npz"), os.path.join(d, out, "model.npz"))
    est = FaceEM.load(os.path.join(d, out, "model.npz"))
    write_positions(os.path.join(d, out, "positions.csv"), est.posterior_summary(X))
    with open(os.path.join(d, out, "report.html"), "w") as fh:
        fh.write("<html>earlier</html>")


def c_disk_full(d, s):
    """A 2 MB tmpfs holding an earlier result, nearly filled: the new fit cannot be written."""
    mnt = os.path.join(d, "tmpfs")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], check=True, capture_output=True)
    _earlier_result(mnt, s)
    before = {n: _digest(os.path.join(mnt, "out", n)) for n in os.listdir(os.path.join(mnt, "out"))}
    st = os.statvfs(mnt)
    with open(os.path.join(mnt, "filler"), "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 40_000))

    def check(d):
        from emface import FaceEM

        names = sorted(os.listdir(os.path.join(mnt, "out")))
        same = all(_digest(os.path.join(mnt, "out", n)) == before[n] for n in before)
        FaceEM.load(os.path.join(mnt, "out", "model.npz"))  # the earlier result still loads
        return names == sorted(before) and same

    r = dict(args=["fit", os.path.join(s, "stack.npy"), "--face-shape", "10x8", "--out",
                   os.path.join(mnt, "out"), *FIT], outputs=["tmpfs"], check_error=check,
             cleanup=lambda: subprocess.run(["umount", mnt], capture_output=True))
    return r


def c_checkpoint_fails(d, s):
    os.mkdir(os.path.join(d, "ck"))
    os.mkdir(os.path.join(d, "ck", "run.npz"))  # a folder where the checkpoint file should go: every write fails
    r = _fit(d, os.path.join(s, "stack.npy"), "--checkpoint", os.path.join(d, "ck", "run.npz"))
    # at least checkpoint_every (10) iterations: a random start, and no stop on a small change
    r["args"] = [a for a in r["args"] if a != "-q"] + ["--max-iter", "12", "--tol", "0", "--init", "random"]
    r["check"] = lambda d: (os.path.isfile(os.path.join(d, "out", "model.npz"))
                            and not any(n.startswith(".emface-tmp") for n in os.listdir(os.path.join(d, "ck"))))
    r["stderr_has"] = "could not write the checkpoint"
    return r


def c_killed_checkpoint(d, s):
    dead = _dead_pid()
    os.mkdir(os.path.join(d, "out"))
    with open(os.path.join(d, "out", f".emface-tmp-{dead}-x1y2.npz"), "wb") as fh:
        fh.write(b"half a checkpoint")
    r = _fit(d, os.path.join(s, "stack.npy"))
    r["check"] = lambda d: not any(n.startswith(".emface-tmp") for n in os.listdir(os.path.join(d, "out")))
    return r


def c_symlinks(d, s):
    names = ("positions.csv", "model.npz", "report.html", "objective.png")
    os.mkdir(os.path.join(d, "out"))
    for name in names:
        victim = os.path.join(d, f"victim-{name}")
        with open(victim, "w") as fh:
            fh.write("not emface's")
        os.symlink(victim, os.path.join(d, "out", name))
    r = _fit(d, os.path.join(s, "stack.npy"))
    r["check"] = lambda d: all(not os.path.islink(os.path.join(d, "out", n)) and os.path.isfile(
        os.path.join(d, "out", n)) for n in names)
    return r  # the victims are outside --out: the common check asserts they are unchanged


def c_two_fits(d, s):
    r = _fit(d, os.path.join(s, "stack.npy"))
    os.mkdir(os.path.join(d, "out"))
    r["hold_lock"] = os.path.join(d, "out")
    r["stderr_has"] = "another emface run"
    r["keep_out"] = True
    return r


def c_predict_nan(d, s):
    X = np.load(os.path.join(s, "stack.npy"))
    X[3, 4, 5] = np.nan
    X[7, 0, 0] = np.inf
    np.save(os.path.join(d, "nan.npy"), X)
    return dict(args=["predict", os.path.join(s, "model.npz"), os.path.join(d, "nan.npy"), "--out",
                      os.path.join(d, "p.csv"), "-q"], outputs=["p.csv"])


def _bad_model(**change):
    return lambda d, s: _predict(d, s, _crafted_model(d, s, **change))


def _mixed_depth(d, s):
    import imageio.v3 as iio

    folder = os.path.join(d, "frames")
    os.mkdir(folder)
    X = np.load(os.path.join(s, "stack.npy"))
    u8 = np.clip(np.round((X - X.min()) / np.ptp(X) * 255), 0, 255).astype(np.uint8)
    for k in range(20):
        img = u8[k] if k != 7 else u8[k].astype(np.uint16) * 257
        iio.imwrite(os.path.join(folder, f"f{k:02d}.png"), img)
    r = _fit(d, folder)
    r["args"] = [a if a != "5" else "30" for a in r["args"]]
    # refused, or read on one scale: then the positions are those of the 8-bit frames
    r["check"] = lambda d: _positions_right(s, os.path.join(d, "out", "positions.csv"), 20)
    return r


def _fifo(where):
    def build(d, s):
        fifo = os.path.join(d, "f.npy")
        if where == "input":
            os.mkfifo(fifo)
            return _fit(d, fifo)
        if where == "frame":
            import imageio.v3 as iio

            folder = os.path.join(d, "frames")
            os.mkdir(folder)
            for k in range(5):
                iio.imwrite(os.path.join(folder, f"f{k}.png"), np.full((24, 28), 10 * k, np.uint8))
            os.mkfifo(os.path.join(folder, "f9.png"))
            return _fit(d, folder)
        os.mkfifo(os.path.join(d, "bg.png"))
        return dict(args=["generate", "--out", os.path.join(d, "g.npy"), "--n-images", "5", "--image-shape",
                          "24x28", "--face-shape", "10x8", "--background", os.path.join(d, "bg.png"), "-q"],
                    outputs=["g.npy", "g.truth.npz"])
    return build


def _scaled(factor):
    def build(d, s):
        X = np.load(os.path.join(s, "stack.npy"))
        np.save(os.path.join(d, "scaled.npy"), X * factor)
        r = _fit(d, os.path.join(d, "scaled.npy"))
        r["args"] = [a if a != "5" else "30" for a in r["args"]]  # --max-iter 30: a converged fit
        r["check"] = lambda d: _positions_right(s, os.path.join(d, "out", "positions.csv"))
        return r
    return build


def c_max_memory_huge(d, s):
    r = _fit(d, os.path.join(s, "stack.npy"), "--max-memory", "1e400GB")
    r["check"] = lambda d: os.path.isfile(os.path.join(d, "out", "model.npz"))  # or read as "no bound"
    return r


def c_fps_inf(d, s):
    return dict(args=["generate", "--video", os.path.join(d, "v.mp4"), "--fps", "inf", "--n-images", "5",
                      "--image-shape", "24x28", "--face-shape", "10x8", "-q"], outputs=["v.mp4", "v.truth.npz"])


def c_auto_thin(d, s):
    X = np.random.default_rng(3).normal(size=(30, 1, 64))
    np.save(os.path.join(d, "thin.npy"), X)
    r = _fit(d, os.path.join(d, "thin.npy"))
    r["args"][r["args"].index("10x8")] = "auto"
    r["check"] = lambda d: os.path.isfile(os.path.join(d, "out", "model.npz"))
    return r


def c_model_bad_shape(d, s):
    return _predict(d, s, _crafted_model(d, s, faces=lambda a: a.reshape(a.shape[0], -1)))


def c_model_bad_meta(d, s):
    return _predict(d, s, _crafted_model(d, s, meta=lambda a: np.array("{not json")))


def c_model_bad_crc(d, s):
    src = os.path.join(s, "model.npz")
    path = os.path.join(d, "crc.npz")
    data = bytearray(open(src, "rb").read())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("faces.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200  # inside the member's data
    data[start] ^= 0xFF
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    return _predict(d, s, path)


def c_model_npy(d, s):
    path = os.path.join(d, "model.npy")
    np.save(path, np.zeros((3, 3)))
    return _predict(d, s, path)


def c_model_empty(d, s):
    path = os.path.join(d, "empty.npz")
    open(path, "wb").close()
    r = _predict(d, s, path)
    r["stderr_lacks"] = "interrupted"
    return r


def c_model_bad_zip(d, s):
    path = os.path.join(d, "bad.npz")
    with open(path, "wb") as fh:
        fh.write(b"PK\x03\x04" + b"\x00" * 100)
    return _predict(d, s, path)


def c_tiff_truncated(d, s):
    import tifffile

    path = os.path.join(d, "t.tif")
    tifffile.imwrite(path, np.random.default_rng(4).integers(0, 255, size=(20, 24, 28), dtype=np.uint8))
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    return _fit(d, path)


def c_h5_group(d, s):
    import h5py

    path = os.path.join(d, "g.h5")
    with h5py.File(path, "w") as f:
        f.create_group("grp").create_dataset("x", data=np.zeros((5, 24, 28)))
    return _fit(d, path + ":grp")


def c_npz_bomb(d, s):
    path = os.path.join(d, "bomb.npz")
    np.savez_compressed(path, x=np.zeros((400, 250, 250)))  # 200 MB of zeros in ~200 KB
    r = _fit(d, path, "--max-memory", "20MB")
    # refused, or streamed a slice of images at a time: every image fitted
    r["check"] = lambda d: len(_read_rows(os.path.join(d, "out", "positions.csv"))) == 400
    return r


def c_tiff_bomb(d, s):
    import tifffile

    path = os.path.join(d, "bomb.tif")
    tifffile.imwrite(path, np.zeros((200, 400, 400), np.uint8), compression="zlib")  # 32 MB in ~40 KB
    r = _fit(d, path, "--max-memory", "8MB")
    r["check"] = lambda d: len(_read_rows(os.path.join(d, "out", "positions.csv"))) == 200
    return r


def c_mkv_truncated(d, s):
    from emface.video import write_synthetic_video

    path = os.path.join(d, "v.mkv")
    write_synthetic_video(path, 60, (24, 28), (10, 8), random_state=0, fps=25)
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: int(len(data) * 0.6)])
    r = _fit(d, path)
    r["args"] = [a for a in r["args"] if a != "-q"]
    # either refused, or fitted with a note that says the video was cut short
    r["check"] = lambda d: True
    r["stderr_has_if_ok"] = "note"
    return r


def c_stale_faces(d, s):
    os.mkdir(os.path.join(d, "out"))
    for name in ("face_0.png", "face_3.png", "faces.png"):
        with open(os.path.join(d, "out", name), "wb") as fh:
            fh.write(b"an earlier run's picture")
    r = _fit(d, os.path.join(s, "stack.npy"))
    r["check"] = lambda d: not ({"face_0.png", "face_3.png", "faces.png"} & set(os.listdir(os.path.join(d, "out"))))
    return r


def c_faces_1000(d, s):
    X = np.load(os.path.join(s, "stack.npy"))
    np.save(os.path.join(d, "k200.npy"), np.concatenate([X] * 4)[:200])
    r = _fit(d, os.path.join(d, "k200.npy"), "--faces", "1000")
    r["check"] = lambda d: os.path.isfile(os.path.join(d, "out", "model.npz"))  # refused, or done in time
    return r


def c_generate_name(d, s):
    r = dict(args=["generate", "--out", os.path.join(d, "o1"), "--n-images", "5", "--image-shape", "24x28",
                   "--face-shape", "10x8"], outputs=["o1.npy", "o1.truth.npz"])
    r["check"] = lambda d: os.path.isfile(os.path.join(d, "o1.npy")) and not os.path.exists(os.path.join(d, "o1"))
    r["stderr_has"] = "o1.npy"
    return r


def c_new_out_input_error(d, s):
    return _fit(d, os.path.join(d, "missing.npy"))


CASES = [
    Case("1", "predict: model prior of shape (1, 1681, 1)", c_prior_grid, owner="model-trust"),
    Case("2", "HDF5 dataset with external storage", c_h5_external, owner="input-trust", needs=("h5py",)),
    Case("3", "TIFF of 100 pages written page by page", c_tiff_100_pages, expect="ok", owner="input-trust",
         needs=("tifffile",), marks=("slow",)),
    Case("3", "TIFF whose pages differ in size", c_tiff_page_sizes, owner="input-trust", needs=("tifffile",)),
    Case("4", "disk full (2 MB tmpfs) over an earlier result", c_disk_full, needs=("tmpfs",)),
    Case("4", "checkpoint cannot be written: warn, the fit goes on", c_checkpoint_fails, expect="ok"),
    Case("4", "temporary file of a killed run in --out", c_killed_checkpoint, expect="ok"),
    Case("5", "positions.csv, model.npz, report.html, objective.png in --out are symlinks", c_symlinks,
         expect="ok"),
    Case("6", "a second fit into a folder a fit holds", c_two_fits),
    Case("7", "predict: NaN and inf pixels", c_predict_nan, owner="model-trust"),
    Case("7", "predict: model with NaN noise", _bad_model(noise_std=lambda a: a * np.nan), owner="model-trust"),
    Case("7", "predict: model with zero noise", _bad_model(noise_std=lambda a: a * 0), owner="model-trust"),
    Case("7", "predict: model with negative noise", _bad_model(noise_std=lambda a: -a), owner="model-trust"),
    Case("7", "predict: model with a NaN prior", _bad_model(prior=lambda a: a * np.nan), owner="model-trust"),
    Case("7", "predict: model with a negative prior", _bad_model(prior=lambda a: -a), owner="model-trust"),
    Case("8", "a 16-bit PNG among 8-bit frames", _mixed_depth, expect="either", owner="input-trust"),
    Case("9", "a FIFO as the input", _fifo("input"), owner="input-trust", timeout=30, needs=("fifo",)),
    Case("9", "a FIFO as a frame in a folder", _fifo("frame"), owner="input-trust", timeout=30, needs=("fifo",)),
    Case("9", "a FIFO as generate --background", _fifo("background"), owner="input-trust", timeout=30,
         needs=("fifo",)),
    Case("10", "data x 1e200", _scaled(1e200), expect="either", owner="model-trust", marks=("slow",)),
    Case("10", "data x 1e-200", _scaled(1e-200), expect="either", owner="model-trust", marks=("slow",)),
    Case("10", "--max-memory 1e400GB", c_max_memory_huge, expect="either", owner="model-trust"),
    Case("10", "generate --fps inf", c_fps_inf, owner="model-trust"),
    Case("10", "--face-shape auto on 1x64 images", c_auto_thin, expect="either", owner="model-trust"),
    Case("11", "model with a bad shape", c_model_bad_shape, owner="model-trust"),
    Case("11", "model with a bad meta", c_model_bad_meta, owner="model-trust"),
    Case("11", "model with a bad CRC", c_model_bad_crc, owner="model-trust"),
    Case("11", "a .npy given as the model", c_model_npy, owner="model-trust"),
    Case("11", "an empty model file (not 'interrupted')", c_model_empty),
    Case("11", "a model that is a bad zip", c_model_bad_zip),
    Case("11", "a truncated TIFF", c_tiff_truncated, owner="input-trust", needs=("tifffile",)),
    Case("11", "HDF5 file.h5:group", c_h5_group, owner="input-trust", needs=("h5py",)),
    Case("12", ".npz zip bomb over --max-memory", c_npz_bomb, expect="either", owner="input-trust"),
    Case("12", "compressed TIFF over --max-memory", c_tiff_bomb, expect="either", owner="input-trust",
         needs=("tifffile",)),
    Case("13", "a truncated MKV", c_mkv_truncated, expect="either", owner="input-trust", needs=("av",),
         marks=("slow",)),
    Case("13", "stale face_*.png from a run with more faces", c_stale_faces, expect="ok"),
    Case("13", "--faces 1000 with K = 200", c_faces_1000, expect="either", owner="model-trust", timeout=60,
         marks=("slow",)),
    Case("13", "generate --out o1 names the file it writes", c_generate_name, expect="ok"),
    Case("13", "an input error with a new --out leaves no folder", c_new_out_input_error),
]


# ----------------------------------------------------------------------------- running a case

def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def snapshot(folder, skip=()):
    """{relative path: (kind, digest or link target)} of everything under `folder` but `skip`."""
    out = {}
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        dirs[:] = [x for x in dirs if os.path.normpath(os.path.join(rel_root, x)) not in skip
                   and not os.path.ismount(os.path.join(root, x))]
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel in skip:
                continue
            full = os.path.join(root, name)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isfile(full):
                out[rel] = ("file", _digest(full))
            else:
                out[rel] = ("other", None)
    return out


def available(need):
    if need == "fifo":
        return hasattr(os, "mkfifo")
    if need == "tmpfs":
        return tmpfs_mountable()
    try:
        __import__(need)
        return True
    except ImportError:
        return False


_TMPFS = {}


def tmpfs_mountable():
    """Whether this process may mount a tmpfs (root on Linux, outside a container that forbids it)."""
    if "ok" not in _TMPFS:
        import tempfile

        d = tempfile.mkdtemp()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True)
            _TMPFS["ok"] = r.returncode == 0
            if r.returncode == 0:
                subprocess.run(["umount", d], capture_output=True)
        except OSError:
            _TMPFS["ok"] = False
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(d)
    return _TMPFS["ok"]


@dataclass
class Result:
    returncode: int
    stderr: str
    lines: list
    left: list  # files left under the case folder that the case did not declare, or partial outputs
    changed: list  # files outside the outputs that changed
    check: bool  # the case's own check (None when it has none)
    timed_out: bool


def run_case(case, case_dir, shared):
    """Build and run one case; return what it did (the caller judges it)."""
    spec = case.build(case_dir, shared)
    outputs = set(spec.get("outputs", []))
    before = snapshot(case_dir, skip=outputs)
    before_shared = snapshot(shared)
    out_existed = {o: os.path.lexists(os.path.join(case_dir, o)) for o in outputs}
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "emface.cli", *map(str, spec["args"])]
    lock = None
    try:
        if spec.get("hold_lock"):
            from emface.outputs import OutputFolder

            lock = OutputFolder(spec["hold_lock"]).__enter__()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=case.timeout, env=env, cwd=case_dir)
            rc, err, timed_out = r.returncode, r.stderr, False
        except subprocess.TimeoutExpired as exc:
            rc, err, timed_out = None, (exc.stderr or b"").decode("utf-8", "replace") if isinstance(
                exc.stderr, bytes) else (exc.stderr or ""), True
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    check = None
    try:
        if rc == 0 and spec.get("check"):
            check = bool(spec["check"](case_dir))
        elif rc == 2 and spec.get("check_error"):
            check = bool(spec["check_error"](case_dir))
        if spec.get("stderr_has"):
            check = (check is not False) and spec["stderr_has"] in err
        if spec.get("stderr_lacks"):
            check = (check is not False) and spec["stderr_lacks"] not in err
        if rc == 0 and spec.get("stderr_has_if_ok"):
            check = (check is not False) and spec["stderr_has_if_ok"] in err
    except Exception as exc:  # a check that cannot even read the result fails
        check = False
        lines.append(f"(check failed: {type(exc).__name__}: {exc})")
    left = [rel for rel in snapshot(case_dir) if os.path.basename(rel).startswith(".emface-tmp")]
    if rc != 0 and not spec.get("keep_out"):  # a refused run leaves no output that was not there before
        left += [o for o in outputs if not out_existed[o] and os.path.lexists(os.path.join(case_dir, o))]
    after = snapshot(case_dir, skip=outputs)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    changed += sorted(f"shared/{k}" for k in set(before_shared) | set(snapshot(shared))
                      if before_shared.get(k) != snapshot(shared).get(k))
    if spec.get("cleanup"):
        spec["cleanup"]()
    return Result(rc, err, lines, left, changed, check, timed_out)


def judge(case, res):
    """A list of what is wrong with `res` for `case` (empty when the case holds)."""
    wrong = []
    if res.timed_out:
        return [f"no answer within {case.timeout:g} s"]
    ok = res.returncode == 0 and res.check is not False
    error = res.returncode == 2 and len(res.lines) == 1 and res.check is not False
    if case.expect == "ok" and not ok:
        wrong.append(f"expected a correct result, got exit {res.returncode}, check {res.check}")
    if case.expect == "error" and not error:
        wrong.append(f"expected exit 2 and one line, got exit {res.returncode} and {len(res.lines)} line(s)"
                     + ("" if res.check is not False else ", check failed"))
    if case.expect == "either" and not (ok or error):
        wrong.append(f"expected a correct result or exit 2 and one line, got exit {res.returncode}, "
                     f"{len(res.lines)} line(s), check {res.check}")
    if res.left:
        wrong.append(f"left behind: {res.left}")
    if res.changed:
        wrong.append(f"changed outside the outputs: {res.changed}")
    return wrong


def case_id(case):
    return f"{case.item}-" + "".join(c if c.isalnum() else "_" for c in case.name)[:50].strip("_")
