"""Video files as lazy image stacks, and synthetic videos with their truth.

`VideoStack` is a read-only array-like over a video file (through PyAV, the
``video`` extra): ``stack[a:b]`` decodes frames a..b-1 only, so a stack of any
length is fitted in bounded memory. The decoder stays open between calls:
reads that follow each other (a:b, then b:c, ...), as the engine's passes do,
continue decoding without seeking; a read elsewhere seeks to the keyframe
before it and decodes forward. Frames are identified by their presentation
timestamps, from an index of the video stream's packets built once when the
file is opened (demuxing, which reads the file but decodes nothing), so frame
k is the same picture whatever the order of the reads, and K is exact.

`VideoStack.cached` decodes a video once into an uncompressed ``.npy`` file
and returns it memory-mapped; `write_synthetic_video` writes a long synthetic
video block by block (``emface generate --video``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings

import numpy as np

from ._arraylike import LazyStack
from ._layout import LUMA as _LUMA64
from ._paths import check_regular_file
from .errors import InputError, one_line

__all__ = ["VideoStack", "write_synthetic_video", "LUMA"]

LUMA = _LUMA64.astype(np.float32)  # ITU-R 601, in single precision for frames
_EXTRA = "pip install 'emface[video]'"
_CACHE_CHUNK_BYTES = 64 * 2**20
# x264 settings of the synthetic videos: CAVLC and no deblocking (tune fastdecode)
# decode about six times faster than the defaults, which matters when a fit
# decodes the whole video on every EM iteration
X264_OPTIONS = {"preset": "veryfast", "tune": "fastdecode"}


def _import_av(what="reading"):
    try:
        import av
    except ImportError:
        raise InputError(f"{what} video needs the video extra: {_EXTRA}") from None
    return av


class VideoStack(LazyStack):
    """A video file as a read-only stack (K, H, W, 3) of uint8 RGB frames, or (K, H, W) grey.

    Parameters
    ----------
    path : str or path-like
    grey : bool
        Grey frames (ITU-R 601 luma of the RGB frames, float32) instead of colour.
    threads : bool
        Let FFmpeg decode with several threads.

    Attributes
    ----------
    shape, dtype, ndim : as an array's
    frames_decoded : int
        Frames decoded so far, by every read (those decoded only to reach a
        read's first frame included).
    max_frames_held : int
        The most frames one read has held (the length of its output): reads
        convert each decoded frame into their output as they go.
    reads, seeks, reopens : int
        Reads (``__getitem__`` calls), seeks to a keyframe, and restarts from
        the file's beginning.

    Notes
    -----
    ``stack[a:b]`` returns a new numpy array; ``stack[k]`` one frame. Steps
    greater than one decode every frame of the range and keep one in `step`.
    ``np.asarray(stack)`` decodes the whole video (it is the one way to do so).
    The object is safe to share between threads (reads are serialised) and to
    pickle (the copy reopens the file).
    """

    _what = "a video"

    def __init__(self, path, grey=False, *, threads=True):
        self._av = _import_av()
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise InputError(f"{self.path}: no such video file")
        check_regular_file(self.path)  # a FIFO would block the demuxer for ever
        self.grey = bool(grey)
        self.threads = bool(threads)
        self._lock = threading.RLock()
        self._container = None
        self._stream = None
        self._frames = None
        self._next = None
        self._reformatter = None
        self.frames_decoded = 0
        self.max_frames_held = 0
        self.reads = 0
        self.seeks = 0
        self.reopens = 0
        self._scan()

    # ------------------------------------------------------------------ index
    def _open_container(self):
        av = self._av
        try:
            container = av.open(self.path, "r")
        except Exception as exc:  # PyAV raises its own error classes (FFmpegError, ...)
            raise InputError(f"{self.path}: could not open the video ({one_line(exc)})") from None
        if not container.streams.video:
            container.close()
            raise InputError(f"{self.path}: the file has no video stream")
        stream = container.streams.video[0]
        if self.threads:
            try:
                stream.thread_type = "AUTO"
            except Exception:  # pragma: no cover - older PyAV
                pass
        return container, stream

    def _scan(self):
        """Index the video stream's packets: K, the timestamps of its frames and its keyframes."""
        container, stream = self._open_container()
        pts, keys, missing = [], [], False
        try:
            self.stream_frames = int(stream.frames or 0)  # the container's own count, a hint only
            # AVI stores no presentation timestamps: FFmpeg makes them up in decoding order
            avi = "avi" in str(getattr(container.format, "name", "")).split(",")
            self.time_base = stream.time_base
            self.frame_rate = stream.average_rate or stream.guessed_rate
            declared = _declared_frames(container, stream, self.stream_frames, self.frame_rate)
            H, W = int(stream.codec_context.height), int(stream.codec_context.width)
            for packet in container.demux(stream):
                # skip flush packets, and frames an edit list drops
                if packet.size == 0 or getattr(packet, "is_discard", False):
                    continue
                if packet.pts is None:
                    missing = True
                    pts.append(0)
                else:
                    pts.append(int(packet.pts))
                keys.append(bool(packet.is_keyframe))
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{self.path}: could not read the video ({one_line(exc)})") from None
        finally:
            container.close()
        K = len(pts)
        if K == 0:
            raise InputError(f"{self.path}: the video has no frames")
        if H < 1 or W < 1:
            raise InputError(f"{self.path}: the video stream does not say its frame size")
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        sorted_pts = np.asarray(pts, dtype=np.int64)[order]
        self.timestamps = not (missing or avi or np.any(np.diff(sorted_pts) == 0))
        if not self.timestamps:
            # no usable timestamps: frames are counted from the start, and a read
            # that goes back starts over from the beginning of the file
            self._pts = None
            self._keys = np.zeros(0, dtype=np.int64)
        else:
            self._pts = sorted_pts
            self._keys = np.flatnonzero(np.asarray(keys)[order]).astype(np.int64)
        if declared is not None and K + max(2, declared[0] // 100) < declared[0]:
            warnings.warn(f"{self.path}: only {K} frames could be read but the file declares {declared[0]} "
                          f"({declared[1]}): it may be truncated; the {K} frames it holds are used",
                          UserWarning, stacklevel=3)
        self.n_frames = K
        self.frame_shape = (H, W)
        self.shape = (K, H, W) if self.grey else (K, H, W, 3)
        self.dtype = np.dtype(np.float32) if self.grey else np.dtype(np.uint8)

    # ------------------------------------------------------------------ array-like
    def __repr__(self):
        kind = "grey" if self.grey else "RGB"
        return f"VideoStack({self.path!r}, {self.n_frames} {kind} frames of {self.shape[1]}x{self.shape[2]})"

    def _read_frames(self, frames):
        if frames.step < 1:
            raise InputError(f"{self.path}: a video is read forwards: slice steps must be positive, "
                             f"got {frames.step}")
        return self._read(frames.start, max(frames.start, frames.stop), frames.step)

    # ------------------------------------------------------------------ state
    def close(self):
        """Close the file (a later read opens it again)."""
        with self._lock:
            self._frames = None
            self._next = None
            if self._container is not None:
                try:
                    self._container.close()
                except Exception:  # pragma: no cover
                    pass
            self._container = None
            self._stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_lock", "_container", "_stream", "_frames", "_reformatter", "_av"):
            state.pop(k, None)
        state["_next"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._av = _import_av()
        self._lock = threading.RLock()
        self._container = self._stream = self._frames = self._reformatter = None

    # ------------------------------------------------------------------ decoding
    def _restart(self):
        """Open the file afresh: the next frame decoded is frame 0."""
        self.close()
        self._container, self._stream = self._open_container()
        self._frames = self._container.decode(self._stream)
        self._next = 0
        self.reopens += 1

    def _seek(self, key_index):
        """Seek to the keyframe that is frame `key_index`; the next frame's index is then read from its timestamp."""
        if self._container is None:
            self._container, self._stream = self._open_container()
        try:
            self._container.seek(int(self._pts[key_index]), stream=self._stream, backward=True)
        except Exception:  # a file that cannot seek: decode from the start
            self._restart()
            return
        self._frames = self._container.decode(self._stream)
        self._next = None
        self._seek_key = key_index
        self.seeks += 1

    def _key_before(self, k):
        """The last keyframe at or before frame k (-1: none)."""
        i = int(np.searchsorted(self._keys, k, side="right")) - 1
        return int(self._keys[i]) if i >= 0 else -1

    def _position(self, a):
        """Make frame a the next frame or one the decoder reaches by decoding forward."""
        nxt = self._next if self._frames is not None else None
        if self._pts is None:
            if nxt is None or nxt > a:
                self._restart()
            return
        key = self._key_before(a)
        if nxt is not None and nxt <= a and key <= nxt:
            return  # decoding forward from here is the shortest way
        if key <= 0:
            self._restart()
        else:
            self._seek(key)

    def _pts_index(self, frame):
        """The frame's index from its timestamp (None: no usable timestamp)."""
        if self._pts is not None and frame.pts is not None:
            i = int(np.searchsorted(self._pts, frame.pts))
            if i < len(self._pts) and self._pts[i] == frame.pts:
                return i
        return None

    def _distrust_timestamps(self):
        """Timestamps that disagree with the count of decoded frames (AVI with B-frames, broken
        files): from now on frames are only counted, and reads that go back start over."""
        self._pts = None
        self._keys = np.zeros(0, dtype=np.int64)
        self.timestamps = False

    def _convert(self, frame, k):
        if frame.width != self.frame_shape[1] or frame.height != self.frame_shape[0]:
            raise InputError(f"{self.path}: frame {k} is {frame.height}x{frame.width} but the video is "
                             f"{self.frame_shape[0]}x{self.frame_shape[1]}; frames of changing size are not supported")
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        if self.grey:
            return rgb @ LUMA
        return rgb

    def _read(self, a, b, step):
        n = len(range(a, b, step))
        out = np.empty((n,) + self.shape[1:], dtype=self.dtype)
        with self._lock:
            self.reads += 1
            self.max_frames_held = max(self.max_frames_held, n)
            if n == 0:
                return out
            want = a  # the next frame wanted
            last = (n - 1) * step + a
            self._position(a)
            just_moved = self._next is None  # after a seek, until the first frame says where we are
            retries = 0
            while want <= last:
                try:
                    frame = next(self._frames, None)
                except Exception as exc:
                    self._frames = None
                    raise InputError(f"{self.path}: could not decode frame {want} ({one_line(exc)})") from None
                if frame is None:
                    self._frames = None
                    got = self._next if self._next is not None else "?"
                    raise InputError(f"{self.path}: the video ends at frame {got} but its index lists "
                                     f"{self.n_frames} frames; frame {want} could not be decoded")
                self.frames_decoded += 1
                kp = self._pts_index(frame)
                if just_moved:  # after a seek only the timestamp says which frame this is
                    if kp is None:
                        self._restart()
                        just_moved = False
                        continue
                    if kp > want:
                        # the seek landed after the frame wanted: go one keyframe further back
                        retries += 1
                        key = self._key_before(min(kp, self._seek_key) - 1)
                        if key <= 0 or retries > 3:
                            self._restart()
                            just_moved = False
                        else:
                            self._seek(key)
                        continue
                    k = kp
                    just_moved = False
                else:  # decoding on: count, and check the timestamps agree
                    k = self._next
                    if kp is not None and kp != k:
                        self._distrust_timestamps()
                self._next = k + 1
                if k < want:
                    continue
                if (k - a) % step == 0:
                    out[(k - a) // step] = self._convert(frame, k)
                want = k + 1
        return out

    # ------------------------------------------------------------------ on-disk cache
    caches_written = 0  # class-wide count of caches this process has written (for tests)

    @staticmethod
    def cache_path(path, cache_dir, grey=False):
        """Where `cached` keeps the decoded frames of `path`: named from the video's absolute
        path, size, modification time and the grey flag, so a changed video gets a new file."""
        path = os.path.abspath(os.fspath(path))
        st = os.stat(path)
        where = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        version = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        stem = os.path.splitext(os.path.basename(path))[0][:60]
        kind = "grey" if grey else "rgb"
        return os.path.join(os.fspath(cache_dir), f"{stem}-{where}-{version}-{kind}.npy")

    @classmethod
    def cached(cls, path, cache_dir, grey=False, *, chunk_bytes=_CACHE_CHUNK_BYTES):
        """The video's frames as a read-only memory map of an uncompressed ``.npy`` file in `cache_dir`.

        The first call decodes the video once, in chunks of about `chunk_bytes`
        (so memory stays bounded), into a temporary file renamed at the end: an
        interrupted run leaves no half cache. Later calls, while the video is
        unchanged (same size and modification time), return the map at once;
        a changed video is decoded again, and the cache of its older version removed.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise InputError(f"{path}: no such video file")
        check_regular_file(path)
        cache_dir = os.fspath(cache_dir)
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the cache folder {cache_dir}: {exc.strerror or exc}") from None
        if not os.path.isdir(cache_dir):
            raise InputError(f"the cache folder {cache_dir} exists and is not a folder")
        final = cls.cache_path(path, cache_dir, grey)
        if os.path.isfile(final):
            try:
                return np.load(final, mmap_mode="r")
            except (ValueError, OSError, EOFError):  # damaged: write it again
                from .outputs import remove_quietly

                remove_quietly(final)
        stack = cls(path, grey=grey)
        try:
            cls._write_cache(stack, final, chunk_bytes)
        finally:
            stack.close()
        _remove_stale(final)
        try:
            return np.load(final, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{final}: could not read the video cache back ({one_line(exc)})") from None

    @classmethod
    def _write_cache(cls, stack, final, chunk_bytes):
        from numpy.lib import format as npformat

        K = stack.n_frames
        per_frame = max(1, stack.nbytes // K)
        n = int(max(1, min(K, chunk_bytes // per_frame)))
        from .outputs import atomic_open

        try:
            with atomic_open(final, "wb") as fh:
                header = {"descr": npformat.dtype_to_descr(stack.dtype), "fortran_order": False,
                          "shape": tuple(stack.shape)}
                npformat.write_array_header_2_0(fh, header)
                for a in range(0, K, n):
                    block = np.ascontiguousarray(stack[a:min(K, a + n)])
                    fh.write(memoryview(block).cast("B"))
        except OSError as exc:
            raise InputError(f"cannot write the video cache {final}: {exc.strerror or exc}") from None
        cls.caches_written += 1


def _declared_frames(container, stream, counted, rate):
    """(frames, how the file says so) from the container's own frame count, else its duration times
    the frame rate; None when it says neither. Checked against the packets indexed, so a truncated
    file is noticed."""
    if counted > 0:
        return counted, "in its stream header"
    try:
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1e6  # av.time_base: microseconds
        else:
            return None
        fps = float(rate) if rate else 0.0
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (seconds > 0 and fps > 0) or not np.isfinite(seconds * fps):
        return None
    n = int(round(seconds * fps))
    return n, f"a duration of {seconds:.3g} s at {fps:.4g} frames/s"


def _remove_stale(final):
    """Remove the caches of older versions of the same video (same path and grey flag), and
    temporary files left by killed runs."""
    from .outputs import remove_quietly, remove_stale_temporaries

    folder, name = os.path.split(final)
    remove_stale_temporaries(folder)
    stem_where, _, kind = name.rsplit("-", 2)
    for other in os.listdir(folder):
        full = os.path.join(folder, other)
        if other == name:
            continue
        if other.startswith(stem_where + "-") and other.endswith("-" + kind) and other.count("-") == name.count("-"):
            remove_quietly(full)
        elif other.startswith("." + stem_where + "-") and other.endswith(".tmp"):
            pid = other.rsplit(".", 2)[-2]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                remove_quietly(full)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# ----------------------------------------------------------------------------- synthetic videos

#: frame rates a synthetic video may have (frames per second)
_FPS_RANGE = (1e-3, 1e4)


def _check_fps(fps):
    """The frame rate as a Fraction, or a ValueError for one that is not a finite number in `_FPS_RANGE`."""
    import numbers
    from fractions import Fraction

    lo, hi = _FPS_RANGE
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not lo <= float(fps) <= hi:
        raise ValueError(f"fps must be a number from {lo:g} to {hi:g} frames per second, got {fps!r}")
    return Fraction(float(fps)).limit_denominator(100000)

def write_synthetic_video(path, n_images=1000, image_shape=(100, 120), face_shape=(40, 32), *, n_faces=1,
                          face=None, background="camera", colour=False, noise=1.0, prior="uniform",
                          random_state=None, fps=25, crf=10, block_bytes=128 * 2**20, progress=None):
    """Write a synthetic video like `emface.datasets.make_faces`'s stacks, block by block.

    The faces, background, noise level and prior are `make_faces`'s; every
    frame's face and position are drawn first, for the whole video, from one
    random generator, and the frames are then made, noised (from the same
    generator), rounded to 0..255 and encoded a block at a time, so memory
    stays bounded whatever `n_images`. Grey frames are written as RGB with
    three equal channels. Encoding: H.264 (libx264, yuv420p, or yuv444p when a
    side is odd) at constant quality `crf` (0 is lossless in Y'CbCr; 10 is
    near lossless), preset veryfast, tuned for fast decoding. The file is
    written under a temporary name and renamed at the end.

    Parameters
    ----------
    path : str
        The video (.mp4, .mkv, .mov, .m4v or .avi).
    n_images, image_shape, face_shape, n_faces, face, background, colour, noise, prior, random_state
        As for `make_faces`.
    fps : float
    crf : int
    block_bytes : int
        About how much memory a block of frames may take (float64 before rounding).
    progress : callable, optional
        Called with the number of frames written after each block.

    Returns
    -------
    truth : emface.datasets.FacesTruth
    """
    from .datasets import FacesTruth, draw_assignments, make_faces, render
    from .outputs import atomic_path

    rate = _check_fps(fps)
    av = _import_av("writing")
    path = os.fspath(path)
    K = int(n_images)
    rng = np.random.default_rng(random_state)
    _, t = make_faces(1, image_shape, face_shape, n_faces=n_faces, face=face, background=background,
                      colour=colour, noise=noise, prior=prior, random_state=rng)
    F, B, s = t.faces, t.background, float(t.noise_std)
    C = len(F)
    H, W = (int(v) for v in image_shape)
    h, w = (int(v) for v in face_shape)
    P, Q = H - h + 1, W - w + 1
    joint = np.asarray(t.prior, dtype=np.float64).reshape(C, P, Q)
    labels, pos = draw_assignments(joint, K, rng)

    ext = os.path.splitext(path)[1]
    frame_bytes = B.size * 8
    n_block = int(max(1, min(500, block_bytes // frame_bytes)))
    try:
        with atomic_path(path, suffix=ext) as tmp:
            container = av.open(tmp, "w")
            try:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = W, H
                stream.pix_fmt = "yuv420p" if H % 2 == 0 and W % 2 == 0 else "yuv444p"
                stream.options = dict(X264_OPTIONS, crf=str(int(crf)))
                for a in range(0, K, n_block):
                    b = min(K, a + n_block)
                    X = render(B, F, labels[a:b], pos[a:b])
                    if s > 0:
                        X += rng.normal(0.0, s, size=X.shape)
                    u8 = np.clip(np.round(X), 0, 255).astype(np.uint8)
                    del X
                    for k in range(a, b):
                        img = u8[k - a]
                        rgb = img if colour else np.repeat(img[..., None], 3, axis=2)
                        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                        vf.pts = k
                        for packet in stream.encode(vf):
                            container.mux(packet)
                    if progress is not None:
                        progress(b - a)
                for packet in stream.encode():
                    container.mux(packet)
            finally:
                container.close()
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # PyAV's errors, OSError: no half-written video is left (nor on Ctrl-C)
        raise InputError(f"cannot write the video {path}: {one_line(exc)}") from None
    return FacesTruth(F, B, s, t.prior, pos, labels)
