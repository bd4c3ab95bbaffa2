"""Quick start: recover a face from noisy images where it sits at unknown positions.

    python examples/quickstart.py
"""

import numpy as np

from emface import FaceEM

rng = np.random.default_rng(0)
K, H, W, h, w, s = 500, 40, 50, 16, 14, 40.0

# the truth: a structured face on a textured background, pasted at random places
yy, xx = np.mgrid[0:h, 0:w]
face = 128 + 90 * np.sin(yy / 2.5) * np.cos(xx / 3.0)
background = rng.uniform(40, 220, (H, W))
rows = rng.integers(0, H - h + 1, K)
cols = rng.integers(0, W - w + 1, K)
X = np.repeat(background[None], K, axis=0)
for k in range(K):
    X[k, rows[k]:rows[k] + h, cols[k]:cols[k] + w] = face
X += rng.normal(0, s, X.shape)

est = FaceEM((h, w), random_state=0).fit(X)  # defaults: data-driven start, shift escape
pos = est.predict(X)
print(f"positions exactly right: {np.mean((pos[:, 0] == rows) & (pos[:, 1] == cols)):.1%}")
print(f"noise: estimated {est.noise_std_:.2f}, true {s}")
print(f"face RMS error: {np.sqrt(np.mean((est.face_ - face) ** 2)):.2f} (noise {s} per pixel)")
print(f"{est.n_iter_} iterations, {est.fit_time_:.2f} s, objective {est.lower_bound_:.2f} per image")
