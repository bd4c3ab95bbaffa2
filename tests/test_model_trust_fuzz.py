"""Fuzzing the model file (issue 21): random corruptions of a real fitted model, through load, predict and the CLI.

Each corrupted file must give a correct result (positions inside the model's
grid) or an emface error / ValueError with a one-line message: never another
exception, never a crash, never a hang (each case under 10 s). The cases run
in a worker subprocess (this file run as a script), so that a crash in
compiled code is seen as the death of the worker, and the parent restarts it
after the case that killed it. The default run takes a fast subset of 50; the
``slow`` test takes 1,000 and prints its figures:

    pytest -m slow tests/test_model_trust_fuzz.py -s
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

CASE_TIMEOUT = 10.0
HERE = os.path.abspath(__file__)
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
KEYS = ("faces", "background", "noise_std", "prior", "history")


# ----------------------------------------------------------------------------- the corruptions

def _base(folder):
    """A small fitted grey model and a colour two-face one, each saved, with the images they fit."""
    from emface import FaceEM
    from emface.datasets import make_faces

    out = []
    for name, kw, fs in (("grey", dict(image_shape=(20, 24), face_shape=(6, 5)), (6, 5)),
                         ("colour", dict(image_shape=(14, 16), face_shape=(5, 4), colour=True, n_faces=2), (5, 4))):
        X, _ = make_faces(24, noise=0.5, random_state=0, **kw)
        est = FaceEM(fs, n_faces=kw.get("n_faces", 1), max_iter=8, n_init=1, random_state=0).fit(X)
        path = os.path.join(folder, f"{name}.npz")
        est.save(path)
        np.save(os.path.join(folder, f"{name}_stack.npy"), X)
        out.append((path, os.path.join(folder, f"{name}_stack.npy")))
    return out


_ODD_VALUES = (np.nan, np.inf, -np.inf, -1.0, 0.0, 1e308, -1e308, 1e-308, 5e-324, 1e200, -1e-200)
_DTYPES = ("complex128", "U5", "S3", "object", "bool", "int8", "uint64", "float16", "float32", "datetime64[s]",
           "V8", [("a", "f8"), ("b", "i4")], "longdouble")
_META_VALUES = (None, True, -1, 0, 10**30, 1.5, float("nan"), float("inf"), "x", [], [1, 2, 3], {}, {"a": 1},
                [None, None], ["1", "2"], [1e308, 1e-308], [0.0, 1.0], [130.0, 1e-300], [-5, 70])


def _random_shape(rng, shape):
    shape = list(shape)
    op = rng.integers(5)
    if op == 0 and shape:
        shape.pop(int(rng.integers(len(shape))))
    elif op == 1:
        shape.insert(int(rng.integers(len(shape) + 1)), int(rng.integers(1, 4)))
    elif op == 2 and shape:
        i = int(rng.integers(len(shape)))
        shape[i] = max(0, shape[i] + int(rng.integers(-3, 4)))
    elif op == 3:
        shape = shape[::-1]
    else:
        shape = [int(v) for v in rng.integers(0, 30, size=int(rng.integers(0, 5)))]
    return tuple(shape)


def _mutate_arrays(rng, arrays, meta):
    """One random corruption of the arrays or the settings (a mutation that cannot apply is skipped)."""
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _mutate(rng, arrays, meta)
        except (TypeError, ValueError, OverflowError):  # e.g. a float written into a string array
            return arrays


def _mutate(rng, arrays, meta):
    kind = rng.choice(["shape", "dtype", "values", "delete", "extra", "meta", "meta_field", "settings_field"])
    key = str(rng.choice(KEYS))
    if kind == "shape" and key in arrays:
        a = arrays[key]
        shape = _random_shape(rng, a.shape)
        if int(np.prod(shape)) == a.size and rng.random() < 0.5:
            arrays[key] = a.reshape(shape)
        else:
            arrays[key] = rng.random(shape) * rng.choice([1.0, a.max() if a.size else 1.0, 1e-3])
    elif kind == "dtype" and key in arrays:
        dt = _DTYPES[int(rng.integers(len(_DTYPES)))]
        try:
            arrays[key] = arrays[key].astype(dt)
        except (TypeError, ValueError):
            arrays[key] = np.zeros(arrays[key].shape, dtype=dt)
    elif kind == "values" and key in arrays:
        a = arrays[key].copy()
        if a.size:
            if rng.random() < 0.3:
                a = a * float(rng.choice([-1.0, 1e300, 1e-300, 1e150, 0.0, 2.0]))
            else:
                idx = rng.integers(a.size, size=int(rng.integers(1, 4)))
                a.reshape(-1)[idx] = float(rng.choice(_ODD_VALUES))
        arrays[key] = a
    elif kind == "delete":
        for k in rng.choice(KEYS + ("meta",), size=int(rng.integers(1, 3)), replace=False):
            arrays.pop(str(k), None)
    elif kind == "extra":
        name = str(rng.choice(["face", "extra", "meta2", "positions", "faces_"]))
        arrays[name] = rng.normal(size=tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(0, 4)))))
    elif kind == "meta":
        arrays["meta"] = np.array(str(rng.choice(["", "{", "[1, 2]", "null", "7", '"text"', "{}", "[[[[",
                                                   '{"settings": 5}', '{"colour": "yes"}', "NaN"])))
    elif kind == "meta_field":
        m = dict(meta)
        field = str(rng.choice(["moments", "history", "n_iter", "converged", "colour", "accel", "runs", "best_run",
                                "algorithm", "face_shape_scores", "n_images", "settings", "layout", "kind"]))
        m[field] = _META_VALUES[int(rng.integers(len(_META_VALUES)))]
        arrays["meta"] = np.array(json.dumps(m))
    else:
        m = json.loads(json.dumps(meta))
        field = str(rng.choice(list(m["settings"]) + ["callback", "face_init", "prior_init"]))
        m["settings"][field] = _META_VALUES[int(rng.integers(len(_META_VALUES)))]
        arrays["meta"] = np.array(json.dumps(m))
    return arrays


def make_cases(folder, n, seed):
    """`n` corrupted model files in `folder`: [(case id, model path, stack path, what was done)]."""
    import io

    rng = np.random.default_rng(seed)
    bases = _base(folder)
    loaded = []
    for path, stack in bases:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        loaded.append((arrays, json.loads(str(arrays["meta"])), open(path, "rb").read(), stack))
    cases = []
    for i in range(n):
        arrays0, meta, raw, stack = loaded[int(rng.integers(len(loaded)))]
        kind = rng.choice(["arrays", "arrays", "arrays", "truncate", "flip", "arrays+flip"])
        what = [str(kind)]
        data = raw
        if "arrays" in kind:
            arrays = {k: v.copy() for k, v in arrays0.items()}
            for _ in range(int(rng.integers(1, 4))):
                arrays = _mutate_arrays(rng, arrays, meta)
            buf = io.BytesIO()
            (np.savez_compressed if rng.random() < 0.3 else np.savez)(buf, **arrays)
            data = buf.getvalue()
        if kind == "truncate":
            data = data[: int(rng.integers(0, len(data)))]
        if "flip" in kind:
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 20))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
            data = bytes(b)
        p = os.path.join(folder, f"case{i:04d}.npz")
        with open(p, "wb") as fh:
            fh.write(data)
        cases.append((i, p, stack, "+".join(what)))
    return cases


# ----------------------------------------------------------------------------- the worker (a subprocess)

def _one_case(model, stack, cli, out_csv):
    """Load and predict (and resume for one iteration); the outcome as a dict (and the CLI's, when asked)."""
    import io
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    from emface import FaceEM

    X = np.load(stack)
    res = {}
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = FaceEM.load(model)
            pos = est.predict(X)
        P, Q = est._theta.grid_shape
        good = (pos.shape == (len(X), 2) and pos.dtype.kind in "iu" and (pos >= 0).all()
                and (pos[:, 0] < P).all() and (pos[:, 1] < Q).all())
        res["outcome"] = "predicted" if good else "bad result"
        if good:  # the same file resumed: one more EM iteration through the compiled kernels
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                FaceEM.resume(model).set_params(max_iter=int(est.n_iter_) + 1, checkpoint=None).fit(X)
    except ValueError as exc:
        msg = str(exc)
        res["outcome"] = "refused" if msg and "\n" not in msg else "multi-line message"
        res["type"] = type(exc).__name__
        res["message"] = msg[:300]
    except Exception as exc:  # what the fuzz is for: any other type is a failure
        res["outcome"] = "other exception"
        res["type"] = type(exc).__name__
        res["message"] = str(exc)[:300]
    res["seconds"] = time.perf_counter() - t0
    if cli:
        from emface.cli import main

        if os.path.exists(out_csv):
            os.unlink(out_csv)
        err, out = io.StringIO(), io.StringIO()
        rc = None
        try:
            with redirect_stderr(err), redirect_stdout(out):
                main(["predict", model, stack, "--out", out_csv, "-q"])
        except SystemExit as exc:
            rc = exc.code
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as a failure
            rc = f"raised {type(exc).__name__}: {exc}"
        res["cli_rc"] = rc
        res["cli_stderr"] = err.getvalue()[-500:]
    return res


def worker(case_file):
    with open(case_file) as fh:
        cases = json.load(fh)
    out_csv = case_file + ".csv"
    for c in cases:
        print(json.dumps({"id": c["id"], "start": True}), flush=True)
        res = _one_case(c["model"], c["stack"], c["cli"], out_csv)
        res["id"] = c["id"]
        print(json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- the parent

def _run_worker(cases, folder, tag):
    """Run `cases` (dicts) in worker subprocesses; returns {id: result}, a crash or a hang included."""
    results = {}
    todo = list(cases)
    n_start = 0
    while todo:
        n_start += 1
        case_file = os.path.join(folder, f"{tag}-{n_start}.json")
        with open(case_file, "w") as fh:
            json.dump(todo, fh)
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, HERE, "--worker", case_file], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, text=True, bufsize=1)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, started = None, time.monotonic()
        try:
            while True:
                limit = CASE_TIMEOUT + (30.0 if current is None else 0.0)  # the first case includes the imports
                if not sel.select(timeout=max(0.0, limit - (time.monotonic() - started))):
                    proc.kill()
                    proc.wait()
                    if current is None:
                        raise RuntimeError("the fuzz worker did not start")
                    results[current] = dict(id=current, outcome="hang")
                    break
                line = proc.stdout.readline()
                if not line:  # the worker died (or finished)
                    rc = proc.wait()
                    if current is not None and current not in results:
                        results[current] = dict(id=current, outcome="crash", rc=rc, stderr=proc.stderr.read()[-500:])
                    break
                msg = json.loads(line)
                if msg.get("start"):
                    current, started = msg["id"], time.monotonic()
                else:
                    results[msg["id"]] = msg
                    started = time.monotonic()
        finally:
            sel.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        todo = [c for c in todo if c["id"] not in results]
    return results


def _subprocess_cli(model, stack, out_csv):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "emface.cli", "predict", model, stack, "--out", out_csv, "-q"],
                       capture_output=True, text=True, env=env, timeout=60)
    return r.returncode, r.stderr


def _failures(results):
    bad = []
    for r in results.values():
        if r["outcome"] not in ("predicted", "refused") or r.get("seconds", 0) > CASE_TIMEOUT:
            bad.append(r)
        elif "cli_rc" in r:
            lines = r["cli_stderr"].strip().splitlines()
            ok = (r["cli_rc"] == 0 and not lines) or (
                r["cli_rc"] == 2 and len(lines) == 1 and lines[0].startswith("emface: error: "))
            if not ok:
                bad.append(r)
    return bad


def _fuzz(tmp_path, n, seed, cli_every, n_subprocess_cli):
    folder = str(tmp_path)
    made = make_cases(folder, n, seed)
    cases = [dict(id=i, model=p, stack=s, what=w, cli=(i % cli_every == 0)) for i, p, s, w in made]
    t0 = time.perf_counter()
    results = _run_worker(cases, folder, f"fuzz{seed}")
    for c in cases:
        results[c["id"]]["what"] = c["what"]
    elapsed = time.perf_counter() - t0
    assert len(results) == n
    sub = []
    for i, p, s, _ in made[:: max(1, n // max(1, n_subprocess_cli))][:n_subprocess_cli]:
        rc, err = _subprocess_cli(p, s, os.path.join(folder, "sub.csv"))
        sub.append((i, rc, err))
    return cases, results, elapsed, sub


def _summary(n, results, elapsed, sub):
    outcomes = Counter(r["outcome"] for r in results.values())
    types = Counter(r["type"] for r in results.values() if r["outcome"] == "refused")
    for r in results.values():
        if r["outcome"] == "refused" and r["type"] != "ModelFileError":
            print(f"  case {r['id']} ({r['what']}) refused by {r['type']}: {r['message']}")
    cli = [r for r in results.values() if "cli_rc" in r]
    cli_rc = Counter(str(r["cli_rc"]) for r in cli)
    slowest = max((r.get("seconds", 0.0) for r in results.values()), default=0.0)
    return (f"model fuzz: {n} corrupted files in {elapsed:.1f} s: {outcomes.get('predicted', 0)} predicted, "
            f"{outcomes.get('refused', 0)} refused ({', '.join(f'{k} {v}' for k, v in types.most_common())}); "
            f"{sum(v for k, v in outcomes.items() if k not in ('predicted', 'refused'))} failures "
            f"({dict((k, v) for k, v in outcomes.items() if k not in ('predicted', 'refused')) or 'none'}); "
            f"slowest case {slowest:.2f} s; CLI in-process {len(cli)} cases (exit codes {dict(cli_rc)}), "
            f"CLI subprocess {len(sub)} cases (exit codes {dict(Counter(rc for _, rc, _ in sub))})")


def _check(results, sub):
    bad = _failures(results)
    assert not bad, bad[:5]
    for i, rc, err in sub:
        lines = err.strip().splitlines()
        assert (rc == 0 and not lines) or (rc == 2 and len(lines) == 1 and lines[0].startswith("emface: error: ")), \
            (i, rc, err)


def test_fuzzed_model_files_give_a_result_or_one_line(tmp_path):
    cases, results, elapsed, sub = _fuzz(tmp_path, 50, seed=2026, cli_every=10, n_subprocess_cli=2)
    print(_summary(50, results, elapsed, sub))
    _check(results, sub)
    outcomes = Counter(r["outcome"] for r in results.values())
    assert outcomes["refused"] > 0  # the corruptions bite


@pytest.mark.slow
def test_fuzzed_model_files_1000(tmp_path):
    cases, results, elapsed, sub = _fuzz(tmp_path, 1000, seed=21, cli_every=20, n_subprocess_cli=10)
    print()
    print(_summary(1000, results, elapsed, sub))
    _check(results, sub)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    worker(sys.argv[2])
