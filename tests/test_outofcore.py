"""Stacks that stay on disk: memory maps, zarr, HDF5 and TIFF stream through the engine in chunks,
and max_memory bounds what the engine caches."""

import numpy as np
import pytest

from conftest import optional
from emface import FaceEM, load_stack
from emface.datasets import make_faces
from emface.sources import ArraySource

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    X, truth = make_faces(120, (30, 36), (12, 10), noise=0.6, random_state=8)
    return X.astype(np.float32), truth


@pytest.fixture(scope="module")
def reference(data):
    X, _ = data
    return FaceEM((12, 10), random_state=0, n_init=1).fit(X)


def _same(est, ref):
    assert np.abs(est.face_ - ref.face_).max() <= 1e-10 * np.abs(ref.face_).max()
    assert est.lower_bounds_ == pytest.approx(ref.lower_bounds_, rel=1e-12)


def test_zarr_array(tmp_path, data, reference):
    zarr = optional("zarr")
    X, truth = data
    z = zarr.open(str(tmp_path / "s.zarr"), mode="w", shape=X.shape, chunks=(25, 30, 36), dtype="f4")
    z[:] = X
    est = FaceEM((12, 10), random_state=0, n_init=1).fit(zarr.open(str(tmp_path / "s.zarr"), mode="r"))
    _same(est, reference)
    Y, names = load_stack(tmp_path / "s.zarr")
    assert Y.shape == X.shape and names is None and not isinstance(Y, np.ndarray)


def test_hdf5_dataset(tmp_path, data, reference):
    h5py = optional("h5py")
    X, _ = data
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("frames", data=X, chunks=(10, 30, 36))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        _same(FaceEM((12, 10), random_state=0, n_init=1).fit(f["frames"]), reference)
    Y, _ = load_stack(f"{tmp_path / 's.h5'}:frames")
    assert Y.shape == X.shape
    Y, _ = load_stack(tmp_path / "s.h5")  # the only 3-D dataset is found by itself
    assert Y.shape == X.shape


def test_tiff_is_read_lazily(tmp_path, data, reference):
    tifffile = optional("tifffile")
    X, _ = data
    tifffile.imwrite(tmp_path / "s.tif", X)
    Y, _ = load_stack(tmp_path / "s.tif")
    assert isinstance(Y, np.memmap)
    _same(FaceEM((12, 10), random_state=0, n_init=1).fit(Y), reference)


def test_max_memory_bounds_the_spectrum_cache(data):
    X, _ = data
    small = ArraySource(X, (12, 10), max_memory="2MB")
    large = ArraySource(X, (12, 10))
    from emface.executor import EngineConfig, LocalExecutor
    from emface.init import random_start
    from emface.model import FaceMixture

    for src in (small, large):
        ex = LocalExecutor(src, EngineConfig())
        ex.pass_stats(random_start(src, FaceMixture((12, 10)), np.random.default_rng(0)))
    assert small.cached_bytes <= small.cache_budget <= 0.6 * 2e6
    assert large.cached_bytes == len(X) * 30 * 19 * 16  # every spectrum fits by default here
    a = FaceEM((12, 10), random_state=0, n_init=1, max_memory="2MB").fit(X)
    b = FaceEM((12, 10), random_state=0, n_init=1).fit(X)
    assert np.abs(a.face_ - b.face_).max() <= 1e-10 * np.abs(b.face_).max()


def test_bad_max_memory():
    with pytest.raises(ValueError, match="max_memory must be positive"):
        FaceEM((2, 2), max_memory=-5).fit(np.zeros((2, 4, 4)))


def test_a_folder_of_frames_is_decoded_a_chunk_at_a_time(tmp_path, monkeypatch):
    """A fit on a folder decodes a chunk (or a byte-capped subsample) at a time, never all its frames, and
    equals the fit of the same frames in memory."""
    import imageio.v3 as iio

    import emface.io as io_module

    X, truth = make_faces(150, (64, 80), (16, 16), noise=0.5, random_state=3)
    u8 = np.clip(np.round(X), 0, 255).astype(np.uint8)
    for k, x in enumerate(u8):
        iio.imwrite(tmp_path / f"f{k}.png", x)
    folder, names = load_stack(tmp_path)
    assert isinstance(folder, io_module.FrameFolder) and folder.shape == u8.shape and folder.dtype == np.uint8
    assert names[:3] == ["f0.png", "f1.png", "f2.png"]  # natural order
    # the start and the moves read a subsample capped in bytes: here at 60 frames
    monkeypatch.setattr("emface.executor.SUBSAMPLE_BYTES", 60 * u8[0].nbytes)
    monkeypatch.setattr("emface.init._AUTO_MAX_BYTES", 60 * 8 * u8[0].size)  # the start's, in float64
    read = []
    real = io_module.FrameFolder._read
    monkeypatch.setattr(io_module.FrameFolder, "_read", lambda self, index: read.append(len(index)) or real(self, index))
    est = FaceEM((16, 16), random_state=0, n_init=1, max_memory="4MB").fit(folder)
    assert read and max(read) <= 60  # chunks and capped subsamples, never the whole folder
    ref = FaceEM((16, 16), random_state=0, n_init=1, max_memory="4MB").fit(u8)
    assert np.array_equal(est.predict(u8), ref.predict(u8))
    assert np.abs(est.face_ - ref.face_).max() <= 1e-10 * np.abs(ref.face_).max()


def test_several_faces_from_a_memory_map_under_max_memory_equal_the_in_memory_fit(tmp_path):
    """C = 3 faces streamed from an .npy memory map in small chunks, spectra capped: the in-memory fit."""
    X, truth = make_faces(300, (30, 36), (10, 9), n_faces=3, noise=0.6, random_state=9)
    np.save(tmp_path / "s.npy", X)
    mm, _ = load_stack(tmp_path / "s.npy")
    assert isinstance(mm, np.memmap)
    kw = dict(n_faces=3, random_state=0, n_init=1, tol=1e-8)
    ref = FaceEM((10, 9), **kw).fit(X)
    got = FaceEM((10, 9), max_memory="1MB", **kw).fit(mm)
    assert np.abs(got.faces_ - ref.faces_).max() <= 1e-10 * np.abs(ref.faces_).max()
    assert got.lower_bounds_ == pytest.approx(ref.lower_bounds_, rel=1e-12)
    assert np.array_equal(got.predict_face(X), ref.predict_face(X))
