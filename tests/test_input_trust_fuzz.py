"""Fuzzing the stack readers: random corruptions of stack files, each read by `emface.io.load_stack`.

Every corrupted file (a .npy header with changed fields or garbage, a truncated or
damaged .npy, .npz, TIFF or PNG, a folder of frames with one damaged frame) must
give a valid stack, whose data are then read, or an InputError / ValueError with a
one-line message: no other exception, no crash, no hang over 10 s.

The cases run in a worker subprocess that reports one line per case; a worker that
dies (a crash) or falls silent for 10 s (a hang) is replaced and the case recorded.
Run as a script for the figures: ``python tests/test_input_trust_fuzz.py 1000``.
"""

import json
import os
import select
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

HANG_S = 10.0
READ_CAP = 64 * 2**20  # bytes of a valid stack read back in full; larger ones: their first and last images

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


# ----------------------------------------------------------------------------- the seed files

def _seeds(folder, rng):
    """Valid stack files of every kind, as {name: bytes}, and one folder of frames."""
    import io

    import imageio.v3 as iio
    import tifffile
    from numpy.lib import format as npformat

    X = rng.integers(0, 255, (6, 10, 12)).astype(np.uint8)
    F = rng.normal(size=(4, 9, 11)).astype(np.float32)
    seeds = {}
    for name, arr in (("u8.npy", X), ("f4.npy", F), ("rgb.npy", rng.integers(0, 255, (3, 8, 9, 3)).astype(np.uint8))):
        b = io.BytesIO()
        np.save(b, arr)
        seeds[name] = b.getvalue()
    b = io.BytesIO()
    npformat.write_array(b, np.asfortranarray(F), version=(2, 0))
    seeds["fortran_v2.npy"] = b.getvalue()
    for name, save in (("stored.npz", np.savez), ("deflated.npz", np.savez_compressed)):
        b = io.BytesIO()
        save(b, X=X, other=F)
        seeds[name] = b.getvalue()
    for name, kw in (("one.tif", {}), ("zlib.tif", {"compression": "zlib"})):
        b = io.BytesIO()
        tifffile.imwrite(b, X, **kw)
        seeds[name] = b.getvalue()
    b = io.BytesIO()
    with tifffile.TiffWriter(b) as tw:
        for x in X:
            tw.write(x)
    seeds["pages.tif"] = b.getvalue()
    seeds["frame.png"] = iio.imwrite("<bytes>", X[0], extension=".png")
    seeds["frame16.png"] = iio.imwrite("<bytes>", X[0].astype(np.uint16) * 257, extension=".png")
    return seeds, X


# ----------------------------------------------------------------------------- corruptions

_DESCRS = ["<f8", "<f4", "|u1", ">i2", "<c16", "|O", "|b1", "<U3", "|V8", "<m8[s]", "<M8[D]", "[('a', '<f4')]",
           "'<f4'", "<f16", "xx", "", "<i8", "|S4", "<f2", ">f8"]
_SHAPES = ["()", "(0,)", "(0, 10, 12)", "(6, 10, 12)", "(6, 10, 12, 1, 1)", "(-1, 10, 12)", "(10**9, 10**9)",
           "(6, 10)", "(1,)", "(2**62, 2**62, 4)", "(6, 10, 12, 3)", "(720,)", "(3, 2, 5, 2, 6)", "('a',)",
           "(6.5, 10, 12)", "(6, 10, 12", "None", "(1, 1, 1)", "(60, 12)", "(6, 120, 1)"]


def _npy_header_case(data, rng):
    """A .npy file whose header dictionary has one field (or all of it) replaced."""
    size = 2 if data[6] == 1 else 4  # the header length's bytes: 2 in version 1, 4 in versions 2 and 3
    hlen = int.from_bytes(data[8:8 + size], "little")
    rest = data[8 + size:]
    header, body = rest[:hlen].decode("latin1"), rest[hlen:]
    what = rng.integers(0, 5)
    if what == 0:
        header = "{'descr': '%s', 'fortran_order': False, 'shape': (6, 10, 12), }" % rng.choice(_DESCRS)
    elif what == 1:
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': %s, }" % rng.choice(_SHAPES)
    elif what == 2:
        header = "{'descr': '|u1', 'fortran_order': %s, 'shape': (6, 10, 12), }" % rng.choice(
            ["True", "1", "'yes'", "None", "[]", "False"])
    elif what == 3:
        junk = bytes(rng.integers(0, 256, int(rng.integers(1, 80))).astype(np.uint8))
        header = junk.decode("latin1")
    else:
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s}" % (
            rng.choice(_DESCRS), rng.choice(["True", "False"]), rng.choice(_SHAPES))
    header = header + " " * ((64 - (len(header) + 9 + size) % 64) % 64) + "\n"
    hlen = len(header.encode("latin1"))
    if rng.random() < 0.2:  # a header length that lies
        hlen = int(rng.integers(0, 2 ** (8 * size)))
    return data[:8] + int(hlen).to_bytes(size, "little") + header.encode("latin1") + body


def _mutate(data, rng, header_bytes=None):
    """Flip, overwrite, insert, delete or truncate bytes (mostly in the first `header_bytes`)."""
    b = bytearray(data)
    span = len(b) if header_bytes is None or rng.random() < 0.25 else min(len(b), header_bytes)
    what = rng.integers(0, 6)
    if what == 0 or len(b) < 2:  # truncate
        return bytes(b[: int(rng.integers(0, max(1, len(b))))])
    if what == 1:  # flip bits
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, span))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif what == 2:  # overwrite a run with random bytes
        i = int(rng.integers(0, span))
        n = int(rng.integers(1, 33))
        b[i:i + n] = bytes(rng.integers(0, 256, n).astype(np.uint8))
    elif what == 3:  # set a run to 0xff or 0x00 (huge or empty sizes and offsets)
        i = int(rng.integers(0, span))
        n = int(rng.integers(1, 9))
        b[i:i + n] = (b"\xff" if rng.random() < 0.5 else b"\x00") * n
    elif what == 4:  # insert
        i = int(rng.integers(0, span))
        b[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 17))).astype(np.uint8))
    else:  # delete
        i = int(rng.integers(0, span))
        del b[i:i + int(rng.integers(1, 17))]
    return bytes(b)


def _npz_member_case(seeds, rng):
    """A .npz whose X member is a corrupted .npy (stored or deflated), or a zip with odd headers."""
    import io

    kind = rng.choice(["stored", "deflated"])
    inner = _npy_header_case(seeds["u8.npy"], rng) if rng.random() < 0.6 else _mutate(seeds["u8.npy"], rng, 128)
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", compression=zipfile.ZIP_STORED if kind == "stored" else zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", inner)
    data = b.getvalue()
    if rng.random() < 0.3:
        data = _mutate(data, rng, 64)
    return data


def make_cases(folder, n, seed=0):
    """Write `n` corrupted inputs under `folder`; return their paths (files, or a folder of frames)."""
    rng = np.random.default_rng(seed)
    seeds, X = _seeds(folder, rng)
    names = sorted(seeds)
    paths = []
    for i in range(n):
        r = rng.random()
        if r < 0.3:
            src = rng.choice([s for s in names if s.endswith(".npy")])
            data, ext = _npy_header_case(seeds[src], rng), ".npy"
        elif r < 0.4:
            data, ext = _npz_member_case(seeds, rng), ".npz"
        elif r < 0.85:
            src = str(rng.choice(names))
            ext = os.path.splitext(src)[1]
            data = _mutate(seeds[src], rng, 256)
        else:  # a folder of frames, one of them damaged
            d = os.path.join(folder, f"case{i:05d}")
            os.makedirs(d)
            bad = int(rng.integers(0, 5))
            for k in range(5):
                png = seeds["frame.png"]
                if k == bad:
                    png = _mutate(png if rng.random() < 0.8 else seeds["frame16.png"], rng, 64)
                with open(os.path.join(d, f"f{k}.png"), "wb") as fh:
                    fh.write(png)
            paths.append(d)
            continue
        p = os.path.join(folder, f"case{i:05d}{ext}")
        with open(p, "wb") as fh:
            fh.write(data)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- the worker

def _read_all(X):
    """Read a loaded stack's data as the engine does: a chunk at a time (capped for large stacks)."""
    K = int(X.shape[0])
    if K == 0:
        return 0
    per = max(1, int(np.prod(X.shape[1:], dtype=np.int64)) * np.dtype(X.dtype).itemsize)
    step = max(1, (4 * 2**20) // per)
    ranges = [(a, min(K, a + step)) for a in range(0, K, step)] if K * per <= READ_CAP else [(0, 1), (K - 1, K)]
    total = 0
    for a, b in ranges:
        x = np.asarray(X[a:b])
        assert x.shape == (b - a,) + tuple(X.shape[1:]), (x.shape, X.shape)
        total += x.size
    return total


def check_one(path):
    """('ok' | 'error' | 'BAD', detail) for one input."""
    import warnings

    from emface.errors import InputError
    from emface.io import load_stack

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X, _ = load_stack(path)
            if len(X.shape) not in (3, 4) or np.dtype(X.dtype).kind not in "biuf":
                return "BAD", f"not a stack: shape {X.shape} dtype {X.dtype}"
            n = _read_all(X)
        return "ok", f"{tuple(X.shape)} {X.dtype} {n}"
    except (InputError, ValueError) as exc:
        msg = str(exc)
        if "\n" in msg or not msg.strip():
            return "BAD", f"{type(exc).__name__} not on one line: {msg!r}"
        return "error", f"{type(exc).__name__}: {msg}"
    except MemoryError as exc:
        return "BAD", f"MemoryError: {exc}"
    except Exception as exc:
        return "BAD", f"{type(exc).__name__}: {exc}"


def worker(listfile, start):
    with open(listfile) as fh:
        paths = json.load(fh)
    for i in range(start, len(paths)):
        t0 = time.perf_counter()
        status, detail = check_one(paths[i])
        line = json.dumps([i, status, round(time.perf_counter() - t0, 4), detail[:300]])
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_cases(paths, workdir):
    """Run every case through worker subprocesses; return a list of (status, seconds, detail) per case."""
    listfile = os.path.join(workdir, "cases.json")
    with open(listfile, "w") as fh:
        json.dump(paths, fh)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = [None] * len(paths)
    start = 0
    while start < len(paths):
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", listfile, str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        buf = b""
        last = time.monotonic()
        nxt = start
        first = True
        while True:
            # the first case also waits for the worker's imports
            r, _, _ = select.select([proc.stdout], [], [], 1.0)
            if r:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    i, status, sec, detail = json.loads(line)
                    results[i] = (status, sec, detail)
                    nxt = i + 1
                    last = time.monotonic()
                    first = False
            elif time.monotonic() - last > HANG_S + (60 if first else 0):
                proc.kill()
                proc.wait()
                results[nxt] = ("HANG", HANG_S, f"no answer in {HANG_S:g} s: {paths[nxt]}")
                nxt += 1
                break
        proc.wait()
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if nxt < len(paths) and results[nxt] is None:
            results[nxt] = ("CRASH", 0.0, f"worker exited with {proc.returncode}: {err[-300:]} ({paths[nxt]})")
            nxt += 1
        start = nxt
    return results


def summary(results):
    counts = {}
    for status, _, _ in results:
        counts[status] = counts.get(status, 0) + 1
    slowest = max(results, key=lambda r: r[1])
    return counts, slowest


def _fuzz(tmp_path, n, seed):
    paths = make_cases(str(tmp_path), n, seed)
    results = run_cases(paths, str(tmp_path))
    counts, slowest = summary(results)
    print(f"\n{n} corrupted stacks: {counts}; slowest {slowest[1]:.3f} s ({slowest[2][:120]})")
    bad = [(paths[i], r) for i, r in enumerate(results) if r[0] not in ("ok", "error")]
    assert not bad, bad[:5]
    assert counts.get("error", 0) > 0 and counts.get("ok", 0) > 0  # both outcomes are exercised
    return paths, results


def test_fuzz_stack_headers_fast(tmp_path):
    pytest.importorskip("tifffile")
    _fuzz(tmp_path, 50, seed=1)


@pytest.mark.slow
def test_fuzz_stack_headers_1000(tmp_path):
    pytest.importorskip("tifffile")
    paths, results = _fuzz(tmp_path, 1000, seed=2)
    # a few through the command line: exit 0, or exit 2 with one line on stderr
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rng = np.random.default_rng(3)
    ok = [p for p, r in zip(paths, results) if r[0] == "ok"]
    refused = [p for p, r in zip(paths, results) if r[0] == "error"]
    picks = [ok[i] for i in rng.choice(len(ok), 6, replace=False)]
    picks += [refused[i] for i in rng.choice(len(refused), 6, replace=False)]
    codes = []
    for p in picks:
        out = subprocess.run([sys.executable, "-m", "emface.cli", "fit", p, "--face-shape", "3x3", "--out",
                              str(tmp_path / "out"), "--max-iter", "2", "--restarts", "1", "-q"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode in (0, 2), (p, out.returncode, out.stderr[-500:])
        codes.append(out.returncode)
        if out.returncode == 2:
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("emface: error: "), (p, out.stderr)
    print(f"{len(picks)} of them through emface fit: {codes.count(0)} exit 0, {codes.count(2)} exit 2 with one line")


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        import tempfile

        n = int(sys.argv[1])
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            paths = make_cases(d, n, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 2)
            results = run_cases(paths, d)
            counts, slowest = summary(results)
            print(f"{n} corrupted stacks in {time.perf_counter() - t0:.1f} s: {counts}; "
                  f"slowest {slowest[1]:.3f} s ({slowest[2][:160]})")
            for i, r in enumerate(results):
                if r[0] not in ("ok", "error"):
                    print(i, paths[i], r)
