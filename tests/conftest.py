import os

import numpy as np
import pytest

from emface.model import Params


def optional(module):
    """Import an optional dependency; CI sets EMFACE_REQUIRE_OPTIONAL=1 so a missing one fails."""
    if os.environ.get("EMFACE_REQUIRE_OPTIONAL") == "1":
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


def random_problem(rng, K, H, W, h, w, *, zeros_in_prior=True, s=None):
    """Random θ (A with zeros) and images drawn from it."""
    P, Q = H - h + 1, W - w + 1
    F = rng.normal(size=(h, w))
    B = rng.normal(size=(H, W))
    A = rng.random((P, Q)) + 0.05
    if zeros_in_prior and P * Q > 2:
        flat = A.ravel()
        flat[rng.choice(P * Q, size=max(1, P * Q // 4), replace=False)] = 0.0
    A /= A.sum()
    s = float(rng.uniform(0.5, 2.0)) if s is None else s
    theta = Params(F, B, s, A)
    X, pos = sample_images(rng, theta, K)
    return theta, X, pos


def sample_images(rng, theta, K, noise=True):
    P, Q = theta.prior.shape
    h, w = theta.face.shape
    flat = rng.choice(P * Q, size=K, p=theta.prior.ravel())
    pos = np.stack([flat // Q, flat % Q], axis=1)
    X = np.repeat(theta.background[None], K, axis=0)
    for k, (i, j) in enumerate(pos):
        X[k, i:i + h, j:j + w] = theta.face
    if noise:
        X = X + rng.normal(0.0, theta.noise_std, size=X.shape)
    return X, pos


def contrast_problem(rng, K, H, W, h, w, s, prior=None):
    """A face of strong structure on a textured background, values 0..255."""
    P, Q = H - h + 1, W - w + 1
    yy, xx = np.mgrid[0:h, 0:w]
    F = 128 + 100 * np.sin(yy / 2.0) * np.cos(xx / 3.0) + rng.uniform(-20, 20, (h, w))
    B = rng.uniform(60, 200, (H, W))
    A = np.full((P, Q), 1.0 / (P * Q)) if prior is None else prior
    theta = Params(F, B, s, A)
    X, pos = sample_images(rng, theta, K)
    return theta, X, pos


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
