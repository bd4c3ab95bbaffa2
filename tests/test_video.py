"""Video input: the lazy `VideoStack`, its on-disk cache, and `emface generate --video` / `emface fit` on videos."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import optional

av = optional("av")

from emface.io import InputError, load_stack, to_grey  # noqa: E402
from emface.video import VideoStack, write_synthetic_video  # noqa: E402

H, W = 48, 56


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "emface.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _write(path, frames, codec="libx264", pix_fmt="yuv420p", gop=10):
    """Encode (K, H, W, 3) uint8 frames with PyAV: H.264 with B-frames and a keyframe every `gop` frames."""
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=25)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
    s.options = {"g": str(gop)} if codec == "ffv1" else {"g": str(gop), "crf": "12", "preset": "veryfast",
                                                         "bf": "2"}
    for k, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(f, format="rgb24")
        vf.pts = k
        for p in s.encode(vf):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def _decode_all(path):
    """Every frame, by a plain sequential decode: the reference."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _frames(K, seed=0):
    """Frames that differ from each other: a moving bright square and noise."""
    rng = np.random.default_rng(seed)
    X = rng.integers(40, 90, size=(K, H, W, 3), dtype=np.uint8)
    for k in range(K):
        i, j = (3 * k) % (H - 12), (5 * k) % (W - 12)
        X[k, i:i + 12, j:j + 12] = 230
    return X


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 90-frame H.264 mp4 (B-frames, a keyframe every 10 frames) and its frames, decoded once in order."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    _write(path, _frames(90))
    return path, _decode_all(path)


# ----------------------------------------------------------------------------- VideoStack

@pytest.mark.parametrize("ext,codec", [("mp4", "libx264"), ("mkv", "libx264"), ("avi", "libx264"),
                                       ("mkv", "ffv1")])
def test_frame_count_is_exact(tmp_path, ext, codec):
    path = tmp_path / f"v.{ext}"
    _write(path, _frames(37, seed=1), codec=codec, gop=8)
    full = _decode_all(path)
    v = VideoStack(path)
    assert len(full) == 37
    assert v.shape == full.shape and len(v) == 37 and v.ndim == 4 and v.dtype == np.uint8
    assert v.frames_decoded == 0  # counted by demuxing, without decoding
    np.testing.assert_array_equal(v[:], full)
    np.testing.assert_array_equal(v[30:], full[30:])
    if ext == "mkv":  # Matroska does not store a frame count: the packets were counted
        assert v.stream_frames == 0


def test_sequential_chunks_decode_each_frame_once(clip):
    path, full = clip
    v = VideoStack(path)
    for a in range(0, len(v), 16):
        np.testing.assert_array_equal(v[a:a + 16], full[a:a + 16])
    assert v.max_frames_held == 16
    assert v.frames_decoded == len(full)  # no frame decoded twice: reads went on where the last one stopped
    assert v.seeks == 0 and v.reopens == 1
    # a second pass starts over from the beginning
    for a in range(0, len(v), 16):
        np.testing.assert_array_equal(v[a:a + 16], full[a:a + 16])
    assert v.frames_decoded == 2 * len(full) and v.max_frames_held == 16


def test_random_access_gives_the_same_frames(clip):
    path, full = clip
    v = VideoStack(path)
    rng = np.random.default_rng(3)
    K = len(full)
    for _ in range(60):
        a = int(rng.integers(0, K))
        b = min(K, a + int(rng.integers(1, 9)))
        np.testing.assert_array_equal(v[a:b], full[a:b], err_msg=f"frames {a}:{b}")
    for k in (89, 0, 45, 44, 10, 9, -1, -90):
        np.testing.assert_array_equal(v[k], full[k])
    np.testing.assert_array_equal(v[5:80:7], full[5:80:7])
    np.testing.assert_array_equal(v[70:20], full[70:20])
    np.testing.assert_array_equal(v[3:6, 10:20, :, 1], full[3:6, 10:20, :, 1])
    assert v.seeks > 0  # jumps seek to a keyframe rather than decoding from the start
    assert v.frames_decoded < 20 * K
    assert v.max_frames_held <= 11
    with pytest.raises(IndexError):
        v[90]
    with pytest.raises(InputError):
        v[::-1]


def test_avi_frames_are_counted(tmp_path):
    """AVI stores no presentation timestamps (FFmpeg invents them in decoding order, wrong with B-frames):
    its frames are counted from the start, and random reads still give the right frames."""
    path = tmp_path / "v.avi"
    _write(path, _frames(40, seed=2), gop=8)
    full = _decode_all(path)
    v = VideoStack(path)
    assert not v.timestamps and v.shape == full.shape
    rng = np.random.default_rng(4)
    for _ in range(15):
        a = int(rng.integers(0, 40))
        np.testing.assert_array_equal(v[a:a + 3], full[a:a + 3], err_msg=f"frames {a}:{a + 3}")
    m = VideoStack(tmp_path / "v.avi")
    m[0:40]
    assert m.frames_decoded == 40


def test_grey(clip):
    path, full = clip
    g = VideoStack(path, grey=True)
    assert g.shape == full.shape[:3] and g.ndim == 3 and g.dtype == np.float32
    np.testing.assert_allclose(g[20:30], to_grey(full[20:30]), atol=1e-3)
    np.testing.assert_allclose(g[7], full[7].astype(np.float64) @ [0.299, 0.587, 0.114], atol=1e-3)
    X, names = load_stack(path, grey=True)
    assert isinstance(X, VideoStack) and X.grey and names is None and X.frames_decoded == 0


def test_load_stack_is_lazy(clip):
    path, full = clip
    X, names = load_stack(path)
    assert isinstance(X, VideoStack) and X.shape == full.shape and X.frames_decoded == 0
    np.testing.assert_array_equal(np.asarray(X), full)  # the one way to decode it all


def test_pickled_stack_reopens(clip):
    import pickle

    path, full = clip
    v = VideoStack(path)
    v[40:45]
    w = pickle.loads(pickle.dumps(v))
    np.testing.assert_array_equal(w[40:50], full[40:50])


def test_engine_reads_chunk_by_chunk(tmp_path):
    """A fit reads the video chunk by chunk (and the data-driven start in short runs), never all of it at once."""
    from emface import FaceEM
    from emface.sources import ArraySource

    path = tmp_path / "long.mp4"
    truth = write_synthetic_video(path, 600, (H, W), (16, 14), noise=0.3, random_state=4)
    reads = []

    class Recording(VideoStack):
        def _read(self, a, b, step):
            reads.append(len(range(a, b, step)))
            return super()._read(a, b, step)

    X = Recording(path, grey=True)
    src = ArraySource(X, (16, 14), max_memory="8MB")
    n = src.chunk_size
    assert 1 < n < 100
    before = X.frames_decoded
    for chunk in src.chunks():
        pass
    assert X.frames_decoded - before == 600 and X.max_frames_held <= n

    reads.clear()
    est = FaceEM((16, 14), n_init=1, max_iter=8, random_state=0, max_memory="8MB", shift_escape=False)
    est.fit(X)
    init_run = 500 // 10  # emface.init reads 500 images in runs of 50 for its start
    assert reads and max(reads) <= max(n, init_run) and X.max_frames_held <= max(n, init_run)
    assert sum(reads) < 15 * 600
    pos = est.posterior_summary().positions
    assert np.mean((pos == truth.positions).all(axis=1)) >= 0.9


# ----------------------------------------------------------------------------- cache

def test_cache_written_once_and_reused(clip, tmp_path):
    path, full = clip
    cache = tmp_path / "cache" / "sub"
    n0 = VideoStack.caches_written
    X = VideoStack.cached(path, cache, chunk_bytes=7 * H * W * 3)  # chunks of 7 frames
    assert isinstance(X, np.memmap) and X.shape == full.shape and X.dtype == np.uint8
    np.testing.assert_array_equal(X, full)
    assert VideoStack.caches_written == n0 + 1
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith("-rgb.npy")
    mtime = os.stat(cache / files[0]).st_mtime_ns
    Y, _ = load_stack(path, cache_dir=cache)
    assert isinstance(Y, np.memmap) and VideoStack.caches_written == n0 + 1
    assert os.stat(cache / files[0]).st_mtime_ns == mtime
    np.testing.assert_array_equal(Y, full)
    G, _ = load_stack(path, grey=True, cache_dir=cache)  # grey has its own cache
    assert G.shape == full.shape[:3] and G.dtype == np.float32 and VideoStack.caches_written == n0 + 2
    np.testing.assert_allclose(G, to_grey(full), atol=1e-3)


def test_changed_video_is_not_served_from_an_old_cache(tmp_path):
    path = tmp_path / "v.mp4"
    _write(path, _frames(20, seed=5))
    cache = tmp_path / "cache"
    old = np.array(VideoStack.cached(path, cache))
    _write(path, _frames(24, seed=6))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    n0 = VideoStack.caches_written
    new = VideoStack.cached(path, cache)
    assert VideoStack.caches_written == n0 + 1
    assert new.shape[0] == 24 and old.shape[0] == 20
    np.testing.assert_array_equal(new, _decode_all(path))
    assert len(os.listdir(cache)) == 1  # the old version's cache is gone


def test_interrupted_cache_leaves_nothing(clip, tmp_path, monkeypatch):
    path, _ = clip
    cache = tmp_path / "cache"
    real = VideoStack._read

    def failing(self, a, b, step):
        if a > 0:
            raise KeyboardInterrupt
        return real(self, a, b, step)

    monkeypatch.setattr(VideoStack, "_read", failing)
    with pytest.raises(KeyboardInterrupt):
        VideoStack.cached(path, cache, chunk_bytes=10 * H * W * 3)
    assert os.listdir(cache) == []


# ----------------------------------------------------------------------------- errors

def test_errors(tmp_path, monkeypatch):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(InputError, match="could not open the video"):
        load_stack(bad)
    import emface.io

    monkeypatch.setattr(emface.io, "has_module", lambda m: False if m == "av" else True)
    with pytest.raises(InputError, match=r"^reading video needs the video extra: pip install 'emface\[video\]'$"):
        load_stack(bad)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(InputError, match=r"^reading video needs the video extra"):
        VideoStack(bad)


# ----------------------------------------------------------------------------- command line

def _share_right(out, truth_file):
    with open(out / "positions.csv") as fh:
        rows = list(csv.DictReader(fh))
    pos = np.array([[int(r["row"]), int(r["col"])] for r in rows])
    with np.load(truth_file) as t:
        assert len(pos) == len(t["positions"])
        return float(np.mean((pos == t["positions"]).all(axis=1)))


def test_generate_video_then_fit(tmp_path):
    video = tmp_path / "g.mp4"
    r = run("generate", "--video", video, "--n-images", 150, "--image-shape", f"{H}x{W}", "--face-shape", "16x14",
            "--noise", 0.3, "--seed", 7, "--fps", 30)
    assert r.returncode == 0, r.stderr
    assert "to " + str(video) in r.stderr and "g.truth.npz" in r.stderr
    truth = tmp_path / "g.truth.npz"
    with np.load(truth) as t:
        assert t["positions"].shape == (150, 2) and t["labels"].shape == (150,)
        assert t["faces"].shape == (1, 16, 14) and t["background"].shape == (H, W)
        assert t["prior"].shape == (H - 15, W - 13) and float(t["noise_std"]) > 0
    v = VideoStack(video)
    assert v.shape == (150, H, W, 3) and float(v.frame_rate) == 30
    x = v[:10].astype(int)
    assert np.abs(x[..., 0] - x[..., 1]).max() <= 2 and np.abs(x[..., 2] - x[..., 1]).max() <= 2  # grey as RGB

    r = run("fit", video, "--face-shape", "16x14", "--out", tmp_path / "out", "-q", "--restarts", 2, "--seed", 0)
    assert r.returncode == 0, r.stderr
    assert _share_right(tmp_path / "out", truth) >= 0.9

    cache = tmp_path / "cache"
    for n in (1, 2):
        out = tmp_path / f"cached{n}"
        r = run("fit", video, "--face-shape", "16x14", "--out", out, "-q", "--grey", "--cache", cache,
                "--restarts", 2, "--seed", 0)
        assert r.returncode == 0, r.stderr
        assert _share_right(out, truth) >= 0.9
        files = os.listdir(cache)
        assert len(files) == 1 and files[0].endswith("-grey.npy")
        if n == 1:
            mtime = os.stat(cache / files[0]).st_mtime_ns
        else:
            assert os.stat(cache / files[0]).st_mtime_ns == mtime  # reused, not written again


def test_generate_needs_one_output(tmp_path):
    r = run("generate", "-q")
    assert r.returncode == 2 and "Missing option '--out'" in r.stderr and "--video" in r.stderr
    r = run("generate", "-q", "--out", tmp_path / "a.npy", "--video", tmp_path / "a.mp4")
    assert r.returncode == 2 and "not both" in r.stderr
    r = run("generate", "-q", "--video", tmp_path / "a.gif")
    assert r.returncode == 2 and "expected a file name ending in .mp4" in r.stderr
    assert os.listdir(tmp_path) == []
