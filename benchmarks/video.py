"""A long video, fitted in bounded memory: the acceptance check of video input. Run by hand:

    python benchmarks/video.py                  # 45,000 frames of 320x240 (25 fps, 30 minutes), 56x48 face
    python benchmarks/video.py --frames 3000    # the same, shorter
    python benchmarks/video.py --frames 3000 -- --max-iter 5    # arguments after -- go to emface fit

The video is written once with ``emface generate --video`` (H.264, noise equal to
the face's contrast) to DIR (default /tmp/emface-bench-video) and reused, with
its truth (``.truth.npz``) beside it. Then ``emface fit VIDEO --face-shape 56x48
--max-memory 1GB`` runs in a child process, whose peak RSS (from ``os.wait4``,
the child's own) and wall time are printed with the share of positions found
right against the truth. The last line is the same figures as JSON.
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

IMAGE = (240, 320)  # H x W: 320 wide, 240 high
FACE = (56, 48)


def _decode_rate(video, n=1500):
    """Frames per second of a plain sequential read through `VideoStack` (grey and colour)."""
    from emface.video import VideoStack

    out = {}
    for grey in (False, True):
        v = VideoStack(video, grey=grey)
        m = min(n, len(v))
        t = time.perf_counter()
        for a in range(0, m, 100):
            v[a:min(m, a + 100)]
        out["grey" if grey else "colour"] = m / (time.perf_counter() - t)
        v.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=45_000, help="frames in the video [45000]")
    ap.add_argument("--dir", default="/tmp/emface-bench-video", help="where the video and the fit go")
    ap.add_argument("--max-memory", default="1GB", help="the fit's --max-memory [1GB]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("fit_args", nargs="*", help="after --: more arguments for emface fit")
    args = ap.parse_args(argv)

    os.makedirs(args.dir, exist_ok=True)
    video = os.path.join(args.dir, f"faces-{args.frames}.mp4")
    truth_file = os.path.join(args.dir, f"faces-{args.frames}.truth.npz")
    q = ["-q"] if args.quiet else []
    gen_s = None
    if os.path.isfile(video) and os.path.isfile(truth_file):
        print(f"reusing {video}")
    else:
        cmd = cli("generate", "--video", video, "--n-images", args.frames, "--image-shape",
                   f"{IMAGE[0]}x{IMAGE[1]}", "--face-shape", f"{FACE[0]}x{FACE[1]}", "--noise", 1.0,
                   "--fps", 25, "--seed", args.seed, *q)
        print("writing", video)
        rc, gen_s, gen_rss = run_measured(cmd, args.quiet)
        if rc != 0:
            sys.exit(f"emface generate failed (exit {rc})")
        print(f"  generate: {gen_s:.1f} s, peak RSS {gen_rss / 2**20:.0f} MiB")
    size = os.path.getsize(video)
    rates = _decode_rate(video)
    print(f"video: {args.frames} frames of {IMAGE[1]}x{IMAGE[0]}, {size / 1e6:.0f} MB; decoding "
          f"{rates['colour']:.0f} frames/s in colour, {rates['grey']:.0f} grey")

    out = os.path.join(args.dir, f"fit-{args.frames}")
    cmd = cli("fit", video, "--face-shape", f"{FACE[0]}x{FACE[1]}", "--max-memory", args.max_memory,
               "--out", out, "--seed", args.seed, *q, *args.fit_args)
    print("running:", " ".join(map(str, cmd[1:])))
    rc, fit_s, fit_rss = run_measured(cmd, args.quiet)
    if rc != 0:
        sys.exit(f"emface fit failed (exit {rc})")

    with open(os.path.join(out, "positions.csv")) as fh:
        pos = np.array([[int(r["row"]), int(r["col"])] for r in csv.DictReader(fh)])
    with np.load(truth_file) as t:
        true_pos = t["positions"]
    if len(pos) != len(true_pos):
        sys.exit(f"positions.csv has {len(pos)} rows, the truth {len(true_pos)}")
    right = float(np.mean((pos == true_pos).all(axis=1)))
    near = float(np.mean(np.abs(pos - true_pos).max(axis=1) <= 1))
    with np.load(os.path.join(out, "model.npz")) as z:
        meta = json.loads(str(z["meta"]))
        face = z["faces"][0].mean(axis=0)  # (Ch, h, w) -> grey, as the video's faces were made
    with np.load(truth_file) as t:
        true_face = t["faces"][0]
    # the face recovered: its correlation with the true face, and its RMS error against the face's
    # own spread (H.264 blurs the frames, so a perfect fit still differs from the face it was made of)
    corr = float(np.corrcoef(face.ravel(), true_face.ravel())[0, 1])
    rel_rms = float(np.sqrt(np.mean((face - true_face) ** 2)) / true_face.std())
    n_runs = len(meta.get("runs", []))
    n_iter = sum(r["n_iter"] for r in meta.get("runs", []))
    print(f"fit: {fit_s:.1f} s wall, peak RSS {fit_rss / 2**20:.0f} MiB (--max-memory {args.max_memory}), "
          f"{n_runs} run(s), {n_iter} iterations in all")
    print(f"positions right: {right:.4f} (within one pixel: {near:.4f})")
    print(f"face: correlation with the true face {corr:.4f}, RMS error {rel_rms:.3f} of the face's spread")
    print(json.dumps({"frames": args.frames, "video_bytes": size, "generate_s": gen_s,
                      "decode_fps": rates, "fit_s": fit_s, "fit_peak_rss_bytes": fit_rss,
                      "max_memory": args.max_memory, "runs": n_runs, "iterations": n_iter,
                      "positions_right": right, "positions_within_1px": near, "face_correlation": corr,
                      "face_rms_over_std": rel_rms}))


if __name__ == "__main__":
    main()
