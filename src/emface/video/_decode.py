"""Decoding a video's frames in order: a seek-and-decode state machine over one open container.

Reads that follow each other (a:b, then b:c, ...), as the engine's passes do,
continue decoding without seeking; a read elsewhere seeks to the keyframe
before it and decodes forward. Without usable timestamps, frames are counted
from the start and a read that goes back starts over from the file's beginning.
"""

from __future__ import annotations

import numpy as np

from .._layout import LUMA as _LUMA64
from ..errors import InputError, one_line

__all__ = ["Decoder", "import_av", "open_container", "LUMA"]

LUMA = _LUMA64.astype(np.float32)  # ITU-R 601, in single precision for frames
_EXTRA = "pip install 'emface[video]'"


def import_av(what="reading"):
    """PyAV, or a one-line `InputError` that names the extra to install."""
    try:
        import av
    except ImportError:
        raise InputError(f"{what} video needs the video extra: {_EXTRA}") from None
    return av


def open_container(av, path, threads=True):
    """(container, its first video stream), opened for reading, or a one-line `InputError`."""
    try:
        container = av.open(path, "r")
    except Exception as exc:  # PyAV raises its own error classes (FFmpegError, ...)
        raise InputError(f"{path}: could not open the video ({one_line(exc)})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: the file has no video stream")
    stream = container.streams.video[0]
    if threads:
        try:
            stream.thread_type = "AUTO"
        except Exception:  # pragma: no cover - older PyAV
            pass
    return container, stream


class Decoder:
    """Frames of one video, decoded forward from wherever the last read ended (or a keyframe).

    Parameters
    ----------
    av : module
        PyAV.
    path : str
    index : emface.video._index.VideoIndex
        Its timestamps are distrusted (dropped) when decoding shows them wrong.
    grey : bool
        Frames as float32 luma instead of uint8 RGB.
    threads : bool

    Attributes
    ----------
    frames_decoded, seeks, reopens : int
        Frames decoded, seeks to a keyframe, restarts from the file's beginning.
    """

    def __init__(self, av, path, index, grey=False, threads=True):
        self.av, self.path, self.index = av, path, index
        self.grey, self.threads = bool(grey), bool(threads)
        self.frames_decoded = self.seeks = self.reopens = 0
        self._container = self._stream = self._frames = self._next = self._reformatter = None
        self._seek_key = 0

    def close(self):
        """Close the file (a later read opens it again)."""
        self._frames = None
        self._next = None
        self._reformatter = None
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # pragma: no cover
                pass
        self._container = None
        self._stream = None

    # ------------------------------------------------------------------ moving
    def _restart(self):
        """Open the file afresh: the next frame decoded is frame 0."""
        self.close()
        self._container, self._stream = open_container(self.av, self.path, self.threads)
        self._frames = self._container.decode(self._stream)
        self._next = 0
        self.reopens += 1

    def _seek(self, key_index):
        """Seek to the keyframe that is frame `key_index`; the next frame's index is then read from its timestamp."""
        if self._container is None:
            self._container, self._stream = open_container(self.av, self.path, self.threads)
        try:
            self._container.seek(int(self.index.pts[key_index]), stream=self._stream, backward=True)
        except Exception:  # a file that cannot seek: decode from the start
            self._restart()
            return
        self._frames = self._container.decode(self._stream)
        self._next = None
        self._seek_key = key_index
        self.seeks += 1

    def _position(self, a):
        """Make frame a the next frame or one the decoder reaches by decoding forward."""
        nxt = self._next if self._frames is not None else None
        if not self.index.timestamps:
            if nxt is None or nxt > a:
                self._restart()
            return
        key = self.index.key_before(a)
        if nxt is not None and nxt <= a and key <= nxt:
            return  # decoding forward from here is the shortest way
        if key <= 0:
            self._restart()
        else:
            self._seek(key)

    def _after_seek(self, kp, want, retries):
        """After a seek, the first frame's number `kp` says where we are: (its number, or None to
        decode on after moving again)."""
        if kp is None:
            self._restart()
            return None
        if kp > want:  # the seek landed after the frame wanted: go one keyframe further back
            key = self.index.key_before(min(kp, self._seek_key) - 1)
            if key <= 0 or retries > 3:
                self._restart()
            else:
                self._seek(key)
            return None
        return kp

    def _next_frame(self, want):
        try:
            frame = next(self._frames, None)
        except Exception as exc:
            self._frames = None
            raise InputError(f"{self.path}: could not decode frame {want} ({one_line(exc)})") from None
        if frame is None:
            self._frames = None
            got = self._next if self._next is not None else "?"
            raise InputError(f"{self.path}: the video ends at frame {got} but its index lists "
                             f"{self.index.n_frames} frames; frame {want} could not be decoded")
        self.frames_decoded += 1
        return frame

    # ------------------------------------------------------------------ reading
    def read_into(self, out, a, step):
        """Decode frames a, a + step, ... into `out` (one per row of `out`)."""
        n = len(out)
        want, last = a, (n - 1) * step + a
        self._position(a)
        retries = 0
        while want <= last:
            moved = self._next is None  # after a seek, until the first frame says where we are
            frame = self._next_frame(want)
            kp = self.index.frame_of(frame.pts)
            if moved:
                k = self._after_seek(kp, want, retries + 1)
                if k is None:
                    retries += kp is not None
                    continue
            else:  # decoding on: count, and check the timestamps agree
                k = self._next
                if kp is not None and kp != k:
                    self.index.distrust()
            self._next = k + 1
            if k < want:
                continue
            if (k - a) % step == 0:
                out[(k - a) // step] = self._convert(frame, k)
            want = k + 1
        return out

    def _convert(self, frame, k):
        H, W = self.index.frame_shape
        if frame.width != W or frame.height != H:
            raise InputError(f"{self.path}: frame {k} is {frame.height}x{frame.width} but the video is "
                             f"{H}x{W}; frames of changing size are not supported")
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        return rgb @ LUMA if self.grey else rgb
