import importlib.util
import os
import zlib

import numpy as np
import pytest

from emface.engine.records import Params


def optional(module):
    """Import an optional dependency; CI sets EMFACE_REQUIRE_OPTIONAL=1 so a missing one fails."""
    if os.environ.get("EMFACE_REQUIRE_OPTIONAL") == "1":
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


def ref_args(theta):
    """θ (engine layout) as the brute-force reference takes it: F (C,h,w,Ch), B (H,W,Ch), s (Ch,), A (C,P,Q)."""
    return (np.moveaxis(theta.faces, 1, -1), np.moveaxis(theta.background, 0, -1), theta.noise_std,
            theta.prior)


def as_ref(F=None, B=None):
    """Engine-layout faces (C,Ch,h,w) or background (Ch,H,W) in the reference's layout."""
    if F is not None:
        return np.moveaxis(F, 1, -1)
    return np.moveaxis(B, 0, -1)


def random_problem(rng, K, H, W, h, w, *, n_faces=1, n_channels=1, zeros_in_prior=True, s=None,
                   empty_face=False, per_channel=False):
    """Random θ (A with zeros; optionally a face with no weight at all) and images drawn from it.

    Returns θ (engine layout), X ((K, H, W) for one channel, else (K, H, W, Ch)),
    and the true labels and positions.
    """
    C, Ch = n_faces, n_channels
    P, Q = H - h + 1, W - w + 1
    F = rng.normal(size=(C, Ch, h, w))
    B = rng.normal(size=(Ch, H, W))
    A = rng.random((C, P, Q)) + 0.05
    if zeros_in_prior and P * Q > 2:
        for c in range(C):
            A[c].ravel()[rng.choice(P * Q, size=max(1, P * Q // 4), replace=False)] = 0.0
    if empty_face and C > 1:
        A[-1] = 0.0
    A /= A.sum()
    if s is None:
        s = rng.uniform(0.5, 2.0, size=Ch) if per_channel else float(rng.uniform(0.5, 2.0))
    theta = Params(F, B, s, A)
    X, labels, pos = sample_images(rng, theta, K)
    return theta, X, labels, pos


def sample_images(rng, theta, K, noise=True):
    """Images drawn from θ in the user's layout, with their faces and positions."""
    C, P, Q = theta.prior.shape
    Ch, h, w = theta.faces.shape[1:]
    flat = rng.choice(C * P * Q, size=K, p=theta.prior.ravel())
    labels, rem = flat // (P * Q), flat % (P * Q)
    pos = np.stack([rem // Q, rem % Q], axis=1)
    X = np.repeat(theta.background[None], K, axis=0)
    for k, (i, j) in enumerate(pos):
        X[k, :, i:i + h, j:j + w] = theta.faces[labels[k]]
    if noise:
        X = X + rng.normal(size=X.shape) * theta.noise_std[None, :, None, None]
    X = X[:, 0] if Ch == 1 else np.moveaxis(X, 1, -1)
    return X, labels, pos


def contrast_problem(rng, K, H, W, h, w, s, prior=None):
    """One grey face of strong structure on a textured background, values 0..255."""
    P, Q = H - h + 1, W - w + 1
    yy, xx = np.mgrid[0:h, 0:w]
    F = 128 + 100 * np.sin(yy / 2.0) * np.cos(xx / 3.0) + rng.uniform(-20, 20, (h, w))
    B = rng.uniform(60, 200, (H, W))
    A = np.full((P, Q), 1.0 / (P * Q)) if prior is None else prior
    theta = Params(F, B, s, A)
    X, _, pos = sample_images(rng, theta, K)
    return theta, X, pos


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ----------------------------------------------------------------------------- the engine's reference tests

#: every backend and correlation route the reference tests hold to the brute force
ROUTES = [("numba", "fft"), ("numba", "direct"), ("numpy", "fft"), ("numpy", "direct")]
if importlib.util.find_spec("torch") is not None:
    ROUTES.append(("torch", "fft"))
RTOL = 1e-10


def seed_of(*parts):
    """A seed that depends on a test case's parameters only (stable across runs and processes)."""
    return zlib.crc32(repr(parts).encode())


def close(a, b, rtol=RTOL):
    """Same shape, and equal to `rtol` times the largest value of `b`."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return True
    scale = max(np.abs(b).max(), 1e-300)
    return np.abs(a - b).max() <= rtol * scale


def engine_executor(X, face_shape, backend, route, chunk_size=2, dtype=np.float64):
    """A local executor over X in its own units (no standardising), small chunks, the given engine."""
    from emface.executor import EngineConfig, LocalExecutor
    from emface.sources import ArraySource

    src = ArraySource(X, face_shape, standardize=False, chunk_size=chunk_size)
    return LocalExecutor(src, EngineConfig(backend=backend, route=route, dtype=dtype))

