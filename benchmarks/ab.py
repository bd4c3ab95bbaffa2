"""Run one benchmark in two checkouts, alternately, and print the ratios.

A refactor must not change speed. Timings on a shared machine drift, so the
only fair comparison is the same benchmark on both trees in the same run,
interleaved (A B A B ...), each figure taken as its best over the rounds:

    git worktree add /tmp/old <commit>
    python benchmarks/ab.py --old /tmp/old --new . -- benchmarks/speed.py --no-baseline

The benchmark runs in a fresh process per round, in each checkout's own folder,
with ``PYTHONPATH`` set to its ``src``: each side runs its own copy of the
benchmark against its own code, as a user of that commit would. Its output lines are matched by position; in every line the numbers are
compared token by token and printed as ``old -> new (new/old)``. Lines whose
text (numbers removed) differs between the trees are printed as they are.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _run(root, command):
    root = os.path.abspath(root)
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"))
    out = subprocess.run([sys.executable, *command], cwd=root, env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.splitlines()


def _best(runs):
    """Per line and per number, the smallest over the rounds (the least disturbed run)."""
    best = list(runs[0])
    for lines in runs[1:]:
        for i, line in enumerate(lines[:len(best)]):
            a, b = _NUMBER.findall(best[i]), _NUMBER.findall(line)
            if _NUMBER.sub("#", best[i]) != _NUMBER.sub("#", line) or len(a) != len(b):
                continue
            parts = iter(str(min(float(x), float(y), key=abs)) if x != y else x for x, y in zip(a, b))
            best[i] = _NUMBER.sub(lambda m: next(parts), best[i])
    return best


def _compare(old, new):
    for a, b in zip(old, new):
        na, nb = _NUMBER.findall(a), _NUMBER.findall(b)
        if _NUMBER.sub("#", a) != _NUMBER.sub("#", b) or not na:
            print(f"old: {a}\nnew: {b}" if a != b else a)
            continue
        cells = []
        for x, y in zip(na, nb):
            fx, fy = float(x), float(y)
            cells.append(x if x == y else f"{x}->{y} ({fy / fx:.3f})" if fx else f"{x}->{y}")
        it = iter(cells)
        print(_NUMBER.sub(lambda m: next(it), a))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="checkout of the reference commit")
    ap.add_argument("--new", required=True, help="checkout under test")
    ap.add_argument("--rounds", type=int, default=2, help="alternations (default 2)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the benchmark and its arguments")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the benchmark after --, e.g. -- benchmarks/speed.py --no-baseline")
    runs = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in ("old", "new"):
            print(f"round {r + 1}: {name}", file=sys.stderr, flush=True)
            runs[name].append(_run(getattr(args, name), command))
    _compare(_best(runs["old"]), _best(runs["new"]))


if __name__ == "__main__":
    main()
