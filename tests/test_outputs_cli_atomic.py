"""emface.outputs: one atomic writer for every file; the --out folder's lock, stale files and cleanup."""

import errno
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from emface import FaceEM
from emface import outputs
from emface.datasets import make_faces
from emface.outputs import (FolderLocked, OutputError, OutputFolder, all_or_nothing, atomic_open, atomic_path,
                            atomic_write, remove_stale_temporaries)

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _temporaries(folder):
    return [n for n in os.listdir(folder) if n.startswith(outputs.TMP_PREFIX)]


def _enospc(tmp):
    with open(tmp, "wb") as fh:
        fh.write(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- one file

def test_atomic_write_writes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    assert atomic_write(path, lambda tmp: open(tmp, "wb").write(b"content")) == str(path)
    assert path.read_bytes() == b"content"
    assert _temporaries(tmp_path) == []


def test_the_temporary_is_in_the_same_folder_with_the_extension(tmp_path):
    seen = []
    atomic_write(tmp_path / "m.npz", lambda tmp: (seen.append(tmp), np.savez(tmp, a=np.arange(3))))
    assert os.path.dirname(seen[0]) == str(tmp_path)
    assert os.path.basename(seen[0]).startswith(f"{outputs.TMP_PREFIX}{os.getpid()}-")
    assert seen[0].endswith(".npz")  # so numpy does not add another extension
    with np.load(tmp_path / "m.npz") as z:
        assert list(z["a"]) == [0, 1, 2]


def test_a_symlink_at_the_destination_is_replaced_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "positions.csv"
    link.symlink_to(victim)
    with atomic_open(link, "w") as fh:
        fh.write("new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert victim.read_text() == "keep me"


def test_a_dangling_symlink_is_replaced_and_nothing_created_where_it_pointed(tmp_path):
    link = tmp_path / "report.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    atomic_write(link, lambda tmp: open(tmp, "w").write("x"))
    assert not link.is_symlink() and link.read_text() == "x"
    assert not (tmp_path / "elsewhere.html").exists()


def test_a_failed_write_keeps_the_earlier_file_and_names_the_destination(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"earlier")
    with pytest.raises(OutputError) as info:
        atomic_write(path, _enospc)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert str(info.value) == f"cannot write {path}: No space left on device"
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"earlier"
    assert _temporaries(tmp_path) == []


def test_other_errors_propagate_unchanged_and_remove_the_temporary(tmp_path):
    def boom(tmp):
        open(tmp, "w").write("partial")
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        atomic_write(tmp_path / "x.csv", boom)
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "y.csv", "w") as fh:
            fh.write("partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_a_folder_at_the_destination_is_an_error_naming_it(tmp_path):
    (tmp_path / "model.npz").mkdir()
    with pytest.raises(OutputError, match="model.npz"):
        atomic_write(tmp_path / "model.npz", lambda tmp: open(tmp, "w").write("x"))
    assert (tmp_path / "model.npz").is_dir() and _temporaries(tmp_path) == []


def test_a_missing_folder_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(OutputError, match="nope/a.csv"):
        atomic_write(tmp_path / "nope" / "a.csv", lambda tmp: None)


def test_the_mode_is_the_umasks_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "a.txt").st_mode & 0o777) == oct(0o644)


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    with atomic_open(path, "w") as fh:
        fh.write("new")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640) and path.read_text() == "new"


def test_atomic_path_for_writers_that_open_by_name(tmp_path):
    with atomic_path(tmp_path / "v.mkv") as tmp:
        assert tmp.endswith(".mkv") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "wb").write(b"video")
    assert (tmp_path / "v.mkv").read_bytes() == b"video"
    assert _temporaries(tmp_path) == []


def test_atomic_open_refuses_a_mode_that_reads_or_appends(tmp_path):
    for mode in ("r", "a", "w+", "rb"):
        with pytest.raises(ValueError, match="mode"):
            with atomic_open(tmp_path / "a", mode):
                pass


# ----------------------------------------------------------------------------- several files

def test_all_or_nothing_renames_together_or_not_at_all(tmp_path):
    (tmp_path / "a.csv").write_text("earlier a")
    (tmp_path / "b.png").write_text("earlier b")
    with pytest.raises(OutputError, match="b.png"):
        with all_or_nothing():
            atomic_write(tmp_path / "a.csv", lambda tmp: open(tmp, "w").write("new a"))
            assert (tmp_path / "a.csv").read_text() == "earlier a"  # staged, not yet renamed
            atomic_write(tmp_path / "b.png", _enospc)
    assert (tmp_path / "a.csv").read_text() == "earlier a"
    assert (tmp_path / "b.png").read_text() == "earlier b"
    assert _temporaries(tmp_path) == []
    with all_or_nothing():
        atomic_write(tmp_path / "a.csv", lambda tmp: open(tmp, "w").write("new a"))
        with all_or_nothing():  # an inner group joins the outer one
            with atomic_open(tmp_path / "b.png", "w") as fh:
                fh.write("new b")
        assert (tmp_path / "b.png").read_text() == "earlier b"
    assert (tmp_path / "a.csv").read_text() == "new a" and (tmp_path / "b.png").read_text() == "new b"


def test_all_or_nothing_on_ctrl_c_removes_what_it_staged(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with all_or_nothing():
            atomic_write(tmp_path / "a.csv", lambda tmp: open(tmp, "w").write("new a"))
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- temporaries

def test_stale_temporaries_of_ended_processes_are_removed_ours_kept(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f"{outputs.TMP_PREFIX}{dead}-abc.npz"
    mine = tmp_path / f"{outputs.TMP_PREFIX}{os.getpid()}-def.npz"
    other = tmp_path / ".tmp-xyz.npz"  # not ours: never touched
    for p in (stale, mine, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale.name]
    assert not stale.exists() and mine.exists() and other.exists()


def test_temporaries_of_a_process_are_removed_at_its_exit(tmp_path):
    code = ("import sys; from emface import outputs; fd, tmp = outputs._new_temporary(sys.argv[1], '.npz'); "
            "print(tmp, flush=True)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.npz")], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=SRC), check=True)
    tmp = r.stdout.strip()
    assert os.path.basename(tmp).startswith(outputs.TMP_PREFIX)
    assert not os.path.exists(tmp) and os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- the output folder

def test_output_folder_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out) as first:
        assert first.created and (out / outputs.LOCK_NAME).exists()
        with pytest.raises(FolderLocked) as info:
            OutputFolder(out).__enter__()
        assert str(out) in str(info.value) and str(os.getpid()) in str(info.value)
        (out / "model.npz").write_bytes(b"x")
    assert not (out / outputs.LOCK_NAME).exists()
    with OutputFolder(out):  # released: a later run takes it
        pass


def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, time; from emface.outputs import OutputFolder; OutputFolder(sys.argv[1]).__enter__(); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=SRC))
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLocked, match=str(p.pid)):
            OutputFolder(out).__enter__()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (out / outputs.LOCK_NAME).exists()  # left by the killed run...
    with OutputFolder(out):  # ...and taken over
        pass


def test_a_symlink_planted_as_the_lock_is_not_followed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (out / outputs.LOCK_NAME).symlink_to(victim)
    with OutputFolder(out):
        assert not (out / outputs.LOCK_NAME).is_symlink()
    assert victim.read_text() == "keep"


def test_a_folder_created_for_nothing_is_removed_an_existing_one_kept(tmp_path):
    with pytest.raises(ValueError):
        with OutputFolder(tmp_path / "new"):
            raise ValueError("bad input")
    assert not (tmp_path / "new").exists()
    with OutputFolder(tmp_path / "a" / "b" / "c"):
        pass
    assert os.listdir(tmp_path) == []  # every level it created
    (tmp_path / "old").mkdir()
    with OutputFolder(tmp_path / "old"):
        pass
    assert (tmp_path / "old").is_dir() and os.listdir(tmp_path / "old") == []


def test_output_folder_removes_stale_temporaries_on_entry(tmp_path):
    (tmp_path / f"{outputs.TMP_PREFIX}{_dead_pid()}-x.npz").write_bytes(b"half a checkpoint")
    with OutputFolder(tmp_path):
        assert _temporaries(tmp_path) == []


def test_remove_stale_only_touches_emfaces_names_not_written_now(tmp_path):
    for name in ("face_0.png", "face_3.png", "faces.png", "face.png", "notes.txt", "face_x.png"):
        (tmp_path / name).write_bytes(b"x")
    with OutputFolder(tmp_path) as out:
        removed = out.remove_stale(["face.png", "model.npz"], (r"face\.png", r"faces\.png", r"face_\d+\.png"))
    assert removed == ["face_0.png", "face_3.png", "faces.png"]
    assert sorted(os.listdir(tmp_path)) == ["face.png", "face_x.png", "notes.txt"]


def test_an_output_path_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="afile"):
        OutputFolder(tmp_path / "afile").__enter__()


# ----------------------------------------------------------------------------- models and checkpoints

@pytest.fixture(scope="module")
def small():
    X, _ = make_faces(30, (16, 18), (6, 5), noise=0.5, random_state=0)
    return X


def test_save_over_a_model_on_a_full_disk_keeps_the_earlier_model(tmp_path, small, monkeypatch):
    est = FaceEM((6, 5), n_init=1, max_iter=3, random_state=0).fit(small)
    path = tmp_path / "model.npz"
    est.save(path)
    earlier = path.read_bytes()
    real = outputs.atomic_write

    def full(p, fn, **kw):
        return real(p, lambda tmp: (fn(tmp), _enospc(tmp)), **kw)

    monkeypatch.setattr(outputs, "atomic_write", full)
    with pytest.raises(OSError, match="model.npz: No space left"):
        est.save(path)
    assert path.read_bytes() == earlier
    np.testing.assert_array_equal(FaceEM.load(path).faces_, est.faces_)
    assert _temporaries(tmp_path) == []


def test_save_adds_npz_as_numpy_does_and_writes_file_objects(tmp_path, small):
    est = FaceEM((6, 5), n_init=1, max_iter=2, random_state=0).fit(small)
    est.save(tmp_path / "m")
    assert os.listdir(tmp_path) == ["m.npz"]
    import io

    buf = io.BytesIO()
    est.save(buf)
    buf.seek(0)
    np.testing.assert_array_equal(FaceEM.load(buf).faces_, est.faces_)


@pytest.mark.filterwarnings("ignore:Best EM run did not converge")
def test_a_failed_checkpoint_warns_and_the_fit_goes_on(tmp_path, small):
    ck = tmp_path / "run.npz"
    ck.mkdir()  # every checkpoint write fails: a folder is where the file should go
    est = FaceEM((6, 5), n_init=1, max_iter=4, tol=0, init="random", checkpoint=str(ck), checkpoint_every=1,
                 random_state=0)
    with pytest.warns(UserWarning, match=r"could not write the checkpoint .*run\.npz.*the fit goes on"):
        est.fit(small)
    assert est.n_iter_ == 4 and np.isfinite(est.lower_bound_)
    assert _temporaries(tmp_path) == []


def test_a_checkpoint_is_written_and_resumes(tmp_path, small):
    ck = tmp_path / "run.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FaceEM((6, 5), n_init=1, max_iter=3, tol=0, checkpoint=str(ck), checkpoint_every=1,
               random_state=0).fit(small)
    assert ck.is_file() and _temporaries(tmp_path) == []
    assert FaceEM.resume(ck).n_iter_ >= 1
    exact = tmp_path / "run-without-extension"  # a checkpoint is written where it is asked to be
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FaceEM((6, 5), n_init=1, max_iter=2, tol=0, checkpoint=str(exact), checkpoint_every=1,
               random_state=0).fit(small)
    assert exact.is_file() and FaceEM.resume(exact).n_iter_ >= 1


# ----------------------------------------------------------------------------- a real full disk

def _mount_tmpfs(where, size="2m"):
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    except OSError:
        return False
    return r.returncode == 0


def test_disk_full_on_a_real_tmpfs_keeps_the_earlier_result(tmp_path, small):
    """A 2 MB tmpfs (where this process may mount one: root on Linux)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        est = FaceEM((6, 5), n_init=1, max_iter=3, random_state=0).fit(small)
        est.save(mnt / "model.npz")
        earlier = (mnt / "model.npz").read_bytes()
        with open(mnt / "filler", "wb") as fh:  # fill the disk
            with pytest.raises(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        with pytest.raises(OutputError, match=r"model\.npz: No space left on device"):
            est.save(mnt / "model.npz")
        with pytest.raises(OutputError, match=r"report\.html"):
            with atomic_open(mnt / "report.html", "w") as fh:
                fh.write("x" * 1_000_000)
        assert (mnt / "model.npz").read_bytes() == earlier
        FaceEM.load(mnt / "model.npz")
        assert sorted(os.listdir(mnt)) == ["filler", "model.npz"]
    finally:
        for _ in range(3):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
