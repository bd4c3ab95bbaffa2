"""The sparse angle search's windows (`rotstep`; Neal and Hinton, 1998): which angles each image scores.

An image scores all angles (code -1) or a window of ``2·half + 1`` grid
steps about a centre, coded as one int by `_window_code`. A sweep over all
angles chooses each image's next window (`_choose_sets`).
"""

from __future__ import annotations

import numpy as np

#: largest posterior mass an image may leave outside its angle window (its bound loses at most this, in nats)
SETTLE = 1e-12


def _choose_sets(la, old, width, hard):
    """New angle windows from per-angle scores la (n, R): (windows (n,), allowed (n, R) bool).

    Soft EM: la is each angle's log-sum-exp of the logits (hard EM: their
    maximum); an image gets the narrowest window (half-width 0 to `width`)
    about its best angle that loses at most `SETTLE` of its mass (hard EM:
    always, the full width: the maximum is inside), unless its previous
    window scores higher (then it keeps that one: its bound never drops);
    else all angles (-1). Windows are coded as `_window_code` gives them.
    """
    n, R = la.shape
    red = (lambda a, axis: np.max(a, axis=axis)) if hard else _lse
    total = red(la, 1)
    best = np.argmax(la, axis=1)
    half = np.full(n, width, dtype=np.int64)
    inside = red(np.take_along_axis(la, _windows(best, R, width), axis=1), 1)
    with np.errstate(invalid="ignore"):
        settled = np.isfinite(total) & (hard | (1.0 - np.exp(np.minimum(inside - total, 0.0)) <= SETTLE))
        for w in range(width - 1, -1, -1) if not hard else ():
            ins = red(np.take_along_axis(la, _windows(best, R, w), axis=1), 1)
            ok = settled & (1.0 - np.exp(np.minimum(ins - total, 0.0)) <= SETTLE)
            half = np.where(ok, w, half)
            inside = np.where(ok, ins, inside)
    centres = np.where(settled, _window_code(best, half, R, width), -1)
    had = (old >= 0) & (old < R * (width + 1))
    if had.any():
        old_in = np.full(n, -np.inf)
        for c, w, rows in _window_groups(np.where(had, old, -1), R, width):
            old_in[rows] = red(np.take_along_axis(la[rows], _windows(c, R, w), axis=1), 1)
        centres = np.where(had & settled & (old_in > inside), old, centres)
    allowed = np.ones((n, R), dtype=bool)
    sp = centres >= 0
    if sp.any():
        allowed[sp] = False
        for c, w, rows in _window_groups(centres, R, width):
            win = _windows(c, R, w)
            allowed[np.repeat(rows, win.shape[1]), win.ravel()] = True
    return centres, allowed


def _window_code(centre, half, R, width):
    """An image's window as one int: ``centre + R·(width - half)`` (a code below R: the full half-width, as
    the windows were coded before they could be narrower). -1 codes all angles."""
    return np.asarray(centre) + R * (width - np.asarray(half))


def _window_groups(codes, R, width):
    """The images with a window, grouped by half-width: (centres, half-width, rows) per group, widest first."""
    codes = np.asarray(codes)
    half = width - codes // R
    for w in range(width, -1, -1):
        rows = np.flatnonzero((codes >= 0) & (half == w))
        if rows.size:
            yield codes[rows] % R, w, rows


def _lse(a, axis):
    mx = np.max(a, axis=axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(mx, axis) + np.log(np.sum(np.exp(a - mx), axis=axis))


def _windows(centres, R, width):
    """Angle indices of the windows about `centres` (n,): (n, m), m = min(R, 2·width + 1)."""
    w = min(width, (R - 1) // 2)
    offs = np.arange(-w, w + 1)
    if 2 * w + 1 < R or R == 1:
        return (np.asarray(centres)[:, None] + offs[None, :]) % R
    return np.broadcast_to(np.arange(R), (len(centres), R)).copy()
