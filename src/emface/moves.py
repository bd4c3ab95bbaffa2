"""Moves that escape the model's local optima, tried after EM has converged.

Each move is a hook the EM loop calls, ``move(executor, model, run, resume) -> run``:
it proposes new parameters, keeps them only if the objective rises, and lets
``resume`` continue EM from them.

- `shift_escape`: EM often settles on a face shifted by a pixel or two (the
  missing strip absorbed into B), or on a blend of two alignments. Try each
  face moved by small offsets -- for all its images, or for the group whose
  second choice lies one pixel away -- re-centring as cryo-EM 2-D
  classification does.
- `split_merge`: with several faces, EM can merge two objects in one face or
  split one object over two faces. Merge the two most similar faces and split
  the face that fits its images worst, as split-and-merge EM does (Ueda,
  Nakano, Ghahramani and Hinton, 2000).
"""

from __future__ import annotations

import numpy as np

from .engine.kernels import crops
from .engine.poses import grid_shape
from .engine.records import Params

__all__ = ["shift_escape", "split_merge"]

_MAX_ROUNDS = 3


# ----------------------------------------------------------------------------- helpers

def _shift_prior(A, di, dj):
    """A'(p) = A(p + δ) for one face's (P, Q) prior; positions that come from outside get the mean level."""
    P, Q = A.shape
    out = np.full_like(A, A.mean())
    src_r = slice(max(di, 0), P + min(di, 0))
    dst_r = slice(max(-di, 0), P + min(-di, 0))
    src_c = slice(max(dj, 0), Q + min(dj, 0))
    dst_c = slice(max(-dj, 0), Q + min(-dj, 0))
    out[dst_r, dst_c] = A[src_r, src_c]
    return out * (A.sum() / out.sum()) if out.sum() > 0 else out


def _offsets(P, Q, m):
    return [(di, dj) for di in range(-m, m + 1) for dj in range(-m, m + 1)
            if (di, dj) != (0, 0) and abs(di) < P and abs(dj) < Q]


def _inside(pos, P, Q):
    return (pos[:, 0] >= 0) & (pos[:, 0] < P) & (pos[:, 1] >= 0) & (pos[:, 1] < Q)


def _otsu_upper(g):
    """The upper class of the best two-class split of the values g (Otsu's threshold)."""
    order = np.sort(g)
    n = len(order)
    if n < 2 or order[0] == order[-1]:
        return None
    csum = np.cumsum(order)
    k = np.arange(1, n)
    m0 = csum[:-1] / k
    m1 = (csum[-1] - csum[:-1]) / (n - k)
    between = k * (n - k) * (m1 - m0) ** 2
    cut = order[int(np.argmax(between))]
    return g > cut


def _try(executor, model, run, cand, label, resume):
    """Evaluate a candidate by a full E-step; continue EM from it if it raises the objective."""
    K = executor.n_images
    stats = model.e_step(executor, cand)
    obj = model.objective(stats, cand) / K
    if not obj > run.objective:
        return None
    new = resume(cand, stats, run.objectives + [obj])
    new.moves = run.moves + [label]
    return new if new.objective > run.objective else None


# ----------------------------------------------------------------------------- shift escape

def _moved_face(pos, lab, prior, c, di, dj, P, Q):
    """Face c's images moved by -δ and its prior along: (positions, prior); None when too many leave the grid."""
    mine = lab == c
    moved = pos[mine] - np.array([di, dj])
    if _inside(moved, P, Q).mean() < 0.9:
        return None
    newpos = pos.copy()
    newpos[mine, 0] = np.clip(moved[:, 0], 0, P - 1)
    newpos[mine, 1] = np.clip(moved[:, 1], 0, Q - 1)
    A = prior.copy()
    A[c] = _shift_prior(prior[c], di, dj)
    return newpos, A


def _shift_candidates(model, run, image_shape):
    """Moves to try from a converged run: (label, positions, prior), per face.

    - shifts: every image of face c moves by -δ, |δ| <= max_shift, and face c's prior moves along;
    - splits: for each neighbouring offset δ, the images of face c whose
      second choice lies in direction δ (by Otsu's split of the likelihood
      gains of moving there, read from the last E-step, and the better half)
      move by +δ -- the escape from optima where a face's images split into
      two groups a pixel apart and F_c is their blend. The gains leave the
      prior out: a learned A that collapsed onto the current positions would
      otherwise hide every move.
    """
    pose = model.pose(image_shape)
    P, Q = pose.shape
    pos, lab = run.stats.positions, run.stats.labels
    prior = run.params.prior
    for c in range(model.n_faces):
        mine = lab == c
        if mine.sum() == 0:
            continue
        for di, dj in _offsets(P, Q, model.max_shift):
            moved = _moved_face(pos, lab, prior, c, di, dj, P, Q)
            if moved is not None:
                yield ("shift", c, (di, dj)), moved[0], moved[1]
    near = run.stats.near
    if near is None or len(pos) < 2:
        return
    for c in range(model.n_faces):
        mine = np.flatnonzero(lab == c)
        if len(mine) < 2:
            continue
        for t, (di, dj) in enumerate(pose.neighbours.tolist()):
            gain = near[mine, t]
            ok = np.isfinite(gain)
            if ok.sum() < 2:
                continue
            subsets = []
            upper = _otsu_upper(gain[ok])
            if upper is not None:
                subsets.append(upper)
            subsets.append(gain[ok] >= np.median(gain[ok]))
            idx = mine[ok]
            for sub in subsets:
                moved = idx[sub]
                if 0 < len(moved) < len(mine):
                    newpos = pos.copy()
                    newpos[moved] += np.array([di, dj])
                    yield ("split", c, (di, dj), len(moved)), newpos, prior


def _extend_shift(score_of, label, newpos, prior, best_score, run, image_shape, face_shape):
    """Walk a winning shift further along its direction while the subsample's score rises.

    A face can settle many pixels from its true place (the data-driven start
    of several faces clusters windows that need not be centred on their
    face); steps of `max_shift` pixels per round would need many rounds, each
    a full EM continuation. The walk costs one window-sum pass of the
    subsample per step.
    """
    _, c, (di, dj) = label
    H, W = image_shape
    h, w = face_shape
    P, Q = grid_shape((H, W), (h, w))
    pos, lab = run.stats.positions, run.stats.labels
    for k in range(2, max(P, Q)):
        moved = _moved_face(pos, lab, run.params.prior, c, k * di, k * dj, P, Q)
        if moved is None:
            break
        score = score_of(moved[0])
        if not score > best_score:
            break
        best_score, label, newpos, prior = score, ("shift", c, (k * di, k * dj)), moved[0], moved[1]
    return best_score, label, newpos, prior


def _candidate(executor, model, run, newpos, prior, nf):
    """θ of a candidate: one M-step from EVERY image at its new position (crops, no FFT), and its prior.

    Not from the subsample that ranked it: faces refitted from a subsample's
    share of their images are noisier, which costs the objective about
    ``C·h·w·(1/K_sub - 1/K) / 2`` nats per image -- with several faces (each
    fitted from its own fraction of the subsample) more than fixing one
    face's shift gains, so the confirmation would reject the right move (the
    background, refitted too, adds ``H·W·(1/K_sub - 1/K) / 2`` more).
    """
    st = executor.stats_from_positions(newpos, run.stats.labels, **nf)
    cand, _ = model.m_step(st, run.params)
    if model.prior_smoothing > 0:  # the smoothed M-step's A has full support already
        A = cand.prior
    else:
        # the moved images' new positions may have A ~ 0 under the old
        # prior: give the candidate both the old support and the new counts
        A = 0.5 * prior + 0.5 * st.N / st.n_images
        if cand.empty_weight is not None:  # "no face" shares the simplex in the same way
            cand.empty_weight = 0.5 * run.params.empty_weight + 0.5 * st.N_empty / st.n_images
    cand = Params(cand.faces, cand.background, cand.noise_std, A, cand.empty_weight, cand.gains, cand.offsets)
    if cand.gains is not None:
        # per-image brightness: the crops' M-step ignored each image's (a, b) (its s holds their spread);
        # one EM step with them makes the candidate the move's, not the crops' (an extra pass, brightness only)
        cand, _ = model.m_step(model.e_step(executor, cand, per_image=False), cand)
    return cand


def shift_escape(executor, model, run, resume):
    """Escape shifted optima: try moving a face by small offsets, keep what raises the objective.

    Each candidate (see `_shift_candidates`) is a new set of hard positions;
    the faces, background and noise are re-estimated from them by one M-step
    (which fills a revealed strip of the face from the data and hands an
    uncovered strip back to the background). The candidates are ranked on a
    subsample of at most ``model.escape_sample`` images, by their refitted
    noise; a winning shift is walked further along its direction while that
    score rises (`_extend_shift`). The best is then refitted from every image
    at its positions (`_candidate`), confirmed by one E-step over every image
    and kept if the objective rises, and EM continues from it. Repeats while
    moves help.
    """
    nf = dict(n_faces=model.n_faces, face_shape=model.face_shape)
    sub, idx = executor.subsample(model.escape_sample, np.random.default_rng(run.init_index),
                                  n_faces=model.n_faces)
    Ks = len(idx)
    for _ in range(_MAX_ROUNDS):
        if not run.converged or run.stats is None or run.stats.positions is None:
            break  # only from a settled optimum, within the iteration budget
        lab = run.stats.labels[idx]

        def score_of(newpos, lab=lab):
            cand, _ = model.m_step(sub.stats_from_positions(newpos[idx], lab, **nf), run.params)
            return model.hard_score(cand, Ks)

        best_score = score_of(run.stats.positions)
        best = None
        for label, newpos, prior in _shift_candidates(model, run, executor.image_shape):
            score = score_of(newpos)
            if score > best_score:
                best_score = score
                best = (label, newpos, prior)
        if best is None:
            break
        if best[0][0] == "shift":
            best_score, *best = _extend_shift(score_of, *best, best_score, run, executor.image_shape,
                                              model.face_shape)
        cand = _candidate(executor, model, run, best[1], best[2], nf)
        new = _try(executor, model, run, cand, best[0], resume)
        if new is None:
            break
        run = new
    return run


# ----------------------------------------------------------------------------- split and merge

def _aligned_similarity(Fa, Fb, max_shift):
    """Largest normalised correlation of two faces (Ch, h, w) over shifts up to `max_shift`."""
    Ch, h, w = Fa.shape
    best = -1.0
    for di in range(-max_shift, max_shift + 1):
        for dj in range(-max_shift, max_shift + 1):
            a = Fa[:, max(di, 0):h + min(di, 0), max(dj, 0):w + min(dj, 0)]
            b = Fb[:, max(-di, 0):h + min(-di, 0), max(-dj, 0):w + min(-dj, 0)]
            if a.size < 4:
                continue
            a = a - a.mean()
            b = b - b.mean()
            den = np.sqrt(np.vdot(a, a) * np.vdot(b, b))
            if den > 0:
                best = max(best, float(np.vdot(a, b) / den))
    return best


def two_means(x, rng, n_iter=20):
    """Split the rows of x in two by k-means from the farthest pair (k-means++ style).

    Returns (labels of 0/1, centroids (2, d)).
    """
    n = len(x)
    i0 = int(rng.integers(n))
    d0 = ((x - x[i0]) ** 2).sum(axis=1)
    a = int(np.argmax(d0))
    b = int(np.argmax(((x - x[a]) ** 2).sum(axis=1)))
    cent = np.stack([x[a], x[b]])
    lab = np.zeros(n, dtype=np.int64)
    for _ in range(n_iter):
        d = ((x[:, None, :] - cent[None]) ** 2).sum(axis=2)
        new = np.argmin(d, axis=1)
        if np.array_equal(new, lab) and _ > 0:
            break
        lab = new
        for t in range(2):
            if (lab == t).any():
                cent[t] = x[lab == t].mean(axis=0)
    return lab, cent


def _class_crops(sub, idx, run, c, window):
    """Working-unit crops (m, Ch·h·w) of the subsample's images of face c, at their positions."""
    mine = run.stats.labels[idx] == c
    if not mine.any():
        return np.zeros((0, 0))
    x = sub.source.images(0, sub.n_images)[mine]
    return crops(x, run.stats.positions[idx][mine], window).reshape(int(mine.sum()), -1)


def _split_merge_candidates(sub, idx, model, run, rng):
    """Candidates (label, params): merge the most similar pair of faces, split the worst-fitting face.

    A face that no image chose, or the second of a merged pair, takes one
    half of the split face: the images of that face at their positions are
    cut in two by k-means, and each half's mean becomes a face.
    """
    p = run.params
    C = model.n_faces
    st = run.stats
    counts = np.bincount(st.labels[st.labels >= 0], minlength=C)  # label -1: "no face"
    # merge candidates: the most similar faces (up to small shifts), and empty faces
    pairs = []
    for i in range(C):
        for j in range(i + 1, C):
            pairs.append((_aligned_similarity(p.faces[i], p.faces[j], model.max_shift), i, j))
    pairs.sort(reverse=True)
    # split candidates: the faces whose images fit worst (lowest mean log-likelihood), with images enough
    fit = np.full(C, np.inf)
    for c in range(C):
        if counts[c] >= 4:
            fit[c] = st.image_loglik[st.labels == c].mean()
    order = [c for c in np.argsort(fit) if np.isfinite(fit[c])]
    free = [c for c in range(C) if counts[c] == 0]
    plans = []
    for k in order[:2]:
        for c in free:
            plans.append((None, c, k))
        for _, i, j in pairs[:2]:
            if k in (i, j):
                continue
            keep, gone = (i, j) if counts[i] >= counts[j] else (j, i)
            plans.append((keep, gone, k))
    seen = set()
    for keep, gone, k in plans[:3]:
        if (keep, gone, k) in seen:
            continue
        seen.add((keep, gone, k))
        x = _class_crops(sub, idx, run, k, model.face_shape)
        if len(x) < 4:
            continue
        lab2, cent = two_means(x, rng)
        if lab2.min() == lab2.max():
            continue
        F = p.faces.copy()
        A = p.prior.copy()
        shape = F.shape[1:]
        F[k] = cent[0].reshape(shape)
        F[gone] = cent[1].reshape(shape)
        share = lab2.mean()
        if keep is not None:
            A[keep] = A[keep] + A[gone]
        A[gone] = A[k] * share
        A[k] = A[k] * (1 - share)
        A = np.maximum(A, 0)
        A *= p.prior.sum() / A.sum()  # the share of "no face", if any, stays
        yield ("split-merge", keep, gone, int(k)), Params(F, p.background, p.noise_std, A, p.empty_weight, p.gains,
                                                         p.offsets)


def split_merge(executor, model, run, resume):
    """Merge two faces that hold one object and split one that holds two; keep what raises the objective."""
    rng = np.random.default_rng(12345 + run.init_index)
    sub, idx = executor.subsample(model.escape_sample, rng, n_faces=model.n_faces)
    for _ in range(_MAX_ROUNDS):
        if not run.converged or run.stats is None or run.stats.labels is None:
            break  # only from a settled optimum, within the iteration budget
        improved = None
        for label, cand in _split_merge_candidates(sub, idx, model, run, rng):
            new = _try(executor, model, run, cand, label, resume)
            if new is not None:
                if model.shift_escape:
                    new = shift_escape(executor, model, new, resume)
                improved = new
                break
        if improved is None:
            break
        run = improved
    return run
