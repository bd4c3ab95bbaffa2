"""Figures and pictures: PNGs of the faces, the background, the prior, the objective, the face sizes tried,
the misfits and the worst frames, and the demo's grid (matplotlib, off screen).

`write_fit_pictures` and `write_misfit_pictures` write a fit's pictures through the one atomic
writer (`emface.outputs`); `emface.report` puts them on the HTML page.
"""

from __future__ import annotations

import io
import os

import numpy as np

from .estimator import MISFIT_Z
from .io import to_uint8
from .outputs import all_or_nothing, atomic_open

__all__ = [
    "displayable",
    "prior_figure",
    "faces_figure",
    "objective_figure",
    "size_figure",
    "grid_figure",
    "png_bytes",
    "image_png",
    "write_fit_pictures",
    "misfit_figure",
    "worst_frames_figure",
    "write_misfit_pictures",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig):
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def displayable(img):
    """A picture to show: (H, W) grey or (H, W, 3) RGB as they are, one channel as grey, and any other
    number of channels side by side, each as grey (a fluorescence microscope's channels, say)."""
    img = np.asarray(img)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3):
        return img
    if img.shape[-1] == 1:
        return img[..., 0]
    gap = np.full((img.shape[0], 1), np.nan)
    parts = []
    for c in range(img.shape[-1]):
        parts += [img[..., c], gap] if c < img.shape[-1] - 1 else [img[..., c]]
    return np.concatenate(parts, axis=1)


def image_png(img, lo=None, hi=None, min_size=0):
    """A picture (see `displayable`) as 8-bit PNG bytes, enlarged by whole pixels to `min_size`."""
    import imageio.v3 as iio

    img = displayable(img)
    if np.isnan(img).any():  # the gaps between channels: white
        img = np.where(np.isnan(img), np.nanmax(img) if hi is None else hi, img)
    u8 = to_uint8(img, lo, hi)
    side = max(u8.shape[:2])
    if min_size and side < min_size:
        f = int(np.ceil(min_size / side))
        u8 = np.repeat(np.repeat(u8, f, axis=0), f, axis=1)
    return iio.imwrite("<bytes>", u8, extension=".png")


def _show(ax, img, lo, hi):
    """Show a picture (see `displayable`) with a shared display range."""
    img = displayable(img)
    if img.ndim == 3:
        ax.imshow(to_uint8(img, lo, hi), interpolation="nearest")
    else:
        ax.imshow(np.ma.masked_invalid(img), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _weight_order(weights):
    return [int(c) for c in np.argsort(-np.asarray(weights), kind="stable")]


def prior_figure(prior, weights=None):
    """The prior over positions as a heat map; one panel per face (heaviest first) for (C, P, Q)."""
    plt = _plt()
    prior = np.asarray(prior)
    priors = prior[None] if prior.ndim == 2 else prior
    C, P, Q = priors.shape
    order = _weight_order(priors.sum(axis=(1, 2)) if weights is None else weights)
    cols = min(C, 4)
    rows = int(np.ceil(C / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols if C == 1 else 3.4 * cols,
                                                   (4.2 if P > 1 else 2.2) if C == 1 else 3.0 * rows),
                             squeeze=False)
    aspect = "auto" if P == 1 or Q == 1 else "equal"
    vmax = float(priors.max()) if priors.size else 1.0
    for ax in axes.ravel()[C:]:
        ax.axis("off")
    for ax, c in zip(axes.ravel(), order):
        im = ax.imshow(priors[c], cmap="magma", aspect=aspect, interpolation="nearest", vmin=0, vmax=vmax)
        ax.set_title("prior A over the face's top-left corner" if C == 1 else
                     f"face {c}: weight {priors[c].sum():.3f}", fontsize=10 if C == 1 else 9)
        if C == 1:
            ax.set_xlabel("column")
            ax.set_ylabel("row")
    bar = fig.colorbar(im, ax=axes.ravel().tolist(), label="probability")
    bar.formatter.set_powerlimits((-2, 3))  # 1e-4-sized probabilities as "x 1e-4", not a column of "0.00"
    bar.update_ticks()
    return fig


def faces_figure(faces, weights, lo=None, hi=None):
    """Every face with its weight, heaviest first (faces (C, h, w) or (C, h, w, 3))."""
    plt = _plt()
    C = len(faces)
    cols = min(C, 8)
    rows = int(np.ceil(C / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel()[C:]:
        ax.axis("off")
    for ax, c in zip(axes.ravel(), _weight_order(weights)):
        _show(ax, faces[c], lo, hi)
        ax.set_title(f"face {c}\nweight {weights[c]:.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def size_figure(scores, chosen=None):
    """The face-size criterion over the sizes tried (higher is better).

    A coarse search's scores (on shrunk images) and a fine walk's (on the
    full images) are on different scales: each stage gets its own panels.
    Sizes on a 2-D grid are a heat map; the fine walk, which moves one side
    of the window at a time, is shown as the criterion against h and against
    w through the chosen size.

    Parameters
    ----------
    scores : list of dict
        Each with ``shape`` (h, w) and ``score``; optionally ``stage``.
    chosen : (h, w), optional
    """
    plt = _plt()
    stages = {}
    for r in scores:
        stages.setdefault(r.get("stage", ""), []).append((tuple(int(v) for v in r["shape"]), float(r["score"])))
    coarse = stages.pop("coarse", None)
    panels = ([("coarse", coarse)] if coarse else []) + list(stages.items())
    widths = [1.0 if name == "coarse" or _is_grid(recs) else 2.0 for name, recs in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * sum(widths), 4.2), squeeze=False,
                             gridspec_kw=dict(width_ratios=widths))
    for ax, (name, recs) in zip(axes[0], panels):
        where = {"coarse": "coarse search, shrunk images", "fine": "fine walk, full images"}.get(name, name)
        if name == "coarse" or _is_grid(recs):
            _size_heatmap(fig, ax, recs, chosen, where)
        else:
            _size_profiles(ax, recs, chosen, where)
    fig.suptitle("face size: the criterion of each size tried (higher is better)")
    fig.tight_layout()
    return fig


def _best_per_shape(recs):
    best = {}
    for shape, val in recs:
        best[shape] = max(val, best.get(shape, -np.inf))
    return best


def _is_grid(recs):
    """True when the sizes fill a 2-D grid (not a line or a cross through one size)."""
    shapes = set(_best_per_shape(recs))
    hs, ws = {h for h, _ in shapes}, {w for _, w in shapes}
    return len(hs) > 1 and len(ws) > 1 and len(shapes) >= 0.5 * len(hs) * len(ws)


def _size_heatmap(fig, ax, recs, chosen, where):
    best = _best_per_shape(recs)
    hs = sorted({h for h, _ in best})
    ws = sorted({w for _, w in best})
    grid = np.full((len(hs), len(ws)), np.nan)
    for (h, w), val in best.items():
        grid[hs.index(h), ws.index(w)] = val
    im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(ws)))
    ax.set_xticklabels(ws, fontsize=7, rotation=90)
    ax.set_yticks(range(len(hs)))
    ax.set_yticklabels(hs, fontsize=7)
    ax.set_xlabel("face width w")
    ax.set_ylabel("face height h")
    fig.colorbar(im, ax=ax, label="criterion per image")
    if chosen is not None and chosen[0] in hs and chosen[1] in ws:
        # named in the title: a legend would hide cells of the map
        ax.plot(ws.index(chosen[1]), hs.index(chosen[0]), "r*", ms=14)
        where = f"{where} (red star: chosen {chosen[0]}x{chosen[1]})"
    ax.set_title(where, fontsize=10)


def _size_profiles(ax, recs, chosen, where):
    """Criterion against h (w held) and against w (h held), through the chosen (or best) size."""
    best = _best_per_shape(recs)
    ch, cw = chosen if chosen is not None and tuple(chosen) in best else max(best, key=best.get)
    top = best[(ch, cw)]
    for axis, held, label, style in ((0, cw, f"height h (w = {cw})", "o-"), (1, ch, f"width w (h = {ch})", "s-")):
        line = sorted((shape[axis], val) for shape, val in best.items() if shape[1 - axis] == held)
        if len(line) > 1:
            x, v = zip(*line)
            ax.plot(x, np.asarray(v) - top, style, ms=4, label=label)
    ax.axvline(ch, color="C0", ls=":", lw=1)
    ax.axvline(cw, color="C1", ls=":", lw=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # sides are whole pixels
    ax.set_xlabel("face side (pixels)")
    ax.set_ylabel(f"criterion per image − chosen {ch}x{cw}'s")
    ax.set_title(where, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def objective_figure(runs, best_run=None, ylabel="objective per image"):
    """The objective per iteration, one line per restart, the best one marked."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in runs:
        y = np.asarray(r["objectives"], dtype=float)
        if y.size == 0:
            continue
        x = np.arange(len(y))
        best = r.get("run") == best_run
        ax.plot(x, y, lw=2.4 if best else 1.0, alpha=1.0 if best else 0.55,
                color="C3" if best else None, label=f"run {r.get('run', 0)}" + (" (best)" if best else ""),
                marker="o" if best and len(y) < 40 else None, ms=3)
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title("EM objective")
    finite = [v for r in runs for v in r["objectives"] if np.isfinite(v)]
    if finite:
        # a long run: the start's far-off values would flatten the rest, so the lowest 5% may fall off
        lo, hi = (min(finite) if len(finite) < 20 else np.percentile(finite, 5)), max(finite)
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
    if len(runs) <= 12:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def grid_figure(panels, lo=None, hi=None):
    """One row per run: its face, its background and its objective.

    Parameters
    ----------
    panels : list of dict
        Each with ``title``, ``face``, ``background`` and optionally ``objectives``
        (a list) and ``note`` (a line of text).
    """
    plt = _plt()
    n = len(panels)
    fig, axes = plt.subplots(n, 3, figsize=(10.5, 2.6 * n), gridspec_kw=dict(width_ratios=[1, 1.6, 1.6]))
    axes = np.atleast_2d(axes)
    for row, p in zip(axes, panels):
        _show(row[0], p["face"], lo, hi)
        row[0].set_title(f"{p['title']}\nface", fontsize=9)
        _show(row[1], p["background"], lo, hi)
        row[1].set_title("background", fontsize=9)
        obj = p.get("objectives")
        if obj is not None and len(obj):
            row[2].plot(np.arange(len(obj)), obj, color="C0", marker="o" if len(obj) < 30 else None, ms=3)
            row[2].set_title(f"objective per image: {obj[-1]:.2f}", fontsize=9)
            # the start can be far below: show the climb, not the first step
            top = float(np.max(obj))
            low = float(np.percentile(obj, 20)) if len(obj) > 2 else float(np.min(obj))
            pad = 0.1 * (top - low) if top > low else 1.0
            row[2].set_ylim(low - pad, top + pad)
            row[2].grid(alpha=0.3)
            row[2].set_xlabel("iteration", fontsize=8)
        else:
            row[2].axis("off")
        if p.get("note"):
            row[2].text(0.02, 0.02, p["note"], transform=row[2].transAxes, fontsize=8, va="bottom")
    fig.tight_layout()
    return fig


def write_fit_pictures(out_dir, est, lo=None, hi=None):
    """The pictures of a fitted FaceEM, written to `out_dir`.

    ``face.png`` (one face) or ``face_<c>.png`` for each face and
    ``faces.png`` (every face with its weight), ``background.png``,
    ``prior.png``, ``objective.png``, and ``face_size.png`` when the face
    size was chosen. Faces and background are in colour for colour stacks.
    Each file is written atomically (`emface.outputs`); a failure leaves the
    earlier pictures as they were and raises `emface.outputs.OutputError`.

    Returns
    -------
    dict of name -> PNG bytes (for the report).
    """
    faces = est.faces_
    if lo is None or hi is None:
        both = np.concatenate([faces.ravel(), est.background_.ravel()])
        lo, hi = float(np.percentile(both, 0.5)), float(np.percentile(both, 99.5))
    pics = {}
    if len(faces) == 1:
        pics["face.png"] = image_png(faces[0], lo, hi)
    else:
        for c, f in enumerate(faces):
            pics[f"face_{c}.png"] = image_png(f, lo, hi)
        pics["faces.png"] = png_bytes(faces_figure(faces, est.weights_, lo, hi))
    pics["background.png"] = image_png(est.background_, lo, hi)
    pics["prior.png"] = png_bytes(prior_figure(est.prior_, est.weights_))
    pics["objective.png"] = png_bytes(objective_figure(est.runs_, est.best_run_))
    scores = getattr(est, "face_shape_scores_", None)
    if scores:
        pics["face_size.png"] = png_bytes(size_figure(scores, est.face_shape_))
    return _write_pictures(out_dir, pics)


def _write_pictures(out_dir, pics):
    """Write each PNG of `pics` (name -> bytes) into `out_dir` through the one atomic writer: every
    picture, or (a full disk) none, the earlier ones left as they were; a symlink is replaced, never
    followed. Returns `pics`."""
    with all_or_nothing():
        for name, data in pics.items():
            with atomic_open(os.path.join(out_dir, name), "wb") as fh:
                fh.write(data)
    return pics


# ----------------------------------------------------------------------------- frames that do not fit

def misfit_figure(z, threshold=MISFIT_Z):
    """Histogram of the frames' misfit z-scores, with the N(0, 1) density they follow when the model fits."""
    plt = _plt()
    z = np.asarray(z, dtype=float)
    z = z[np.isfinite(z)]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if z.size:
        hi = max(float(z.max()), threshold + 1.0)
        lo = min(float(z.min()), -4.0)
        bins = np.linspace(lo, hi, 60)
        ax.hist(z, bins=bins, color="C0", alpha=0.8, label=f"{z.size} frames")
        xs = np.linspace(lo, hi, 400)
        width = bins[1] - bins[0]
        ax.plot(xs, z.size * width * np.exp(-0.5 * xs ** 2) / np.sqrt(2 * np.pi), color="k", lw=1,
                label="N(0, 1): frames the model explains")
        ax.set_yscale("symlog", linthresh=1.0)
    ax.axvline(threshold, color="C3", ls="--", lw=1, label=f"z = {threshold:g}")
    ax.set_xlabel("misfit z")
    ax.set_ylabel("frames")
    ax.set_title("Misfit of each frame")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _fitted_means(est, labels, positions):
    """The fitted mean image of each frame: its face pasted at its position, or the background alone (-1)."""
    from .datasets import render

    return render(est.background_, np.asarray(est.faces_, dtype=float), labels, positions)


def worst_frames_figure(frames, means, titles, lo=None, hi=None):
    """Frames beside their fitted mean images, one pair per row (the worst-fitting frames of a fit)."""
    plt = _plt()
    n = len(frames)
    fig, axes = plt.subplots(n, 2, figsize=(5.2, 2.5 * n), squeeze=False)
    for row, x, mu, t in zip(axes, frames, means, titles):
        _show(row[0], x, lo, hi)
        row[0].set_title(t, fontsize=8)
        _show(row[1], mu, lo, hi)
        row[1].set_title("fitted mean image", fontsize=8)
    fig.tight_layout()
    return fig


def write_misfit_pictures(out_dir, est, X, summary, n_worst=6):
    """``misfit.png`` (the z histogram) and ``worst_frames.png`` (the worst frames beside their fitted means).

    Parameters
    ----------
    out_dir : str
    est : fitted FaceEM
    X : the fitted frames (array-like, indexable by frame)
    summary : PosteriorSummary of those frames (its ``misfit``)
    n_worst : int

    Returns
    -------
    dict of name -> PNG bytes (for the report); empty when the summary has no misfit.
    """
    z = getattr(summary, "misfit", None)
    if z is None:
        return {}
    pics = {"misfit.png": png_bytes(misfit_figure(z))}
    worst = [int(k) for k in np.argsort(-np.nan_to_num(z, nan=-np.inf), kind="stable")[:n_worst]]
    if worst:
        frames = np.stack([np.asarray(X[k], dtype=float) for k in worst])
        means = _fitted_means(est, summary.faces[worst], summary.positions[worst])
        both = np.concatenate([means.ravel(), frames.ravel()])
        lo, hi = float(np.percentile(both, 0.5)), float(np.percentile(both, 99.5))
        titles = [f"frame {k}: z = {z[k]:.1f}, p = {summary.probability[k]:.3f}"
                  + (" (no face)" if summary.faces[k] < 0 else "") for k in worst]
        pics["worst_frames.png"] = png_bytes(worst_frames_figure(frames, means, titles, lo, hi))
    return _write_pictures(out_dir, pics)
