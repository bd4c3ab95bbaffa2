"""The torch backend, run on the CPU, agrees with the numpy engine (float64: to 1e-10)."""


import numpy as np
import pytest

import reference as ref
from conftest import optional, random_problem, ref_args
from emface import FaceEM
from emface.datasets import make_faces
from emface.engine import params_from
from emface.executor import EngineConfig, LocalExecutor
from emface.sources import ArraySource

torch = optional("torch")

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")


def _rel(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def _ex(X, fs, backend, dtype=np.float64, device="cpu"):
    return LocalExecutor(ArraySource(X, fs, standardize=False, chunk_size=4),
                         EngineConfig(backend=backend, dtype=dtype, device=device))


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("model", [(1, 1), (3, 2)])
@pytest.mark.parametrize("shape", [(9, 7, 11, 3, 4), (6, 8, 15, 8, 5), (5, 6, 6, 6, 6)])
def test_torch_cpu_float64_matches_numpy_engine(shape, model, hard):
    K, H, W, h, w = shape
    rng = np.random.default_rng(sum(shape) + hard)
    theta, X, _, _ = random_problem(rng, K, H, W, h, w, n_faces=model[0], n_channels=model[1])
    a = _ex(X, (h, w), "numpy").pass_stats(theta, hard=hard)
    b = _ex(X, (h, w), "torch").pass_stats(theta, hard=hard)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.labels, b.labels)
    assert abs(a.loglik - b.loglik) <= 1e-10 * abs(a.loglik)
    pa, _ = params_from(a, theta)
    pb, _ = params_from(b, theta)
    for u, v in ((pa.faces, pb.faces), (pa.prior, pb.prior)):
        assert _rel(v, u) < 1e-10
    # B = (SX - XC) / (K - C) is ill-conditioned where the background is almost never
    # seen; compare where it is seen in at least a thousandth of an image
    from emface.engine.kernels import coverage

    seen = (K - coverage(a.N.sum(axis=0), (h, w))) > 1e-3
    if seen.any():  # a face as large as the image leaves no background to compare
        assert _rel(pb.background[:, seen], pa.background[:, seen]) < 1e-10
    assert np.all(np.abs(pa.noise_std - pb.noise_std) <= 1e-10 * pa.noise_std)


def test_torch_posterior_and_log_joint_against_the_reference():
    rng = np.random.default_rng(2)
    theta, X, _, _ = random_problem(rng, 5, 8, 9, 3, 3, n_faces=2, n_channels=3)
    ex = _ex(X, (3, 3), "torch")
    _, q = ex.collect(theta, output="q")
    qr = ref.posterior(X, *ref_args(theta))
    assert np.abs(q - qr).max() < 1e-10
    _, lj = ex.collect(theta, output="log_joint")
    want = ref.log_joint(X, *ref_args(theta))
    fin = np.isfinite(want)
    assert np.array_equal(np.isfinite(lj), fin)
    assert _rel(lj[fin], want[fin]) < 1e-10


@pytest.mark.parametrize("hard", [False, True])
def test_torch_fit_equals_cpu_fit(hard):
    X, truth = make_faces(200, (30, 36), (12, 10), noise=0.8, random_state=5)
    kw = dict(hard=hard, prior_smoothing=20.0 if hard else 0.0, random_state=0, n_init=1)
    a = FaceEM((12, 10), **kw).fit(X)
    b = FaceEM((12, 10), backend="torch", **kw).fit(X)
    assert _rel(b.face_, a.face_) < 1e-10
    assert _rel(b.background_, a.background_) < 1e-10
    assert _rel(b.lower_bounds_, a.lower_bounds_) < 1e-10
    assert np.array_equal(b.predict(X), a.predict(X))


def test_torch_float32_gives_the_float64_positions():
    X, truth = make_faces(300, (40, 48), (16, 12), noise=1.0, random_state=6)
    a = FaceEM((16, 12), random_state=0, n_init=1).fit(X)
    b = FaceEM((16, 12), backend="torch", dtype=np.float32, random_state=0, n_init=1).fit(X)
    assert np.array_equal(b.predict(X), a.predict(X))
    assert _rel(b.face_, a.face_) < 1e-4


def test_gpu_default_precision_is_float32():
    """dtype=None: float32 correlations on a GPU, float64 on the CPU (the docstring and README say so)."""
    assert FaceEM((3, 3))._compute_dtype() == np.float64
    assert FaceEM((3, 3), device="cuda")._compute_dtype() == np.float32
    assert FaceEM((3, 3), device="cuda:1", dtype=np.float64)._compute_dtype() == np.float64
    import inspect

    assert inspect.signature(FaceEM).parameters["dtype"].default is None


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # pragma: no cover
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        FaceEM((3, 3), device="cuda").fit(np.zeros((2, 6, 6)))
