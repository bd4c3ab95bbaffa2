"""The emface command on each bad input: exit code and the one line it prints (issue 5's table), then
every numbered case of issue 21 (untrusted files, half-written results): exit code, stderr lines, the
line itself, what it left behind and what it changed outside its outputs.

    python benchmarks/cli_errors.py            # both tables
    python benchmarks/cli_errors.py --issue21  # issue 21's table only

Issue 21's cases are tests/untrusted_cases.py's, the ones tests/test_cli_untrusted.py asserts.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np


def run(*args):
    r = subprocess.run([sys.executable, "-m", "emface.cli", *map(str, args)], capture_output=True, text=True)
    return r.returncode, r.stderr.strip()


def main():
    if "--issue21" not in sys.argv:
        issue5()
        print()
    issue21()


def issue5():
    import imageio.v3 as iio

    with tempfile.TemporaryDirectory() as d:
        good = os.path.join(d, "good.npy")
        np.save(good, np.random.default_rng(0).normal(size=(20, 24, 30)))
        trunc = os.path.join(d, "truncated.npy")
        data = open(good, "rb").read()
        open(trunc, "wb").write(data[: len(data) // 2])
        notimg = os.path.join(d, "frames_bad")
        os.mkdir(notimg)
        open(os.path.join(notimg, "a.png"), "w").write("this is not a picture")
        sizes = os.path.join(d, "frames_sizes")
        os.mkdir(sizes)
        iio.imwrite(os.path.join(sizes, "1.png"), np.zeros((10, 12), np.uint8))
        iio.imwrite(os.path.join(sizes, "2.png"), np.zeros((10, 13), np.uint8))
        afile = os.path.join(d, "afile")
        open(afile, "w").write("x")
        cases = [
            ("missing file", ("fit", os.path.join(d, "nope.npy"), "--face-shape", "8x8", "--out", os.path.join(d, "o"))),
            ("truncated .npy", ("fit", trunc, "--face-shape", "8x8", "--out", os.path.join(d, "o"))),
            ("an image that is not an image", ("fit", notimg, "--face-shape", "8x8", "--out", os.path.join(d, "o"))),
            ("frames of different sizes", ("fit", sizes, "--face-shape", "8x8", "--out", os.path.join(d, "o"))),
            ("face larger than the frames", ("fit", good, "--face-shape", "30x8", "--out", os.path.join(d, "o"))),
            ("malformed --face-shape", ("fit", good, "--face-shape", "8by8", "--out", os.path.join(d, "o"))),
            ("output folder cannot be written", ("fit", good, "--face-shape", "8x8", "--out",
                                                 os.path.join(afile, "out"))),
            ("unknown model file for predict", ("predict", os.path.join(d, "m.npz"), good, "--out",
                                                os.path.join(d, "p.csv"))),
        ]
        print("| bad input | exit code | stderr (one line) |\n|---|---|---|")
        for label, args in cases:
            code, err = run(*args)
            print(f"| {label} | {code} | `{err.replace(d, '$TMP')}` |")


def issue21():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import untrusted_cases as uc

    with tempfile.TemporaryDirectory() as d:
        shared = uc.make_shared(os.path.join(d, "shared"))
        print("| item | case | expected | exit code | stderr lines | stderr (last line) | left behind | "
              "changed outside | holds |\n|---|---|---|---|---|---|---|---|---|")
        for i, case in enumerate(uc.CASES):
            missing = [n for n in case.needs if not uc.available(n)]
            if missing:
                print(f"| {case.item} | {case.name} | {case.expect} | - | - | (not run: needs {', '.join(missing)}) "
                      f"| - | - | - |")
                continue
            case_dir = os.path.join(d, f"case{i}")
            os.mkdir(case_dir)
            res = uc.run_case(case, case_dir, shared)
            wrong = uc.judge(case, res)
            last = "(timed out)" if res.timed_out else (res.lines[-1] if res.lines else "")
            last = last.replace(d, "$TMP").replace("|", "\\|")
            if len(last) > 160:
                last = last[:157] + "..."
            print(f"| {case.item} | {case.name} | {case.expect} | {res.returncode} | {len(res.lines)} | `{last}` | "
                  f"{', '.join(res.left) or '-'} | {', '.join(res.changed) or '-'} | "
                  f"{'yes' if not wrong else 'NO: ' + '; '.join(wrong).replace(d, '$TMP')} |", flush=True)


if __name__ == "__main__":
    main()
