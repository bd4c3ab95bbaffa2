"""Shared helpers of the accuracy benchmarks: floors, oracles, label matching, the adjusted Rand index.

The *floor* of a face (or background) is the error of the estimate computed
from the true labels and positions (one M-step at the truth): no fit can be
expected to beat it, so a fit's error over its floor near 1 means "as good as
knowing where every face was".
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import comb

from emface import FaceEM
from emface.engine import params_from
from emface.executor import EngineConfig, LocalExecutor
from emface.sources import ArraySource

__all__ = ["rms", "ari", "match_faces", "floor_params", "oracle", "visible", "peak_rss_gb", "timed_fit",
           "face_errors"]


def rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


def ari(a, b):
    """The adjusted Rand index of two labellings (Hubert and Arabie)."""
    a = np.asarray(a)
    b = np.asarray(b)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    sum_comb = comb(table, 2).sum()
    rows = comb(table.sum(axis=1), 2).sum()
    cols = comb(table.sum(axis=0), 2).sum()
    n = comb(len(a), 2)
    expected = rows * cols / n if n else 0.0
    best = 0.5 * (rows + cols)
    return 1.0 if best == expected else float((sum_comb - expected) / (best - expected))


def match_faces(labels, truth_labels, C):
    """Estimated face c -> true face, maximising the images they share (Hungarian)."""
    table = np.zeros((C, C))
    np.add.at(table, (labels, truth_labels), 1)
    est, tru = linear_sum_assignment(-table)
    mapping = np.empty(C, dtype=np.int64)
    mapping[est] = tru
    return mapping


def floor_params(X, truth, face_shape):
    """θ estimated from the true labels and positions: one M-step at the truth (data units, engine layout)."""
    C = len(truth.faces)
    src = ArraySource(X, face_shape, standardize=False)
    ex = LocalExecutor(src, EngineConfig())
    stats = ex.stats_from_positions(truth.positions, truth.labels, n_faces=C)
    p, _ = params_from(stats, None, noise_floor=1e-12)
    return p


def oracle(X, truth, face_shape):
    """The fraction of images the true θ itself places (face and position) exactly."""
    C = len(truth.faces)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM(face_shape, n_faces=C, face_init=truth.faces if C > 1 else truth.faces[0],
                     background_init=truth.background, noise_std_init=truth.noise_std, prior_init=truth.prior,
                     max_iter=0).fit(X)
    s = est.posterior_summary()
    return float(np.mean((s.positions == truth.positions).all(axis=1) & (s.faces == truth.labels)))


def visible(truth, image_shape, face_shape):
    """Background pixels seen in at least one image (where B has evidence)."""
    H, W = image_shape
    h, w = face_shape
    covered_always = np.ones((H, W), dtype=bool)
    for i, j in truth.positions:
        m = np.ones((H, W), dtype=bool)
        m[i:i + h, j:j + w] = False
        covered_always &= ~m
    return ~covered_always


def face_errors(est, truth, floor, mapping):
    """Each true face's RMS error over its floor, for the estimated faces matched to it."""
    out = []
    Ftrue = np.asarray(truth.faces, dtype=float)
    Ffloor = np.moveaxis(floor.faces, 1, -1)
    if Ftrue.ndim == 3:
        Ffloor = Ffloor[..., 0]
    for c in range(len(Ftrue)):
        t = mapping[c]
        out.append(rms(est.faces_[c] - Ftrue[t]) / max(rms(Ffloor[t] - Ftrue[t]), 1e-300))
    return out


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def timed_fit(X, face_shape, **kw):
    """A fit with warnings silenced; returns (estimator, seconds, CPU seconds)."""
    t = time.perf_counter()
    c = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM(face_shape, **kw).fit(X)
    return est, time.perf_counter() - t, time.process_time() - c


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def fmt_s(v):
    return f"{v:.1f} s" if v >= 1 else f"{v:.3f} s"


def synthetic_block(rng, n, face, bg, s):
    """n float32 images: the grey face pasted at uniform positions on the background, plus noise of std s."""
    H, W = bg.shape
    h, w = face.shape
    X = np.repeat(bg[None], n, axis=0).astype(np.float32)
    rows = rng.integers(0, H - h + 1, n)
    cols = rng.integers(0, W - w + 1, n)
    for k in range(n):
        X[k, rows[k]:rows[k] + h, cols[k]:cols[k] + w] = face
    X += rng.normal(0, s, X.shape).astype(np.float32)
    return X


def time_iterations(X, face_shape, *, n_faces=1, hard=False, dtype=np.float64, n_iter=5, start="random",
                    workers=None, backend=None, device="cpu", max_memory=None, probe=None, sync=None):
    """Seconds of each of `n_iter` EM iterations (one E-step pass, one M-step), as FaceEM.fit runs them.

    The first pass (which caches the spectra and compiles the kernels) is not
    timed. `start` is "random" (the note's start) or "auto" (the data-driven
    start); `probe` is a context-manager factory entered around each timed
    iteration, returned with the times; `sync` is called before each clock read
    (a GPU's synchronisation). Returns (times, probes, executor).
    """
    from emface.init import auto_start, random_start
    from emface.model import FaceMixture

    src = ArraySource(X, face_shape, compute_dtype=dtype, max_memory=max_memory, n_faces=n_faces)
    ex = LocalExecutor(src, EngineConfig(dtype=dtype, backend=backend, workers=workers or cpu_count(), device=device))
    model = FaceMixture(tuple(face_shape), n_faces, hard=hard)
    sync = sync or (lambda: None)
    times, probes = [], []
    with ex.running():  # as FaceEM.fit runs: BLAS on one thread beside the engine's threads
        first = random_start if start == "random" else auto_start
        params = first(src, model, np.random.default_rng(1))
        params, _ = model.m_step(model.e_step(ex, params), params)
        for _ in range(n_iter):
            p = probe() if probe is not None else None
            with p if p is not None else contextlib.nullcontext():
                sync()
                t = time.perf_counter()
                params, _ = model.m_step(model.e_step(ex, params), params)
                sync()
                times.append(time.perf_counter() - t)
            probes.append(p)
    return times, probes, ex


def cli(*args):
    """The command line of ``emface ARGS`` run by this Python."""
    return [sys.executable, "-m", "emface.cli", *map(str, args)]


def run_measured(cmd, quiet):
    """Run `cmd`; (exit code, wall seconds, peak RSS in bytes) of that child alone (``os.wait4``)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet else None, stderr=None)
    _, status, usage = os.wait4(p.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t, usage.ru_maxrss * 1024


__all__ += ["cpu_count", "fmt_s", "synthetic_block", "time_iterations", "cli", "run_measured"]


# ---------------------------------------------------------------------------------------------- whole fits
class Profile:
    """Exclusive seconds and calls of wrapped functions: a stack of timers, the innermost owns the time.

    `clock` is ``time.perf_counter`` (wall) or ``time.process_time`` (CPU of
    every thread of this process, steadier on a shared machine).
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.seconds = {}
        self.calls = {}
        self._stack = []

    def wrap(self, name, fn):
        def timed(*a, **kw):
            now = self.clock()
            if self._stack:
                outer = self._stack[-1]
                self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
            self._stack.append([name, now])
            try:
                return fn(*a, **kw)
            finally:
                end = self.clock()
                _, since = self._stack.pop()
                self.seconds[name] = self.seconds.get(name, 0.0) + end - since
                self.calls[name] = self.calls.get(name, 0) + 1
                if self._stack:
                    self._stack[-1][1] = end
        return timed


#: what `profiled` times by default: the model's steps, the starts, the restart rule's draws and the moves
PROFILED = (("emface.model:FaceMixture", "e_step"), ("emface.model:FaceMixture", "m_step"),
            ("emface.model:FaceMixture", "objective"), ("emface.model:FaceMixture", "extrapolate"),
            ("emface.estimator", "auto_start"), ("emface.estimator", "random_start"),
            ("emface.estimator", "_model_decisiveness"), ("emface.schedule", "auto_start"),
            ("emface.schedule", "random_start"), ("emface.schedule", "model_decisiveness"),
            ("emface.moves", "shift_escape"), ("emface.moves", "split_merge"))


@contextlib.contextmanager
def profiled(prof, targets=PROFILED):
    """Wrap each ``(module[:class], name)`` of `targets` that exists in this emface to record into `prof`."""
    import importlib

    saved = []
    for where, name in targets:
        mod, _, cls = where.partition(":")
        try:
            obj = importlib.import_module(mod)
        except ImportError:
            continue  # a module of another version of emface
        obj = getattr(obj, cls, None) if cls else obj
        if obj is None:
            continue
        if name in vars(obj):
            saved.append((obj, name, vars(obj)[name]))
    try:
        for obj, name, fn in saved:
            setattr(obj, name, prof.wrap(name, fn))
        yield prof
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def counted_fit(X, face_shape, max_iter, *, profile=None, **kw):
    """A default FaceEM fit with ``tol=0``, ``random_state=0``; returns (estimator, wall s, CPU s, Profile)."""
    prof = profile or Profile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, c = time.perf_counter(), time.process_time()
        with profiled(prof):
            est = FaceEM(face_shape, max_iter=max_iter, tol=0.0, random_state=0, **kw).fit(X)
        return est, time.perf_counter() - t, time.process_time() - c, prof


def whole_iteration(X, face_shape, repeats=3, **kw):
    """Seconds of one more iteration of a whole default fit: (fit(max_iter=10) - fit(max_iter=2)) / 8.

    Issue 19's protocol: ``tol=0`` (every iteration runs), the default start,
    the same seed; restarts, over-relaxation and moves as `FaceEM.fit` does
    them. An untimed fit of 100 images first compiles the case's kernels.
    Returns a dict: ``wall`` and ``cpu`` (medians over `repeats` pairs),
    ``passes`` (E-step passes of the 10-iteration fit minus the 2-iteration
    fit's: 8 when each iteration is one pass), ``runs`` (runs of each fit)
    and ``est`` (the last 10-iteration fit).
    """
    counted_fit(X[:100], face_shape, 2, **kw)
    wall, cpu = [], []
    for _ in range(repeats):
        est2, t2, c2, p2 = counted_fit(X, face_shape, 2, **kw)
        est, t10, c10, p10 = counted_fit(X, face_shape, 10, **kw)
        wall.append((t10 - t2) / 8)
        cpu.append((c10 - c2) / 8)
    return dict(wall=float(np.median(wall)), cpu=float(np.median(cpu)),
                passes=p10.calls.get("e_step", 0) - p2.calls.get("e_step", 0),
                runs=(len(est2.runs_), len(est.runs_)), est=est)


__all__ += ["Profile", "PROFILED", "profiled", "counted_fit", "whole_iteration"]
