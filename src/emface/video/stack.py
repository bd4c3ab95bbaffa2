"""`VideoStack`: a video file as a lazy, read-only image stack.

``stack[a:b]`` decodes frames a..b-1 only, so a stack of any length is fitted
in bounded memory. The packets are indexed once when the file is opened
(`emface.video._index`), the frames decoded by a seek-and-decode state
machine (`emface.video._decode`), and `VideoStack.cached` keeps the decoded
frames in an on-disk ``.npy`` (`emface.video._cache`).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .._arraylike import LazyStack
from .._paths import check_regular_file
from ..errors import InputError
from . import _cache
from ._decode import Decoder, import_av, open_container
from ._index import index_video

__all__ = ["VideoStack"]


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
    timestamps : bool
        Whether frames are found by their timestamps (else counted from the start).
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
    caches_written = 0  # class-wide count of caches this process has written (for tests)

    def __init__(self, path, grey=False, *, threads=True):
        av = import_av()
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise InputError(f"{self.path}: no such video file")
        check_regular_file(self.path)  # a FIFO would block the demuxer for ever
        self.grey = bool(grey)
        self.threads = bool(threads)
        container, stream = open_container(av, self.path, self.threads)
        try:
            index = index_video(self.path, container, stream)
        finally:
            container.close()
        self.n_frames = index.n_frames
        self.frame_shape = index.frame_shape
        self.time_base, self.frame_rate, self.stream_frames = index.time_base, index.frame_rate, index.stream_frames
        self.shape = (self.n_frames,) + self.frame_shape + (() if self.grey else (3,))
        self.dtype = np.dtype(np.float32) if self.grey else np.dtype(np.uint8)
        self.max_frames_held = 0
        self.reads = 0
        self._lock = threading.RLock()
        self._decoder = Decoder(av, self.path, index, self.grey, self.threads)

    def __repr__(self):
        kind = "grey" if self.grey else "RGB"
        return f"VideoStack({self.path!r}, {self.n_frames} {kind} frames of {self.shape[1]}x{self.shape[2]})"

    # the decoder's counters, read as the stack's
    timestamps = property(lambda self: self._decoder.index.timestamps)
    frames_decoded = property(lambda self: self._decoder.frames_decoded)
    seeks = property(lambda self: self._decoder.seeks)
    reopens = property(lambda self: self._decoder.reopens)

    def _read_frames(self, frames):
        if frames.step < 1:
            raise InputError(f"{self.path}: a video is read forwards: slice steps must be positive, "
                             f"got {frames.step}")
        return self._read(frames.start, max(frames.start, frames.stop), frames.step)

    def _read(self, a, b, step):
        n = len(range(a, b, step))
        out = np.empty((n,) + self.shape[1:], dtype=self.dtype)
        with self._lock:
            self.reads += 1
            self.max_frames_held = max(self.max_frames_held, n)
            if n:
                self._decoder.read_into(out, a, step)
        return out

    # ------------------------------------------------------------------ state
    def close(self):
        """Close the file (a later read opens it again)."""
        with self._lock:
            self._decoder.close()

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
        state.pop("_lock", None)
        # the copy carries the index and counters, not the open file
        state["_decoder"] = dict(vars(self._decoder), av=None, _container=None, _stream=None, _frames=None,
                                 _next=None, _reformatter=None)
        return state

    def __setstate__(self, state):
        decoder = state.pop("_decoder")
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._decoder = Decoder.__new__(Decoder)
        self._decoder.__dict__.update(decoder, av=import_av())

    # ------------------------------------------------------------------ on-disk cache
    @staticmethod
    def cache_path(path, cache_dir, grey=False):
        """Where `cached` keeps the decoded frames of `path` (see `emface.video._cache.cache_path`)."""
        return _cache.cache_path(path, cache_dir, grey)

    @classmethod
    def cached(cls, path, cache_dir, grey=False, *, chunk_bytes=_cache.CHUNK_BYTES):
        """The video's frames as a read-only memory map of an uncompressed ``.npy`` file in `cache_dir`.

        The first call decodes the video once, in chunks of about `chunk_bytes`
        (so memory stays bounded), through the one atomic writer
        (`emface.outputs`): an interrupted run leaves no half cache. Later
        calls, while the video is unchanged (same size and modification
        time), return the map at once; a changed video is decoded again, and
        the cache of its older version removed.
        """
        return _cache.cached(cls, path, cache_dir, grey, chunk_bytes)
