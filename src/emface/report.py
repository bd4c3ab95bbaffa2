"""Figures and the self-contained HTML report.

Everything here is for people to look at: PNG pictures of the face, the
background and the prior, the objective per iteration, the demo's grid, and a
single HTML page with every image embedded (it opens offline).
"""

from __future__ import annotations

import base64
import html
import io
import os
import time

import numpy as np

from .io import to_uint8

__all__ = [
    "prior_figure",
    "objective_figure",
    "grid_figure",
    "png_bytes",
    "write_fit_pictures",
    "write_html",
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


def image_png(img, lo=None, hi=None, min_size=0):
    """A 2-D array as 8-bit grey PNG bytes, enlarged by whole pixels to at least `min_size`."""
    import imageio.v3 as iio

    u8 = to_uint8(img, lo, hi)
    if min_size and max(u8.shape) < min_size:
        f = int(np.ceil(min_size / max(u8.shape)))
        u8 = np.kron(u8, np.ones((f, f), dtype=np.uint8))
    return iio.imwrite("<bytes>", u8, extension=".png")


def prior_figure(prior):
    """The prior over positions as a heat map."""
    plt = _plt()
    P, Q = prior.shape
    fig, ax = plt.subplots(figsize=(5.2, 4.2 if P > 1 else 2.2))
    im = ax.imshow(prior, cmap="magma", aspect="auto" if P == 1 or Q == 1 else "equal", interpolation="nearest")
    ax.set_title("prior A over the face's top-left corner")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    fig.colorbar(im, ax=ax, label="probability")
    return fig


def objective_figure(runs, best_run=None, ylabel="objective per image"):
    """The objective per iteration, one line per restart, the best one marked."""
    plt = _plt()
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
    ax.set_ylabel(ylabel)
    ax.set_title("EM objective")
    finite = [v for r in runs for v in r["objectives"] if np.isfinite(v)]
    if finite:
        lo, hi = np.percentile(finite, 5), max(finite)
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
        row[0].imshow(p["face"], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        row[0].set_title(f"{p['title']}\nface", fontsize=9)
        row[1].imshow(p["background"], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        row[1].set_title("background", fontsize=9)
        for a in row[:2]:
            a.set_xticks([])
            a.set_yticks([])
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
    """face.png, background.png, prior.png and objective.png for a fitted FaceEM.

    Returns
    -------
    dict of name -> PNG bytes (for the report).
    """
    if lo is None or hi is None:
        both = np.concatenate([est.face_.ravel(), est.background_.ravel()])
        lo, hi = float(np.percentile(both, 0.5)), float(np.percentile(both, 99.5))
    pics = {
        "face.png": image_png(est.face_, lo, hi),
        "background.png": image_png(est.background_, lo, hi),
        "prior.png": png_bytes(prior_figure(est.prior_)),
        "objective.png": png_bytes(objective_figure(est.runs_, est.best_run_)),
    }
    for name, data in pics.items():
        with open(os.path.join(out_dir, name), "wb") as fh:
            fh.write(data)
    return pics


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0} .pics{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
figure{margin:0} figcaption{color:#555;font-size:.9em;text-align:center}
img.px{image-rendering:pixelated;border:1px solid #ccc}
table{border-collapse:collapse;font-size:.92em} td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
th{background:#f6f6f6} .num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _table(rows, header=None):
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html(path, title, *, subtitle="", pictures=(), tables=(), notes=()):
    """Write one self-contained HTML page.

    Parameters
    ----------
    path : str
    title, subtitle : str
    pictures : list of (caption, png_bytes, display_width_px or None, pixelated)
    tables : list of (heading, rows, header)
    notes : list of str (paragraphs)
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{html.escape(subtitle)} &middot; written {time.strftime("%Y-%m-%d %H:%M")}</p>',
    ]
    for n in notes:
        parts.append(f"<p>{html.escape(n)}</p>")
    if pictures:
        parts.append('<h2>Pictures</h2><div class="pics">')
        for caption, png, width, pixelated in pictures:
            w = f' width="{int(width)}"' if width else ""
            cls = ' class="px"' if pixelated else ""
            parts.append(f'<figure><img{cls}{w} alt="{html.escape(caption)}" src="{_data_uri(png)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    for heading, rows, header in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_table(rows, header))
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
