"""CUDA checks, run on a machine with an NVIDIA GPU (marked gpu; not part of CI)."""

import numpy as np
import pytest

from emface import FaceEM
from emface.datasets import make_faces

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-300)


@pytest.mark.parametrize("hard", [False, True])
def test_cuda_float64_matches_cpu(hard):
    X, _ = make_faces(500, (64, 80), (24, 20), noise=1.0, random_state=1)
    kw = dict(hard=hard, prior_smoothing=50.0 if hard else 0.0, random_state=0, n_init=1)
    a = FaceEM((24, 20), **kw).fit(X)
    b = FaceEM((24, 20), device="cuda", dtype=np.float64, **kw).fit(X)
    assert _rel(b.face_, a.face_) < 1e-9
    assert _rel(b.background_, a.background_) < 1e-9
    assert abs(b.noise_std_ - a.noise_std_) / a.noise_std_ < 1e-9
    assert np.array_equal(b.predict(X), a.predict(X))


def test_cuda_float32_gives_the_cpu_positions():
    X, truth = make_faces(2000, (128, 128), (48, 48), noise=1.0, random_state=2)
    a = FaceEM((48, 48), random_state=0, n_init=1).fit(X)
    b = FaceEM((48, 48), device="cuda", random_state=0, n_init=1).fit(X)
    assert np.array_equal(b.predict(X), a.predict(X))
