"""Real frames (issue 19): stacks made from photographs that break the model one way at a time. Run by hand:

    python benchmarks/real_frames.py              # 1,000 frames of 128x128, a 48x48 face, noise = contrast
    python benchmarks/real_frames.py --quick      # 200 frames of 64x64, a 24x24 face (to try it)
    python benchmarks/real_frames.py --only jpeg rotation   # some deviations
    python benchmarks/real_frames.py --seed 3     # other draws

Every stack is the bundled "astronaut" face on the "camera" background (grey),
each frame showing the face once at a uniform position, with Gaussian noise
equal to the face's contrast -- the note's model -- except for one deviation,
at a mild, a typical and a strong level:

- brightness: each frame ``a·X + b`` (gain a, offset b in units of the noise);
- rotation: the face's inscribed disc turned by a uniform angle within ±5°,
  ±15° or any angle; the window's corners outside the disc show the background;
- sub-pixel: the face shifted by a uniform fraction of a pixel in each
  direction (truth: the nearest whole corner);
- scale: the face zoomed about its centre by a uniform factor within ±5, ±10 or ±15%;
- occlusion: a random rectangle covering 10, 25 or 40% of the face replaced by
  a flat grey of a random level;
- drift: the background pans slowly, frame by frame, up to 2, 5 or 10 pixels
  over the stack;
- gradient: a linear lighting ramp of random direction per frame, its
  amplitude 0.5, 1 or 2 times the contrast from edge to edge;
- jpeg: every frame saved as an 8-bit JPEG (quality 90, 50, 20) and read back;
- poisson: photon noise instead of Gaussian noise, at a mean level where its
  standard deviation is 0.5, 1 or 2 times the contrast.

Columns, for each fit (default ``FaceEM((h, w))``, and the new options of
issue 19 when the installed emface has them: ``brightness="fixed"`` (today's
model, when the default is something else), ``brightness="per_image"``, and
``rotations=36`` on the rotation rows):

- exact: positions exactly right (the window's top-left corner);
- ≤1px: positions within one pixel in each direction;
- corr: the correlation of the fitted face with the true (upright, unscaled,
  unoccluded) face; on the rotation rows, the best over turns of the fitted
  face in steps of 5° on the inscribed disc (a rotations fit is right up to one
  global angle);
- time: the fit's wall time on this machine.

The markdown table is printed and saved to ``benchmarks/results/real_frames.md``
(``real_frames-quick.md`` with ``--quick``; the folder is git-ignored).
"""

from __future__ import annotations

import argparse
import inspect
import io
import os
import time
import warnings

import numpy as np
from scipy import ndimage

from _common import cpu_count
from emface import FaceEM
from emface.datasets import photo

FACE, BACKGROUND = "astronaut", "camera"
FULL = dict(K=1000, image_shape=(128, 128), face_shape=(48, 48))
QUICK = dict(K=200, image_shape=(64, 64), face_shape=(24, 24))
LEVELS = ("mild", "typical", "strong")

# deviation: its three levels (mild, typical, strong), and what they mean, for the table
DEVIATIONS = {
    "none": ((None,), "the note's model"),
    "brightness": (((0.1, 0.3), (0.3, 1.0), (0.5, 2.0)), "gain 1±{0}, offset ±{1}×noise"),
    "rotation": ((5.0, 15.0, 180.0), "angle ±{0}°"),
    "sub-pixel": ((0.2, 0.35, 0.5), "shift ±{0} px"),
    "scale": ((0.05, 0.10, 0.15), "zoom 1±{0}"),
    "occlusion": ((0.10, 0.25, 0.40), "{0:.0%} of the face hidden"),
    "drift": ((2, 5, 10), "background pans {0} px"),
    "gradient": ((0.5, 1.0, 2.0), "ramp {0}×contrast"),
    "jpeg": ((90, 50, 20), "JPEG quality {0}"),
    "poisson": ((0.5, 1.0, 2.0), "Poisson, noise {0}×contrast"),
}


# ---------------------------------------------------------------------------------------------- stacks
class Stack:
    """The photographs at the sizes of a run, and the pieces every deviation draws from."""

    def __init__(self, K, image_shape, face_shape, seed):
        self.K, (self.H, self.W), (self.h, self.w) = K, image_shape, face_shape
        self.rng = np.random.default_rng(seed)
        self.face = photo(FACE, (self.h, self.w))
        self.background = photo(BACKGROUND, (self.H + 2 * 10, self.W + 2 * 10))  # a margin for the drift
        self.contrast = float(self.face.std())
        self.rows = self.rng.integers(0, self.H - self.h + 1, K)
        self.cols = self.rng.integers(0, self.W - self.w + 1, K)

    def bg(self, di=0, dj=0):
        m = 10
        return self.background[m + di:m + di + self.H, m + dj:m + dj + self.W]

    def paste(self, faces, backgrounds=None):
        """Frames: each background (or the fixed one) with its face at the stack's corners, float64."""
        X = np.empty((self.K, self.H, self.W))
        for k in range(self.K):
            X[k] = self.bg() if backgrounds is None else backgrounds[k]
            i, j = self.rows[k], self.cols[k]
            X[k, i:i + self.h, j:j + self.w] = faces[k] if faces.ndim == 3 else faces
        return X

    def noise(self, X, level=1.0):
        return X + self.rng.normal(0.0, level * self.contrast, X.shape)


def _transformed_faces(st, matrices, shifts=None):
    """The face under an affine map about its centre per frame (order-1 interpolation, edges reflected)."""
    centre = np.array([(st.h - 1) / 2, (st.w - 1) / 2])
    out = np.empty((st.K, st.h, st.w))
    for k in range(st.K):
        M = matrices[k]
        offset = centre - M @ centre - (M @ shifts[k] if shifts is not None else 0.0)
        out[k] = ndimage.affine_transform(st.face, M, offset=offset, order=1, mode="reflect")
    return out


def _rotation(deg):
    t = np.deg2rad(deg)
    # scipy.ndimage.rotate's sense (counter-clockwise on screen) for output -> input coordinates
    return np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])


def make(st, kind, level):
    """(X, note) for deviation `kind` at `level` (see DEVIATIONS)."""
    rng = st.rng
    K = st.K
    if kind == "none":
        return st.noise(st.paste(st.face))
    if kind == "brightness":
        g, o = level
        X = st.noise(st.paste(st.face))
        a = rng.uniform(1 - g, 1 + g, K)[:, None, None]
        b = rng.uniform(-o, o, K)[:, None, None] * st.contrast
        return a * X + b
    if kind == "rotation":
        angles = rng.uniform(-level, level, K)
        faces = _transformed_faces(st, [_rotation(a) for a in angles])
        # outside the inscribed disc the window shows the background (the model of issue 19's rotations)
        yy, xx = np.mgrid[:st.h, :st.w]
        disc = (yy - (st.h - 1) / 2) ** 2 + (xx - (st.w - 1) / 2) ** 2 <= (min(st.h, st.w) / 2) ** 2
        X = st.paste(st.face)  # the background under every window, then the turned disc over it
        for k in range(K):
            i, j = st.rows[k], st.cols[k]
            win = X[k, i:i + st.h, j:j + st.w]
            win[:] = st.bg()[i:i + st.h, j:j + st.w]
            win[disc] = faces[k][disc]
        return st.noise(X)
    if kind == "sub-pixel":
        d = rng.uniform(-level, level, (K, 2))
        faces = _transformed_faces(st, [np.eye(2)] * K, shifts=-d)
        return st.noise(st.paste(faces))
    if kind == "scale":
        z = rng.uniform(1 - level, 1 + level, K)
        faces = _transformed_faces(st, [np.eye(2) / zk for zk in z])
        return st.noise(st.paste(faces))
    if kind == "occlusion":
        faces = np.repeat(st.face[None], K, axis=0)
        lo, hi = st.face.min(), st.face.max()
        for k in range(K):
            aspect = rng.uniform(0.5, 2.0)
            area = level * st.h * st.w
            rh = int(np.clip(round(np.sqrt(area * aspect)), 1, st.h))
            rw = int(np.clip(round(area / rh), 1, st.w))
            i = rng.integers(0, st.h - rh + 1)
            j = rng.integers(0, st.w - rw + 1)
            faces[k, i:i + rh, j:j + rw] = rng.uniform(lo, hi)
        return st.noise(st.paste(faces))
    if kind == "drift":
        t = np.linspace(0.0, 1.0, K)
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        steps = np.round(np.outer(t, direction) * level).astype(int)
        return st.noise(st.paste(st.face, [st.bg(*steps[k]) for k in range(K)]))
    if kind == "gradient":
        yy, xx = np.mgrid[:st.H, :st.W]
        yy = yy / (st.H - 1) - 0.5
        xx = xx / (st.W - 1) - 0.5
        th = rng.uniform(0, 2 * np.pi, K)
        ramp = (np.cos(th)[:, None, None] * yy + np.sin(th)[:, None, None] * xx) * level * st.contrast
        return st.noise(st.paste(st.face)) + ramp
    if kind == "jpeg":
        from PIL import Image

        X = np.clip(np.round(st.noise(st.paste(st.face))), 0, 255).astype(np.uint8)
        out = np.empty(X.shape, dtype=np.uint8)
        for k in range(K):
            buf = io.BytesIO()
            Image.fromarray(X[k]).save(buf, format="JPEG", quality=int(level))
            buf.seek(0)
            out[k] = np.asarray(Image.open(buf))
        return out
    if kind == "poisson":
        # counts c·mean: std sqrt(c·m) at the face's mean level m equals `level` times the contrast c·σ
        mean = st.paste(st.face)
        m = float(st.face.mean())
        c = m / (level * st.contrast) ** 2
        return rng.poisson(c * mean).astype(np.float64)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------- scoring
def _disc(h, w):
    yy, xx = np.mgrid[:h, :w]
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (min(h, w) / 2 - 1) ** 2


def correlation(est_face, true_face, turn=False):
    """Pearson correlation of two faces; with `turn`, the best over turns of the fitted face, on the disc."""
    F = np.asarray(est_face, dtype=np.float64)
    if F.ndim == 3:
        F = F[..., 0] if F.shape[-1] == 1 else F.mean(axis=-1)
    if not turn:
        return float(np.corrcoef(F.ravel(), true_face.ravel())[0, 1])
    disc = _disc(*F.shape)
    best = -1.0
    for a in range(0, 360, 5):
        R = ndimage.rotate(F, a, reshape=False, order=1, mode="nearest")
        best = max(best, float(np.corrcoef(R[disc], true_face[disc])[0, 1]))
    return best


def options():
    """The fits of a row: today's default, and issue 19's options when this emface has them."""
    params = inspect.signature(FaceEM).parameters
    fits = [("default", {})]
    if "brightness" in params:
        if params["brightness"].default != "fixed":
            fits.append(("brightness=fixed", dict(brightness="fixed")))
        fits.append(("brightness=per_image", dict(brightness="per_image")))
    if "rotations" in params:
        fits.append(("rotations=36", dict(rotations=36)))
    return fits


def run_fit(X, st, kw, turn, seed):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM((st.h, st.w), random_state=seed, **kw).fit(X)
    dt = time.perf_counter() - t
    pos = np.asarray(est.positions_)
    truth = np.stack([st.rows, st.cols], axis=1)
    exact = float(np.mean((pos == truth).all(axis=1)))
    near = float(np.mean((np.abs(pos - truth) <= 1).all(axis=1)))
    corr = correlation(est.face_, st.face, turn)
    return exact, near, corr, dt


def main(quick=False, seed=0, only=None, out=None):
    sizes = QUICK if quick else FULL
    K, (H, W), (h, w) = sizes["K"], sizes["image_shape"], sizes["face_shape"]
    fits = options()
    load = os.getloadavg()[0]
    lines = [f"Real frames: {K} frames of {H}x{W}, a {h}x{w} '{FACE}' face on '{BACKGROUND}', noise = the face's "
             f"contrast, seed {seed}; {cpu_count()} core(s), load average {load:.1f} at the start.", "",
             "| deviation | level | what | fit | exact | ≤1px | corr | time |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                              "real_frames-quick.md" if quick else "real_frames.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def save():  # after every row: an interrupted run keeps what it measured
        with open(out, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    # untimed fits on 40 frames of these sizes, float and 8-bit (JPEG): compiling is charged to no row
    warm = Stack(40, (H, W), (h, w), seed)
    for _, kw in fits:
        for kind, level in (("none", None), ("jpeg", 90)):
            run_fit(make(warm, kind, level), warm, kw, False, seed)
    for kind, (levels, what) in DEVIATIONS.items():
        if only and kind not in only:
            continue
        for li, level in enumerate(levels):
            st = Stack(K, (H, W), (h, w), seed)
            X = make(st, kind, level)
            desc = what.format(*level) if isinstance(level, tuple) else what.format(level)
            if kind == "rotation" and level >= 180:
                desc = "any angle"
            for name, kw in fits:
                if "rotations" in kw and kind != "rotation":
                    continue  # 36 angles cost many translation fits: only where the frames turn
                exact, near, corr, dt = run_fit(X, st, kw, kind == "rotation", seed)
                lvl = "-" if kind == "none" else LEVELS[li]
                line = (f"| {kind} | {lvl} | {desc} | {name} | {exact:.1%} | {near:.1%} | {corr:.3f} | "
                        f"{dt:.1f} s |")
                lines.append(line)
                print(line, flush=True)
                save()
    lines.append("")
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.1f}.")
    print(lines[-1])
    save()
    print(f"saved {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 frames of 64x64, a 24x24 face")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=sorted(DEVIATIONS), help="these deviations alone")
    ap.add_argument("--out", help="where to save the table (default: benchmarks/results/)")
    a = ap.parse_args()
    main(a.quick, a.seed, a.only, a.out)
