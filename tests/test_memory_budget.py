"""The default spectrum cache: every spectrum for a small stack, at most the data's size for a large one
(issue 21, item 14: peak RSS at K = 40,000 of 64x64 float32 had grown to 3x the data)."""

import numpy as np
import pytest

import emface.sources as sources
from emface import FaceEM
from emface.datasets import make_faces
from emface.engine import costs
from emface.sources import ArraySource, spectrum_bytes_per_image

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")

GiB = 2**30


@pytest.fixture(autouse=True)
def _plenty_of_memory(monkeypatch):
    # the budget never takes more than half the available memory: make that bound inactive here
    monkeypatch.setattr(sources, "available_memory", lambda: 64 * GiB)


def _lazy_source(K, image_shape, face_shape, dtype, n_channels=1, **kw):
    """A source over K images that take no memory (a broadcast view: its plan is made without reading them)."""
    shape = (K, *image_shape) + ((n_channels,) if n_channels > 1 else ())
    X = np.broadcast_to(np.zeros((1,) + shape[1:], dtype=dtype), shape)
    return ArraySource(X, face_shape, moments=(0.0, 1.0), check_finite=False, **kw), X


def test_large_float32_stack_caches_at_most_its_own_size():
    """K = 40,000 of 64x64 float32 (the issue's case): all spectra would be 2.06 times the data."""
    src, X = _lazy_source(40_000, (64, 64), (8, 8), np.float32)
    every = 40_000 * spectrum_bytes_per_image((64, 64), np.float64)
    assert every > 2 * X.nbytes
    assert src.cache_budget == int(costs.CACHE_SHARE_OF_DATA * X.nbytes)
    assert 0 < src.planned_cache_bytes <= src.cache_budget
    # whole chunks are kept: the plan falls short of the budget by less than one chunk
    assert src.cache_budget - src.planned_cache_bytes < src.chunk_size * every // 40_000


@pytest.mark.parametrize("K", [60_000, 200_000])
def test_larger_stacks_stay_within_their_size(K):
    src, X = _lazy_source(K, (64, 64), (24, 24), np.float32)
    assert src.planned_cache_bytes <= X.nbytes


@pytest.mark.parametrize("K, image_shape, face_shape, dtype, n_channels", [
    (1000, (100, 200), (100, 73), np.float64, 1),   # the speed table's shapes
    (500, (100, 80), (40, 30), np.float64, 1),
    (2000, (128, 128), (48, 48), np.float64, 1),
    (2000, (128, 128), (48, 48), np.float64, 3),    # colour: spectra a little larger than the data
    (2000, (128, 128), (48, 48), np.uint8, 3),      # uint8: spectra 16 times the data
    (30_000, (64, 64), (8, 8), np.float32, 1),      # all spectra just under 1 GiB
])
def test_small_stacks_cache_every_spectrum(K, image_shape, face_shape, dtype, n_channels):
    src, _ = _lazy_source(K, image_shape, face_shape, dtype, n_channels)
    every = K * spectrum_bytes_per_image(image_shape, np.float64, n_channels)
    assert every <= costs.DEFAULT_CACHE_BYTES
    assert src.planned_cache_bytes == every


def test_a_small_stack_beside_large_spectra_fills_the_default_amount():
    """3,000 colour uint8 images of 128x128: 147 MB of data, 1.2 GB of spectra. Data and cache share 1 GiB."""
    src, X = _lazy_source(3000, (128, 128), (48, 48), np.uint8, 3)
    assert src.cache_budget == costs.DEFAULT_CACHE_BYTES - X.nbytes
    assert X.nbytes < src.planned_cache_bytes <= costs.DEFAULT_CACHE_BYTES - X.nbytes


def test_default_cache_budget_rules():
    f = costs.default_cache_budget
    assert f(100, 500) == 500                                   # all fit
    assert f(10**9, 2 * 10**9) == 8 * 10**8                     # four fifths of the data's size
    assert f(10**8, 2 * GiB) == GiB - 10**8                     # what is left beside the data
    assert f(10**9, 2 * 10**9, available=10**9) == 5 * 10**8   # half the available memory at most
    for data in (1, 10**6, 10**8, 5 * 10**8, 10**9, 10**10):
        for ratio in (1.02, 2.06, 16.5):
            spectra = int(ratio * data)
            b = f(data, spectra)
            assert 0 <= b <= spectra
            assert (b <= max(costs.CACHE_SHARE_OF_DATA * data, costs.DEFAULT_CACHE_BYTES - data)
                    or b == spectra <= costs.DEFAULT_CACHE_BYTES)


def test_max_memory_still_sets_the_budget():
    src, _ = _lazy_source(40_000, (64, 64), (8, 8), np.float32, max_memory="200MB")
    assert src.planned_cache_bytes <= src.cache_budget <= 0.6 * 200e6


def test_a_partial_default_cache_fits_the_same_model(monkeypatch):
    """With the default amount made tiny, the default cache holds only part of the spectra (at most four
    fifths of the data's size, whole chunks); the fit equals the fully cached one to 1e-10."""
    X, _ = make_faces(2000, (30, 36), (12, 10), noise=0.6, random_state=3)
    X = X.astype(np.float32)
    full = FaceEM((12, 10), random_state=0, n_init=1, max_iter=8).fit(X)
    monkeypatch.setattr(costs, "DEFAULT_CACHE_BYTES", 2**16)
    src = ArraySource(X, (12, 10))
    assert 0 < src.planned_cache_bytes <= X.nbytes < len(X) * spectrum_bytes_per_image((30, 36), np.float64)
    part = FaceEM((12, 10), random_state=0, n_init=1, max_iter=8).fit(X)
    assert np.abs(part.face_ - full.face_).max() <= 1e-10 * np.abs(full.face_).max()
    assert part.lower_bounds_ == pytest.approx(full.lower_bounds_, rel=1e-12)
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(part.lower_bounds_, part.lower_bounds_[1:]))
