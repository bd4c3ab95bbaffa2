"""Untrusted stacks (issue 21): HDF5 data outside the file, every TIFF page, bit depths across a
folder, FIFOs and devices, bounded decompression, lazy .npz, truncated videos; each refusal is one
InputError line (exit 2 and one line on stderr through the command line)."""

import os
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from conftest import optional
from emface.errors import InputError
from emface.io import check_regular_file, decompression_limit, load_stack, read_image

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "emface.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def one_error_line(out):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("emface: error: "), (out.returncode,
                                                                                              out.stderr)
    return lines[0]


def optional_av():
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def X():
    return np.random.default_rng(0).integers(0, 255, (100, 12, 14)).astype(np.uint8)


# ----------------------------------------------------------------------------- HDF5 (item 2, 11)

@pytest.fixture
def h5files(tmp_path, X):
    h5py = optional("h5py")
    secret = tmp_path / "secret.bin"
    X.tofile(secret)
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("frames", shape=X.shape, dtype="u1", external=[(str(secret), 0, X.nbytes)])
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["X"] = X
        f.create_group("g").create_dataset("inner", data=X)
    layout = h5py.VirtualLayout(shape=X.shape, dtype="u1")
    layout[:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "X", shape=X.shape)
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        f.create_virtual_dataset("v", layout)
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["l"] = h5py.ExternalLink(str(tmp_path / "src.h5"), "X")
    return tmp_path


@pytest.mark.parametrize("spec, why", [("ext.h5", "stores its data in external file"),
                                       ("ext.h5:frames", "stores its data in external file"),
                                       ("vds.h5:v", "virtual dataset"),
                                       ("link.h5:l", "external link to another file")])
def test_hdf5_data_outside_the_file_is_refused_unless_allowed(h5files, X, spec, why):
    with pytest.raises(InputError, match=why) as e:
        load_stack(h5files / spec)
    assert "\n" not in str(e.value) and "allow_external=True" in str(e.value)
    Y, _ = load_stack(h5files / spec, allow_external=True)
    assert np.array_equal(Y[:], X)


def test_hdf5_external_through_the_command_line(h5files, tmp_path):
    line = one_error_line(cli("fit", h5files / "ext.h5", "--face-shape", "4x4", "--out", tmp_path / "o", "-q"))
    assert "external file" in line and "--allow-external-data" in line
    out = cli("fit", h5files / "ext.h5", "--face-shape", "4x4", "--out", tmp_path / "o", "-q", "--max-iter", "2",
              "--restarts", "1", "--allow-external-data")
    assert out.returncode == 0, out.stderr


def test_hdf5_group_is_one_line_and_nested_datasets_can_be_named(h5files, X):
    with pytest.raises(InputError, match=r"'g' is a group, not a dataset.*src.h5:g/NAME.*inner"):
        load_stack(f"{h5files / 'src.h5'}:g")
    Y, _ = load_stack(f"{h5files / 'src.h5'}:g/inner")
    assert np.array_equal(Y[:], X)
    with pytest.raises(InputError, match="no dataset 'nothing'"):
        load_stack(f"{h5files / 'src.h5'}:nothing")


def test_hdf5_group_through_the_command_line(h5files, tmp_path):
    line = one_error_line(cli("fit", f"{h5files / 'src.h5'}:g", "--face-shape", "4x4", "--out", tmp_path / "o"))
    assert "is a group, not a dataset" in line


def test_hdf5_chunk_larger_than_the_limit_is_refused(tmp_path):
    h5py = optional("h5py")
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("X", shape=(4, 512, 512), dtype="f8", chunks=(4, 512, 512), compression="gzip")
    with pytest.raises(InputError, match=r"one chunk \(4, 512, 512\).*8.0 MiB.*limit of 1.0 MiB.*max_memory"):
        load_stack(tmp_path / "big.h5", max_memory="1MiB")
    assert load_stack(tmp_path / "big.h5")[0].shape == (4, 512, 512)


# ----------------------------------------------------------------------------- zarr

def test_zarr_store_with_a_fifo_or_a_link_out_is_refused(tmp_path, X):
    zarr = optional("zarr")
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=X.shape, chunks=(10, 12, 14), dtype="u1", compressors=None)
    z[:] = X
    chunk = next(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "s.zarr") for f in fs if f != "zarr.json")
    (tmp_path / "elsewhere.bin").write_bytes(open(chunk, "rb").read())  # the same bytes, outside the store
    os.unlink(chunk)
    os.symlink(tmp_path / "elsewhere.bin", chunk)
    with pytest.raises(InputError, match="a link out of the zarr store"):
        load_stack(tmp_path / "s.zarr")
    assert np.array_equal(load_stack(tmp_path / "s.zarr", allow_external=True)[0][:], X)
    os.unlink(chunk)
    os.mkfifo(chunk)
    with pytest.raises(InputError, match="is a FIFO"):
        load_stack(tmp_path / "s.zarr")


# ----------------------------------------------------------------------------- TIFF (item 3, 11)

def test_every_page_is_read_whichever_library_wrote_the_file(tmp_path, X):
    tifffile = optional("tifffile")
    from PIL import Image

    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:  # one series per page
        for x in X:
            tw.write(x)
    tifffile.imwrite(tmp_path / "one.tif", X)  # one series of every page: memory-mapped
    tifffile.imwrite(tmp_path / "zlib.tif", X, compression="zlib")
    ims = [Image.fromarray(x) for x in X[:7]]
    ims[0].save(tmp_path / "pil.tif", save_all=True, append_images=ims[1:])
    C = np.random.default_rng(1).integers(0, 255, (5, 12, 14, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(C, -1, 1), planarconfig="separate", photometric="rgb")
    with tifffile.TiffWriter(tmp_path / "pages_rgb.tif") as tw:
        for c in C:
            tw.write(c, compression="zlib")
    for name, ref in (("pages.tif", X), ("one.tif", X), ("zlib.tif", X), ("pil.tif", X[:7]), ("planar.tif", C),
                      ("pages_rgb.tif", C)):
        Y, _ = load_stack(tmp_path / name)
        assert Y.shape == ref.shape, name
        assert np.array_equal(np.asarray(Y[:]), ref) and np.array_equal(Y[37 % len(ref):], ref[37 % len(ref):])
    assert isinstance(load_stack(tmp_path / "one.tif")[0], np.memmap)
    Z, _ = load_stack(tmp_path / "zlib.tif")
    assert not isinstance(Z, np.ndarray)  # compressed: read a slice at a time
    import pickle

    assert np.array_equal(pickle.loads(pickle.dumps(Z))[50:60], X[50:60])


@pytest.mark.parametrize("second, what", [(np.zeros((6, 14), np.uint8), "size"),
                                          (np.zeros((12, 14), np.uint16), "pixel type")])
def test_pages_that_differ_are_refused(tmp_path, X, second, what):
    tifffile = optional("tifffile")
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tw:
        tw.write(X[0])
        tw.write(X[1])
        tw.write(second)
    with pytest.raises(InputError, match=f"TIFF pages differ in {what}: page 0 is 12x14 uint8 but page 2 is"):
        load_stack(tmp_path / "mixed.tif")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_is_one_line(tmp_path, X, compression):
    tifffile = optional("tifffile")
    tifffile.imwrite(tmp_path / "s.tif", X, compression=compression)
    data = (tmp_path / "s.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="(truncated or damaged|not a readable) TIFF file"):
        load_stack(tmp_path / "t.tif")
    line = one_error_line(cli("fit", tmp_path / "t.tif", "--face-shape", "4x4", "--out", tmp_path / "o"))
    assert "t.tif" in line


def test_a_tiff_page_larger_than_the_limit_is_refused(tmp_path):
    tifffile = optional("tifffile")
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((3, 1024, 1024), np.float32), compression="zlib",
                     photometric="minisblack")
    assert (tmp_path / "z.tif").stat().st_size < 100_000
    with pytest.raises(InputError, match=r"one TIFF page \(1024x1024 of float32\) takes 4.0 MiB once decompressed, "
                                         r"more than the limit of 1.0 MiB; raise it with max_memory"):
        load_stack(tmp_path / "z.tif", max_memory="1MiB")


# ----------------------------------------------------------------------------- bit depth (item 8)

def test_one_16_bit_frame_among_8_bit_frames_is_refused_at_open(tmp_path, X, monkeypatch):
    iio = pytest.importorskip("imageio.v3")
    for k in range(6):
        iio.imwrite(tmp_path / f"f{k}.png", X[k])
    iio.imwrite(tmp_path / "f4.png", X[4].astype(np.uint16) * 257)
    with pytest.raises(InputError, match=r"frames differ in bit depth: f0.png is 8-bit \(uint8\) but f4.png is "
                                         r"16-bit \(uint16\)"):
        load_stack(tmp_path)
    line = one_error_line(cli("fit", tmp_path, "--face-shape", "4x4", "--out", tmp_path / "o"))
    assert "f4.png is 16-bit" in line


def test_a_frame_whose_header_lies_about_its_depth_is_refused_when_decoded(tmp_path, X, monkeypatch):
    iio = pytest.importorskip("imageio.v3")
    import emface.readers.frames as frames_module

    for k in range(4):
        iio.imwrite(tmp_path / f"f{k}.png", X[k])
    folder, _ = load_stack(tmp_path)
    iio.imwrite(tmp_path / "f2.png", X[2].astype(np.uint16))  # changed after the headers were read
    monkeypatch.setattr(frames_module, "_frame_header", lambda path: None)
    with pytest.raises(InputError, match="f2.png is 16-bit"):
        folder[:]


def test_grey_and_colour_frames_with_grey_still_mix(tmp_path, X):
    iio = pytest.importorskip("imageio.v3")
    iio.imwrite(tmp_path / "f0.png", X[0])
    iio.imwrite(tmp_path / "f1.png", np.stack([X[1]] * 3, axis=-1))
    Y, _ = load_stack(tmp_path, grey=True)
    assert Y.shape == (2, 12, 14) and np.allclose(Y[:], X[:2], atol=1e-9)


# ----------------------------------------------------------------------------- FIFOs, devices (item 9)

def test_check_regular_file_names_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "f.npy")
    with pytest.raises(InputError, match=r"f.npy: is a FIFO \(named pipe\), not a regular file"):
        check_regular_file(tmp_path / "f.npy")
    with pytest.raises(InputError, match="is a character device"):
        check_regular_file("/dev/null")
    with pytest.raises(InputError, match="is a folder"):
        check_regular_file(tmp_path)
    (tmp_path / "ok.npy").write_bytes(b"")
    os.symlink(tmp_path / "ok.npy", tmp_path / "link.npy")
    check_regular_file(tmp_path / "link.npy")  # a link to a regular file is one


def test_fifos_and_devices_are_refused_before_they_are_opened(tmp_path, X):
    iio = pytest.importorskip("imageio.v3")
    os.mkfifo(tmp_path / "f.npy")
    os.mkfifo(tmp_path / "bg.png")
    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        iio.imwrite(frames / f"f{k}.png", X[k])
    os.mkfifo(frames / "f1b.png")
    for path, match in ((tmp_path / "f.npy", "f.npy: is a FIFO"), ("/dev/zero", "is a character device"),
                        (frames, "f1b.png: is a FIFO")):
        with pytest.raises(InputError, match=match):
            load_stack(path)
    with pytest.raises(InputError, match="bg.png: is a FIFO"):
        read_image(tmp_path / "bg.png")
    from emface import FaceEM

    os.mkfifo(tmp_path / "model.npz")
    with pytest.raises(InputError, match="model.npz: is a FIFO"):
        FaceEM.load(tmp_path / "model.npz")
    if optional_av():
        from emface.video import VideoStack

        os.mkfifo(tmp_path / "v.mp4")
        with pytest.raises(InputError, match="v.mp4: is a FIFO"):
            VideoStack(tmp_path / "v.mp4")
    # no hang through the command line either (the subprocess's timeout would fail the test)
    assert "is a FIFO" in one_error_line(cli("fit", tmp_path / "f.npy", "--face-shape", "4x4",
                                             "--out", tmp_path / "o", timeout=60))
    assert "f1b.png: is a FIFO" in one_error_line(cli("fit", frames, "--face-shape", "4x4", "--out",
                                                      tmp_path / "o", timeout=60))
    assert "bg.png: is a FIFO" in one_error_line(cli("generate", "--out", tmp_path / "g.npy", "--background",
                                                     tmp_path / "bg.png", "-q", timeout=60))


# ----------------------------------------------------------------------------- .npz and bounds (item 12)

def _deflated_bomb(path, K, side=512):
    """A .npz of zeros (K, side, side) float32, written a frame at a time: megabytes that declare far more."""
    from numpy.lib import format as npformat

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("X.npy", "w", force_zip64=True) as fh:
            npformat.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (K, side, side)})
            frame = np.zeros((side, side), np.float32).tobytes()
            for _ in range(K):
                fh.write(frame)


def test_npz_stored_is_memory_mapped_and_deflated_is_read_a_slice_at_a_time(tmp_path, X):
    np.savez(tmp_path / "s.npz", X=X, other=np.zeros(3))
    np.savez_compressed(tmp_path / "c.npz", images=X)
    Y, _ = load_stack(tmp_path / "s.npz")
    assert isinstance(Y, np.memmap) and np.array_equal(Y, X)
    Z, _ = load_stack(tmp_path / "c.npz")
    assert not isinstance(Z, np.ndarray) and Z.shape == X.shape and Z.dtype == X.dtype
    assert np.array_equal(Z[:], X) and np.array_equal(Z[40:45], X[40:45]) and np.array_equal(Z[3], X[3])
    assert np.array_equal(Z[[5, 2, 90]], X[[5, 2, 90]]) and np.array_equal(Z[::7], X[::7])
    import pickle

    W = pickle.loads(pickle.dumps(Z))  # Dask workers get a copy that reopens the file
    assert np.array_equal(W[10:20], X[10:20])
    F = np.asfortranarray(X.astype(np.float32))
    np.savez(tmp_path / "f.npz", X=F)
    assert np.array_equal(load_stack(tmp_path / "f.npz")[0], F)
    np.savez_compressed(tmp_path / "hwk.npz", X=np.moveaxis(X, 0, -1))
    assert np.array_equal(load_stack(tmp_path / "hwk.npz", layout="hwk")[0], X)


def test_a_zip_bomb_never_reaches_memory_whole(tmp_path):
    _deflated_bomb(tmp_path / "bomb.npz", 200)  # 200 MiB of zeros in a few hundred KiB
    assert (tmp_path / "bomb.npz").stat().st_size < 2**20
    tracemalloc.start()
    try:
        Y, _ = load_stack(tmp_path / "bomb.npz")
        assert Y.shape == (200, 512, 512)
        for a in range(0, 200, 20):
            assert not np.asarray(Y[a:a + 20]).any()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # one slice of 20 MiB at a time, never the 200 MiB
    with pytest.raises(InputError, match=r"takes 200.0 MiB once decompressed, more than the limit of 50.0 MiB; "
                                         r"raise it with max_memory"):
        load_stack(tmp_path / "bomb.npz", layout="hwk", max_memory="50MiB")


def test_npz_member_smaller_than_its_header_says(tmp_path, X):
    import io

    b = io.BytesIO()
    np.save(b, X)
    data = b.getvalue()
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        with zipfile.ZipFile(tmp_path / "t.npz", "w", compression=compression) as zf:
            zf.writestr("X.npy", data[: len(data) // 2])
        with pytest.raises(InputError, match="truncated or damaged .npz member X.npy: its header announces"):
            load_stack(tmp_path / "t.npz")


def test_decompression_limit_default_and_max_memory():
    assert decompression_limit() >= 2**30
    assert decompression_limit("3MB") == 3_000_000


# ----------------------------------------------------------------------------- truncated video (item 13)

def test_a_truncated_video_is_noticed(tmp_path):
    optional("av")
    from emface.video import VideoStack, write_synthetic_video

    write_synthetic_video(tmp_path / "v.mkv", n_images=100, image_shape=(32, 48), face_shape=(12, 12),
                          random_state=0)
    data = (tmp_path / "v.mkv").read_bytes()
    (tmp_path / "t.mkv").write_bytes(data[: int(len(data) * 0.59)])
    with pytest.warns(UserWarning, match=r"t.mkv: only \d+ frames could be read but the file declares 100 "
                                         r"\(a duration of 4 s at 25 frames/s\): it may be truncated"):
        T = VideoStack(tmp_path / "t.mkv")
    assert 20 < T.n_frames < 90
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert VideoStack(tmp_path / "v.mkv").n_frames == 100  # the whole file: no warning
