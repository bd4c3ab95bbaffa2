"""The "auto" test on a sample of the frames (`emface.engine.brightness.probe_frames`).

Its cost must not grow with K: it reads about `TEST_FRAMES` frames, the first
ones of chunks spread evenly over the stack, and its statistic is the sum of
the brute force's MAP gains over exactly those frames, with 2 degrees of
freedom per frame.
"""

import warnings

import numpy as np
import pytest
import reference as brute
from conftest import close, random_problem, ref_args, seed_of

from emface import FaceEM
from emface.datasets import make_faces
from emface.engine import Chunk
from emface.engine import brightness as br


def _bounds(K, n):
    return [(a, min(a + n, K)) for a in range(0, K, n)]


@pytest.mark.parametrize("K,n", [(1, 1), (5, 2), (256, 21), (100, 100)])
def test_small_stacks_are_read_whole(K, n):
    bounds = _bounds(K, n)
    assert br.probe_frames(bounds, 256) == [(i, b - a) for i, (a, b) in enumerate(bounds)]


@pytest.mark.parametrize("K,n,size", [(2000, 21, 256), (20000, 1000, 256), (257, 1, 256), (5000, 7, 100),
                                      (1000, 600, 256), (300, 50, 10)])
def test_a_large_stack_gives_about_size_frames_over_chunks_spread_evenly(K, n, size):
    bounds = _bounds(K, n)
    sample = br.probe_frames(bounds, size)
    ids = [i for i, _ in sample]
    assert ids == sorted(set(ids)) and ids[0] == 0 and ids[-1] == len(bounds) - 1
    assert len(ids) == min(len(bounds), max(8, -(-size // n)))
    for i, m in sample:
        assert 1 <= m <= bounds[i][1] - bounds[i][0]
    total = sum(m for _, m in sample)
    short = n - (bounds[-1][1] - bounds[-1][0])  # the last chunk may be short
    assert size - short <= total <= size + len(ids) and total < K
    gaps = np.diff(ids)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced
    assert br.probe_frames(bounds, size) == sample  # the stack's shape alone decides


class _Source:
    """The two things `probe_sample` asks of a source: its chunks' bounds, and chunk i."""

    def __init__(self, raw, n, offset, inv_scale):
        self.raw, self.bounds, self.offset, self.inv_scale = raw, _bounds(len(raw), n), offset, inv_scale

    def chunk(self, i):
        a, b = self.bounds[i]
        return Chunk(self.raw[a:b], self.offset, self.inv_scale)


@pytest.mark.parametrize("Ch,C", [(1, 1), (3, 2)])
def test_probe_sample_is_the_brute_force_gain_of_the_sampled_frames(Ch, C):
    rng = np.random.default_rng(seed_of("brightness sample", Ch, C))
    K = 23
    theta, X, labels, pos = random_problem(rng, K, 7, 8, 3, 4, n_faces=C, n_channels=Ch)
    labels = labels.copy()
    labels[6] = -1  # "no face": μ = B (frame 6 opens the third chunk: it is sampled)
    X = X if X.ndim == 4 else X[..., None]
    src = _Source(X / 0.5 + 3.0, 3, 3.0, 0.5)  # raw frames, x = (raw - 3)·0.5
    size = 9
    got, n = br.probe_sample(src, theta, pos, labels, size)
    frames = [src.bounds[i][0] + r for i, m in br.probe_frames(src.bounds, size) for r in range(m)]
    assert n == len(frames) < K and 6 in frames
    F, B, s, _ = ref_args(theta)
    assert close(got, sum(brute.map_gain(X[k], F, B, s, labels[k], pos[k]) for k in frames))
    every, n_all = br.probe_sample(src, theta, pos, labels, K)
    assert n_all == K
    assert close(every, sum(brute.map_gain(X[k], F, B, s, labels[k], pos[k]) for k in range(K)))


def _fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FaceEM((8, 8), random_state=0, **kw).fit(X)


@pytest.mark.parametrize("gain", [0.0, 0.3])
def test_the_estimator_tests_a_sample_and_decides_as_on_every_frame(monkeypatch, gain):
    X, _ = make_faces(n_images=300, image_shape=(24, 24), face_shape=(8, 8), noise=1.0, random_state=0)
    rng = np.random.default_rng(2)
    X = X * rng.uniform(1 - gain, 1 + gain, len(X))[:, None, None] + rng.uniform(-gain, gain, len(X))[:, None, None]
    every = _fit(X, brightness="fixed").brightness_test_
    assert every is None  # "fixed" runs no test
    monkeypatch.setattr(br, "TEST_FRAMES", 60)
    est = _fit(X)
    t = est.brightness_test_
    assert 2 * 60 <= t["dof"] < 2 * len(X)  # a sample, not every frame
    assert t["significant"] == (gain > 0) and est.brightness_ == ("per_image" if gain else "fixed")
    monkeypatch.setattr(br, "TEST_FRAMES", 10**6)
    t_all = _fit(X).brightness_test_
    assert t_all["dof"] == 2 * len(X) and t_all["significant"] == t["significant"]
