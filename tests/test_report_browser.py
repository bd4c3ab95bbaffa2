"""The HTML report renders every image in a real browser (headless Chromium)."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from emface.datasets import make_faces

CHECK = """<script>window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", imgs.length + ":" + ok.length);
});</script></body>"""


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("EMFACE_REQUIRE_OPTIONAL") == "1":
            pytest.fail("headless Chromium is required in CI (apt-get install chromium)")
        pytest.skip("no Chromium on this machine")
    return exe


def _rendered(exe, html_path, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", CHECK))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           probe.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-images="(\d+):(\d+)"', r.stdout)
    assert m, (r.returncode, r.stderr[-2000:])
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("n_faces,colour,face_shape,n_images", [
    (1, False, "10x8", 6),  # face, background, prior, objective, the misfit histogram and the worst frames
    # several colour faces at a chosen size: the faces figure, a picture per face, background, prior,
    # objective, the size figure, the misfit histogram and the worst frames
    (2, True, "auto", 9),
])
def test_fit_report_renders_every_image(tmp_path, n_faces, colour, face_shape, n_images):
    """`emface fit` (the command itself) writes a page whose every image a browser can show."""
    exe = _chromium()
    X, _ = make_faces(40 * n_faces, (24, 30), (10, 8), n_faces=n_faces, colour=colour, noise=0.5, random_state=1)
    np.save(tmp_path / "stack.npy", X)
    r = subprocess.run([sys.executable, "-m", "emface.cli", "fit", str(tmp_path / "stack.npy"), "--face-shape",
                        face_shape, "--faces", str(n_faces), "--seed", "0", "--out", str(tmp_path / "out"), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    total, ok = _rendered(exe, tmp_path / "out" / "report.html", tmp_path)
    assert total == n_images and ok == total


def test_demo_report_renders_every_image(tmp_path, monkeypatch):
    exe = _chromium()
    from emface import demo

    # a smaller demo stack keeps the test short; the page is built the same way
    monkeypatch.setitem(demo.DEMO_DATA, "n_images", 150)
    demo.run_demo(str(tmp_path), seed=0, echo=lambda m: None)
    total, ok = _rendered(exe, tmp_path / "report.html", tmp_path)
    assert total == 2 and ok == total
    assert np.load(tmp_path / "stack.npy").shape == (150, 72, 96)
