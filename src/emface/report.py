"""The self-contained HTML report: a fit's page (its captions, tables and notes) and the page writer.

`write_fit_report` writes the page of a fitted `FaceEM` from its public results (the
posterior summary, the pictures of `emface.figures`); `write_html` writes any page, every
picture embedded, so it opens offline. The figures themselves are in `emface.figures`.
"""

from __future__ import annotations

import base64
import html
import os
import time

import numpy as np

from .estimator import MISFIT_Z
from .outputs import atomic_open

__all__ = ["write_fit_report", "fit_summary_rows", "write_html", "misfit_rows"]


def misfit_rows(summary, threshold=MISFIT_Z):
    """Rows (what, value) for the report: how many frames misfit and, with a "no face" class, their share."""
    rows = []
    z = getattr(summary, "misfit", None)
    if z is not None:
        high = int(np.count_nonzero(z > threshold))
        rows.append((f"frames with misfit z > {threshold:g}", f"{high} ({100.0 * high / max(len(z), 1):.2f}%)"))
        good = np.isfinite(z)
        if good.any():
            rows.append(("misfit z: mean, standard deviation, largest",
                         f"{np.mean(z[good]):.2f}, {np.std(z[good]):.2f}, {np.max(z[good]):.1f}"))
    empty = np.asarray(summary.faces) < 0
    if getattr(summary, "no_face_probability", None) is not None and np.any(summary.no_face_probability > 0):
        rows.append(("frames without a face", f"{int(empty.sum())} ({100.0 * empty.mean():.2f}%)"))
    return rows


def _data_uri(png):
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0} .pics{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
figure{margin:0;max-width:100%} img{max-width:100%;height:auto} figcaption{color:#555;font-size:.9em;text-align:center}
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
    """Write one self-contained HTML page (atomically, as `emface.outputs.atomic_open`).

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
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))


# ----------------------------------------------------------------------------- a fit's page

def write_fit_report(path, est, summary, pictures, *, source, image_shape, names=None, elapsed=0.0,
                     interrupted=False):
    """Write the report page of a fitted `FaceEM` (``report.html`` of ``emface fit``).

    Parameters
    ----------
    path : str
    est : FaceEM
        Fitted; only its public results are read.
    summary : PosteriorSummary
        Of the fitted images.
    pictures : dict of name -> PNG bytes
        From `write_fit_pictures` and `write_misfit_pictures`.
    source : str or path-like
        The input, as the user named it.
    image_shape : tuple
        The stack's shape, (K, H, W) or (K, H, W, Ch).
    names : list of str, optional
        The frame files, for a folder.
    elapsed : float
        Seconds the fit took.
    interrupted : bool
        The fit was interrupted (Ctrl-C): the page says these are the best parameters so far.
    """
    K = int(image_shape[0])
    write_html(path, "emface fit", subtitle=f"{os.path.basename(os.fspath(source))}: {K} images",
               notes=_fit_notes(est, interrupted), pictures=_fit_pictures(est, pictures, int(image_shape[2])),
               tables=_fit_tables(est, summary, source, image_shape, names, elapsed, interrupted))


def _fit_notes(est, interrupted):
    notes = ["The objective is the mean per-image log-likelihood (soft EM) or MAP joint (hard EM)"
             + (", plus the smoothing prior's term." if est.prior_smoothing else "."),
             f"Read each frame's probability with its misfit (positions.csv): a frame with misfit z > {MISFIT_Z:g} "
             "is very unlikely under the model, and a high probability there only means the best of bad options."]
    return notes + (["The fit was interrupted: these are the best parameters found so far."] if interrupted else [])


def _fit_pictures(est, pics, W):
    """(caption, PNG, width, pixelated) of the page's pictures, in order."""
    C = len(est.faces_)
    h, w = est.faces_.shape[1:3]
    side = max(h, w)
    face_width = max(192, 4 * side) if side < 64 else None
    if C == 1:
        out = [("face", pics["face.png"], face_width, True)]
    else:
        out = [("every face, heaviest first", pics["faces.png"], min(900, 160 * C), False)]
        out += [(f"face {c}: weight {est.weights_[c]:.3f}", pics[f"face_{c}.png"], face_width, True)
                for c in np.argsort(-est.weights_, kind="stable")]
    out += [("background", pics["background.png"], max(320, 2 * W) if W < 200 else None, True),
            ("prior A" if C == 1 else "prior A of each face", pics["prior.png"], None, False),
            ("objective per iteration", pics["objective.png"], None, False)]
    if "face_size.png" in pics:
        out.append(("face size: the criterion of each size tried", pics["face_size.png"], None, False))
    return out + [(title, pics[name], None, False) for name, title in (
        ("misfit.png", "misfit z of each frame: about N(0, 1) where the model explains the frame"),
        ("worst_frames.png", "the worst-fitting frames beside their fitted mean images"),
        ("angles.png", "the angle of each frame (rotations): faces are shown upright, as fitted"),
    ) if name in pics]


def fit_summary_rows(est, summary, source, image_shape, elapsed=0.0, interrupted=False):
    """Rows (what, value) of the report's "Summary" table: the input, the model, the run and its result."""
    K, H, W = (int(v) for v in image_shape[:3])
    C = len(est.faces_)
    h, w = est.faces_.shape[1:3]
    noise = est.noise_std_
    noise_text = f"{noise:.6g}" if np.ndim(noise) == 0 else ", ".join(f"{v:.4g}" for v in noise)
    return [
        ("input", os.fspath(source)),
        ("images", f"{K} of {H}x{W}" + (f", {image_shape[3]} channels" if len(image_shape) == 4 else "")),
        ("faces", f"{C} of {h}x{w}" + (" (size chosen from the data)" if getattr(est, "face_shape_scores_", None)
                                        else "")),
        ("EM", ("hard (MAP)" if est.hard else "soft") + f", {est.algorithm_}"
         + (f", prior smoothing {est.prior_smoothing:g}" if est.prior_smoothing else "")),
        ("runs", len(est.runs_)),
        ("best run", est.best_run_),
        ("iterations", est.n_iter_),
        ("converged", "no (interrupted)" if interrupted else ("yes" if est.converged_ else "no")),
        ("objective per image", f"{est.lower_bound_:.6g}"),
        ("noise s", noise_text),
    ] + _pose_rows(est) + [
        ("mean posterior probability of the chosen position", f"{np.mean(summary.probability):.4f}"),
    ] + misfit_rows(summary) + [("time", f"{elapsed:.1f} s")]


def _pose_rows(est):
    """Summary rows of the options that add latent variables: the brightness model fitted (and what
    "auto"'s test found) and the angles searched."""
    rows = []
    fitted = getattr(est, "brightness_", None)
    if fitted is not None:
        test = getattr(est, "brightness_test_", None)
        p = test["p_value"] if test else None
        chose = "" if p is None else (f" (chosen by the test: p = {p:.3g})" if p > 0 else
                                      " (chosen by the test: p below 1e-300)")
        rows.append(("brightness", {"fixed": "fixed (the note's model)", "per_image": "a gain and an offset per "
                                    "frame", "per_channel": "a gain and an offset per frame and channel"}
                     .get(fitted, fitted) + chose))
    angles = getattr(est, "angles_", None)
    if angles is not None:
        rows.append(("angles", f"{len(angles)} ({getattr(est, 'angle_search', 'sparse')} search)"))
    return rows


def _fit_tables(est, summ, source, image_shape, names, elapsed, interrupted):
    """(heading, rows, header) of the page's tables: summary, faces, sizes tried, runs, first positions."""
    K = int(image_shape[0])
    C = len(est.faces_)
    tables = [("Summary", fit_summary_rows(est, summ, source, image_shape, elapsed, interrupted), None)]
    if C > 1:
        counts = np.bincount(summ.faces[summ.faces >= 0], minlength=C)
        tables.append(("Faces", [(int(c), f"{est.weights_[c]:.4f}", int(counts[c]))
                                 for c in np.argsort(-est.weights_, kind="stable")],
                       ("face", "weight", "images")))
    if getattr(est, "face_shape_scores_", None):
        tables.append(("Face sizes tried", [(f"{r['shape'][0]}x{r['shape'][1]}", r.get("stage", ""),
                                             f"{r['score']:.6g}") for r in est.face_shape_scores_],
                       ("size", "stage", "criterion per image")))
    runs = [(r["run"], r["n_iter"], "yes" if r["converged"] else "no", f"{r['objectives'][-1]:.6g}",
             ", ".join(str(tuple(e)) for e in r.get("moves", [])) or "-") for r in est.runs_]
    extra, extra_head = _pose_columns(summ)
    first = [(k, "" if names is None else names[k], int(summ.faces[k]), int(summ.positions[k, 0]),
              int(summ.positions[k, 1]), f"{summ.probability[k]:.4f}", f"{summ.entropy[k]:.3g}") + extra(k)
             for k in range(min(K, 25))]
    return tables + [
        ("Runs", runs, ("run", "iterations", "converged", "final objective", "moves")),
        (f"Positions (first {len(first)} of {K}; all in positions.csv)", first,
         ("index", "file", "face", "row", "col", "probability", "entropy") + extra_head),
    ]


def _pose_columns(summ):
    """The positions table's extra columns where the fit has them: angle (degrees), gain and offset (one
    per frame; per channel they are in positions.csv). Returns (row k -> tuple, header)."""
    cols = []
    if getattr(summ, "angles", None) is not None:
        cols.append(("angle", lambda k: f"{summ.angles[k]:.4g}"))
    gain, offset = getattr(summ, "gain", None), getattr(summ, "offset", None)
    if gain is not None and np.ndim(gain) == 1:
        cols += [("gain", lambda k: f"{gain[k]:.4g}"), ("offset", lambda k: f"{offset[k]:.4g}")]
    return (lambda k: tuple(f(k) for _, f in cols)), tuple(name for name, _ in cols)
