"""Incremental against batch EM on large noisy stacks (issue 13). Run by hand, on an idle machine:

    python benchmarks/incremental.py memory          # 60,000 images of 64x64 in memory, a 24x24 face
    python benchmarks/incremental.py zarr [DIR]      # 200,000 images of 100x80 in a zarr store, a 40x30 face
    python benchmarks/incremental.py plot            # docs/images/incremental.png from the saved traces

Both data sets have noise 6 times the face's contrast (the normal case in
microscopy). Every fit starts from the same data-driven start (one run, no
shift escape: the comparison is of the EM schedules) and runs to a tight
tolerance (1e-4 per image), each in a child process so that its peak RSS is
its own:

- ``batch``: ``algorithm="batch"`` as shipped, with over-relaxation;
- ``batch, plain EM``: ``algorithm="batch", accelerate=False``: batch EM as it
  was before incremental EM and over-relaxation existed;
- ``incremental``: ``algorithm="incremental"`` as shipped.

For each it prints the wall and CPU time until the objective is within 1e-3
per image of the best converged objective of the three, the final objective,
the number of passes and the peak RSS; the traces (objective against wall
time) go to ``benchmarks/results/incremental-<case>.json`` for the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _common import peak_rss_gb, synthetic_block  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
DEFAULT_STORE = "/tmp/emface-bench-noisy.zarr"
NOISE = 6.0
CASES = {
    "memory": dict(K=60_000, image=(64, 64), face=(24, 24)),
    "zarr": dict(K=200_000, image=(100, 80), face=(40, 30)),
}
RUNS = {
    "batch": dict(algorithm="batch"),
    "batch, plain EM": dict(algorithm="batch", accelerate=False),
    "incremental": dict(algorithm="incremental"),
}


def make_data(case, store=DEFAULT_STORE):
    """The images of a case: an in-memory array, or the zarr store (written once)."""
    from emface.datasets import photo

    c = CASES[case]
    K, (H, W), (h, w) = c["K"], c["image"], c["face"]
    rng = np.random.default_rng(0)
    face = photo("astronaut", (h, w))
    bg = photo("camera", (H, W))
    s = NOISE * face.std()
    if case == "memory":
        X = np.empty((K, H, W), dtype=np.float32)
        for a in range(0, K, 5000):
            X[a:a + 5000] = synthetic_block(rng, min(5000, K - a), face, bg, s)
        return X
    import zarr

    if not os.path.exists(store):
        z = zarr.create_array(store, shape=(K, H, W), chunks=(1000, H, W), dtype="float32", compressors=None)
        for a in range(0, K, 1000):
            z[a:a + 1000] = synthetic_block(rng, 1000, face, bg, s)
    return zarr.open(store, mode="r")


def child(case, name, store):
    from emface import FaceEM

    c = CASES[case]
    X = make_data(case, store)
    trace = []
    t0, c0 = time.perf_counter(), time.process_time()

    def cb(info):
        if "block" not in info:
            trace.append((time.perf_counter() - t0, time.process_time() - c0, info["iter"], info["objective"]))

    kw = dict(RUNS[name], n_init=1, shift_escape=False, tol=1e-4, max_iter=300, random_state=0, callback=cb)
    if case == "zarr":
        kw["max_memory"] = "1GB"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM(c["face"], **kw).fit(X)
    s = est.posterior_summary(X)
    print(json.dumps(dict(name=name, trace=trace, final=est.lower_bound_, n_iter=est.n_iter_,
                          wall=time.perf_counter() - t0, cpu=time.process_time() - c0, peak_gb=peak_rss_gb(),
                          positions=s.positions.tolist(), decisive=(s.probability >= 0.9).tolist())))


def _first_within(trace, target, tol=1e-3):
    for wall, cpu, _, obj in trace:
        if obj >= target - tol:
            return wall, cpu
    return None, None


def run_case(case, store):
    os.makedirs(RESULTS, exist_ok=True)
    if case == "zarr":
        make_data(case, store)  # written once, before any timing
    out = {}
    for name in RUNS:
        cmd = [sys.executable, __file__, "--child", case, name, "--store", store]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
        out[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"  {name}: {out[name]['wall']:.1f} s, {out[name]['n_iter']} iterations", flush=True)
    target = max(r["final"] for r in out.values())
    ref = out["batch, plain EM"]
    c = CASES[case]
    print(f"{case}: {c['K']} images of {c['image'][0]}x{c['image'][1]}, a {c['face'][0]}x{c['face'][1]} face, "
          f"noise {NOISE:g}x the face's contrast; target: within 1e-3 per image of {target:.4f}")
    print(f"{'run':<18} {'to target (wall)':>16} {'(CPU)':>9} {'final':>14} {'passes':>7} {'peak RSS':>9} "
          f"{'same positions':>15}")
    for name, r in out.items():
        wall, cpu = _first_within(r["trace"], target)
        pos = np.asarray(r["positions"])
        dec = np.asarray(ref["decisive"]) & np.asarray(r["decisive"])
        same = float(np.mean((pos[dec] == np.asarray(ref["positions"])[dec]).all(axis=1))) if dec.any() else float("nan")
        print(f"{name:<18} {wall if wall is None else f'{wall:15.1f}s'} "
              f"{cpu if cpu is None else f'{cpu:8.1f}s'} {r['final']:14.4f} {r['n_iter']:7d} "
              f"{r['peak_gb']:8.2f}G {same:15.2%}")
    for base in ("batch, plain EM", "batch"):
        bw, bc = _first_within(out[base]["trace"], target)
        iw, ic = _first_within(out["incremental"]["trace"], target)
        if bw and iw:
            print(f"incremental against {base}: {bw / iw:.2f}x sooner in wall time, {bc / ic:.2f}x in CPU time")
    with open(os.path.join(RESULTS, f"incremental-{case}.json"), "w") as fh:
        json.dump(dict(target=target, runs={k: dict(trace=v["trace"], final=v["final"]) for k, v in out.items()}),
                  fh)


def plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in CASES if os.path.exists(os.path.join(RESULTS, f"incremental-{c}.json"))]
    fig, axes = plt.subplots(1, len(cases), figsize=(6.2 * len(cases), 4.2), squeeze=False)
    for ax, case in zip(axes[0], cases):
        with open(os.path.join(RESULTS, f"incremental-{case}.json")) as fh:
            d = json.load(fh)
        for name, r in d["runs"].items():
            tr = np.asarray(r["trace"])
            gap = np.maximum(d["target"] - tr[:, 3], 1e-5)
            ax.semilogy(tr[:, 0], gap, "o-", ms=3, label=name)
        ax.axhline(1e-3, color="grey", ls="--", lw=1)
        c = CASES[case]
        ax.set_title(f"{c['K']:,} images of {c['image'][0]}x{c['image'][1]} ({case}), noise {NOISE:g}x")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("objective below the optimum, per image")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(HERE, "..", "docs", "images", "incremental.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {os.path.normpath(path)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", choices=["memory", "zarr", "plot"])
    ap.add_argument("dir", nargs="?", default=None, help="zarr store (default /tmp/emface-bench-noisy.zarr)")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "RUN"), help=argparse.SUPPRESS)
    ap.add_argument("--store", default=DEFAULT_STORE, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.store)
    elif args.what == "plot":
        plot()
    else:
        run_case(args.what, args.dir or args.store)
