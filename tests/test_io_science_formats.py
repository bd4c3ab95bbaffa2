"""MRC/MRCS particle stacks and FITS cubes (the ``mrc`` and ``fits`` extras): read lazily, refused in one line.

Every file is written by the format's own library in tmp_path.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import optional as _need

from emface.errors import InputError
from emface.io import load_stack


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(6, 9, 11)).astype(np.float32)


def _one_line(exc):
    text = str(exc.value)
    assert "\n" not in text and text
    return text


# ----------------------------------------------------------------------------- MRC


def _write_mrc(path, data, stack=True):
    mrcfile = _need("mrcfile")
    with mrcfile.new(path) as m:
        m.set_data(data)
        if stack and data.ndim == 3:
            m.set_image_stack()


@pytest.mark.parametrize("suffix", [".mrcs", ".mrc"])
def test_mrc_stack_is_memory_mapped(tmp_path, X, suffix):
    path = tmp_path / f"particles{suffix}"
    _write_mrc(path, X)
    Y, names = load_stack(path)
    assert isinstance(Y, np.memmap) and names is None
    np.testing.assert_array_equal(np.asarray(Y), X)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16])
def test_mrc_modes(tmp_path, X, dtype):
    data = (X * 10).astype(dtype)
    _write_mrc(tmp_path / "m.mrcs", data)
    Y, _ = load_stack(tmp_path / "m.mrcs")
    assert Y.dtype == data.dtype
    np.testing.assert_array_equal(np.asarray(Y), data)


def test_mrc_single_image_is_a_stack_of_one(tmp_path, X):
    _write_mrc(tmp_path / "one.mrc", X[0])
    Y, _ = load_stack(tmp_path / "one.mrc")
    assert Y.shape == (1,) + X.shape[1:]
    np.testing.assert_array_equal(np.asarray(Y)[0], X[0])


def test_mrc_truncated_is_one_line(tmp_path, X):
    path = tmp_path / "t.mrcs"
    _write_mrc(path, X)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    with pytest.raises(InputError) as exc:
        load_stack(path)
    assert "truncated or damaged MRC file" in _one_line(exc) and str(path) in str(exc.value)


@pytest.mark.parametrize("content", [b"", b"x" * 300, b"y" * 3000])
def test_mrc_corrupt_is_one_line(tmp_path, content):
    _need("mrcfile")
    path = tmp_path / "bad.mrcs"
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        load_stack(path)
    assert "not a valid MRC file" in _one_line(exc)


def test_mrc_volume_stack_has_the_wrong_dimensionality(tmp_path, X):
    mrcfile = _need("mrcfile")
    path = tmp_path / "v.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.stack([X, X]))  # a stack of volumes, 4-D (mrcfile sets ispg 401)
    assert mrcfile.open(path, header_only=True).header.ispg == 401
    with pytest.raises(InputError) as exc:
        load_stack(path)
    assert "expected images (K, H, W)" in _one_line(exc)


def test_mrc_fit_through_the_cli(tmp_path):
    _need("mrcfile")
    from emface.datasets import make_faces

    Xs, truth = make_faces(60, (20, 22), (8, 7), random_state=0, dtype=np.float32)
    _write_mrc(tmp_path / "s.mrcs", Xs)
    r = subprocess.run([sys.executable, "-m", "emface.cli", "fit", str(tmp_path / "s.mrcs"), "--face-shape", "8x7",
                        "--out", str(tmp_path / "o"), "-q", "--seed", "0", "--max-iter", "5"],
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "positions.csv").is_file()


@pytest.mark.parametrize("name, content, words", [("bad.mrcs", b"z" * 1500, "not a valid MRC file"),
                                                   ("bad.fits", b"z" * 3000, "not a valid FITS file")])
def test_cli_corrupt_file_exit_2_one_line(tmp_path, name, content, words):
    _need("mrcfile" if name.endswith(".mrcs") else "astropy")
    (tmp_path / name).write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "emface.cli", "fit", str(tmp_path / name), "--face-shape", "4x4",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("emface: error:")
    assert not (tmp_path / "o").exists()  # an input error leaves no new folder


# ----------------------------------------------------------------------------- FITS


def _fits():
    _need("astropy")
    from astropy.io import fits

    return fits


def test_fits_cube_is_memory_mapped(tmp_path, X):
    fits = _fits()
    for name in ("c.fits", "c.fit", "c.fts"):
        fits.PrimaryHDU(X).writeto(tmp_path / name)
        Y, _ = load_stack(tmp_path / name)
        assert isinstance(Y, np.memmap) and Y.shape == X.shape
        np.testing.assert_array_equal(np.asarray(Y), X)


def test_fits_scaled_integers_are_scaled_as_read(tmp_path, X):
    fits = _fits()
    u = (np.abs(X) * 1000).astype(np.uint16)  # stored as int16 with BZERO 32768
    fits.PrimaryHDU(u).writeto(tmp_path / "u.fits")
    Y, _ = load_stack(tmp_path / "u.fits")
    assert Y.shape == u.shape and Y.dtype == np.float64
    np.testing.assert_array_equal(Y[2:4], u[2:4].astype(np.float64))
    np.testing.assert_array_equal(np.asarray(Y), u.astype(np.float64))
    hdu = fits.PrimaryHDU((X * 100).astype(np.int16))
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, -3.0
    hdu.writeto(tmp_path / "s.fits")
    Z, _ = load_stack(tmp_path / "s.fits")
    np.testing.assert_allclose(np.asarray(Z), (X * 100).astype(np.int16) * 0.5 - 3.0)


def test_fits_image_extension_and_hdu_by_name(tmp_path, X):
    fits = _fits()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(X[:2], name="DARK"), fits.ImageHDU(X, name="SCI")]) \
        .writeto(tmp_path / "e.fits")
    Y, _ = load_stack(tmp_path / "e.fits")  # the first image HDU
    np.testing.assert_array_equal(np.asarray(Y), X[:2])
    Z, _ = load_stack(f"{tmp_path / 'e.fits'}:SCI")
    np.testing.assert_array_equal(np.asarray(Z), X)
    W, _ = load_stack(f"{tmp_path / 'e.fits'}:2")
    np.testing.assert_array_equal(np.asarray(W), X)
    with pytest.raises(InputError) as exc:
        load_stack(f"{tmp_path / 'e.fits'}:NOPE")
    assert "no HDU 'NOPE'" in _one_line(exc)


def test_fits_2d_image_is_a_stack_of_one(tmp_path, X):
    fits = _fits()
    fits.PrimaryHDU(X[0]).writeto(tmp_path / "one.fits")
    Y, _ = load_stack(tmp_path / "one.fits")
    assert Y.shape == (1,) + X.shape[1:]
    np.testing.assert_array_equal(np.asarray(Y)[0], X[0])


def test_fits_compressed_is_read_a_slice_at_a_time(tmp_path, X):
    fits = _fits()
    from emface._lazyfiles import FitsTiles

    data = (X * 100).astype(np.int32)  # integers compress losslessly
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, tile_shape=(1, 9, 11))]).writeto(tmp_path / "z.fits")
    Y, _ = load_stack(tmp_path / "z.fits")
    assert isinstance(Y, FitsTiles) and Y.shape == data.shape
    np.testing.assert_array_equal(Y[1:4], data[1:4])
    np.testing.assert_array_equal(Y[[5, 0]], data[[5, 0]])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(Y))[:], data)  # a copy reopens the file
    with pytest.raises(InputError) as exc:  # a tile larger than max_memory
        load_stack(tmp_path / "z.fits", max_memory=100)
    assert "max_memory" in _one_line(exc)


def test_fits_truncated_is_one_line(tmp_path, X):
    fits = _fits()
    path = tmp_path / "t.fits"
    fits.PrimaryHDU(np.tile(X, (4, 1, 1))).writeto(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError) as exc:
        load_stack(path)
    assert "truncated" in _one_line(exc)


def test_fits_compressed_truncated_is_one_line(tmp_path, X):
    fits = _fits()
    path = tmp_path / "zt.fits"
    data = (np.tile(X, (4, 1, 1)) * 100).astype(np.int32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, tile_shape=(1, 9, 11))]).writeto(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) * 2 // 3])
    with pytest.raises(InputError) as exc:
        Y, _ = load_stack(path)
        Y[:]
    assert "FITS" in _one_line(exc)


@pytest.mark.parametrize("content", [b"", b"SIMPLE", b"y" * 5000])
def test_fits_corrupt_is_one_line(tmp_path, content):
    _fits()
    path = tmp_path / "bad.fits"
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        load_stack(path)
    assert "FITS file" in _one_line(exc)


def test_fits_wrong_dimensionality(tmp_path, X):
    fits = _fits()
    fits.PrimaryHDU(np.stack([X, X])).writeto(tmp_path / "4d.fits")
    with pytest.raises(InputError) as exc:
        load_stack(tmp_path / "4d.fits")
    assert "expected images (K, H, W)" in _one_line(exc)
    fits.HDUList([fits.PrimaryHDU(np.arange(5.0))]).writeto(tmp_path / "1d.fits")
    with pytest.raises(InputError) as exc:
        load_stack(tmp_path / "1d.fits")
    assert "no image of 2 or 3 axes" in _one_line(exc)


# ----------------------------------------------------------------------------- missing extras


@pytest.mark.parametrize("name, module, extra", [("s.mrcs", "mrcfile", "mrc"), ("c.fits", "astropy", "fits")])
def test_missing_extra_names_the_pip_extra(tmp_path, monkeypatch, name, module, extra):
    import emface.readers.science as science

    (tmp_path / name).write_bytes(b"\0" * 2048)
    monkeypatch.setattr(science, "has_module", lambda m: m != module)
    with pytest.raises(InputError) as exc:
        load_stack(tmp_path / name)
    assert _one_line(exc).endswith(f"pip install 'emface[{extra}]'")


def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    _need("mrcfile")
    path = tmp_path / "pipe.mrcs"
    os.mkfifo(path)
    with pytest.raises(InputError) as exc:
        load_stack(path)
    assert "FIFO" in _one_line(exc)
