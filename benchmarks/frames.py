"""A folder of many PNG frames, fitted in bounded memory (issue 13). Run by hand:

    python benchmarks/frames.py                    # 100,000 grey PNG frames of 100x80, a 40x30 face
    python benchmarks/frames.py --frames 5000      # the same, fewer

The frames (the bundled astronaut's face on the camera photograph, noise equal
to the face's contrast, 8-bit) are written once to DIR (default
/tmp/emface-bench-frames/N) with their true positions beside them, and reused.
Then ``emface fit DIR --face-shape 40x30 --max-memory 1GB`` runs in a child
process, whose peak RSS (its own, from ``os.wait4``) and wall time are printed
with the share of positions found right. The last line is the same as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _common import cli, run_measured  # noqa: E402

IMAGE = (100, 80)
FACE = (40, 30)


def write_frames(folder, n, seed=0, block=5000):
    """n 8-bit grey PNG frames ``frame000000.png``...; the true positions to ``truth.npy``."""
    import imageio.v3 as iio

    from emface.datasets import photo

    rng = np.random.default_rng(seed)
    face, bg = photo("astronaut", FACE), photo("camera", IMAGE)
    s = face.std()
    (H, W), (h, w) = IMAGE, FACE
    os.makedirs(folder, exist_ok=True)
    pos = np.stack([rng.integers(0, H - h + 1, n), rng.integers(0, W - w + 1, n)], axis=1)
    for a in range(0, n, block):
        X = np.repeat(bg[None], min(block, n - a), axis=0)
        for k in range(X.shape[0]):
            i, j = pos[a + k]
            X[k, i:i + h, j:j + w] = face
        X = np.clip(np.round(X + rng.normal(0, s, X.shape)), 0, 255).astype(np.uint8)
        for k in range(X.shape[0]):
            iio.imwrite(os.path.join(folder, f"frame{a + k:06d}.png"), X[k])
    np.save(os.path.join(folder, "truth.npy"), pos)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames in the folder [100000]")
    ap.add_argument("--dir", default="/tmp/emface-bench-frames", help="where the frames and the fit go")
    ap.add_argument("--max-memory", default="1GB", help="the fit's --max-memory [1GB]")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    folder = os.path.join(args.dir, str(args.frames))
    truth_file = os.path.join(folder, "truth.npy")
    if os.path.isfile(truth_file):
        print(f"reusing {folder}")
    else:
        t = time.perf_counter()
        write_frames(folder, args.frames)
        print(f"wrote {args.frames} PNG frames of {IMAGE[1]}x{IMAGE[0]} to {folder} in "
              f"{time.perf_counter() - t:.0f} s")
    out = os.path.join(args.dir, f"fit-{args.frames}")
    cmd = cli("fit", folder, "--face-shape", f"{FACE[0]}x{FACE[1]}", "--max-memory", args.max_memory,
              "--out", out, "--seed", 0, *(["-q"] if args.quiet else []))
    print("running:", " ".join(map(str, cmd[1:])), flush=True)
    rc, fit_s, fit_rss = run_measured(cmd, args.quiet)
    if rc != 0:
        sys.exit(f"emface fit failed (exit {rc})")
    with open(os.path.join(out, "positions.csv")) as fh:
        pos = np.array([[int(r["row"]), int(r["col"])] for r in csv.DictReader(fh)])
    true_pos = np.load(truth_file)
    right = float(np.mean((pos == true_pos).all(axis=1)))
    with np.load(os.path.join(out, "model.npz")) as z:
        meta = json.loads(str(z["meta"]))
    data_gb = args.frames * IMAGE[0] * IMAGE[1] * 8 / 1e9
    print(f"fit: {fit_s:.1f} s wall, peak RSS {fit_rss / 2**20:.0f} MiB (--max-memory {args.max_memory}; the "
          f"frames as float64 would take {data_gb:.1f} GB), {meta.get('n_iter')} iterations, "
          f"{meta.get('algorithm')} EM")
    print(f"positions right: {right:.4f}")
    print(json.dumps({"frames": args.frames, "fit_s": fit_s, "fit_peak_rss_bytes": fit_rss,
                      "max_memory": args.max_memory, "iterations": meta.get("n_iter"),
                      "algorithm": meta.get("algorithm"), "positions_right": right}))


if __name__ == "__main__":
    main()
