"""The index of a video stream: K, the frames' timestamps and the keyframes, from demuxing alone.

Demuxing reads the file but decodes nothing, so indexing a long video is fast;
frames are then identified by their presentation timestamps, and frame k is
the same picture whatever the order of the reads.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError, one_line

__all__ = ["VideoIndex", "index_video"]


class VideoIndex:
    """K, the frame size and, where usable, the sorted timestamps of the frames and their keyframes.

    Attributes
    ----------
    n_frames : int
    frame_shape : (int, int)
    pts : int ndarray (K,) or None
        The frames' presentation timestamps in display order; None when the
        file has no usable ones (frames are then counted from the start).
    keys : int ndarray
        The frame numbers of the keyframes (empty without timestamps).
    stream_frames : int
        The container's own frame count (a hint only; 0 when it says none).
    time_base, frame_rate : fractions, as PyAV gives them
    """

    def __init__(self, n_frames, frame_shape, pts, keys, *, stream_frames=0, time_base=None, frame_rate=None):
        self.n_frames = int(n_frames)
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.pts = pts
        self.keys = keys if pts is not None else np.zeros(0, dtype=np.int64)
        self.stream_frames = int(stream_frames)
        self.time_base = time_base
        self.frame_rate = frame_rate

    @property
    def timestamps(self):
        """Whether frames are found by their timestamps (else only counted)."""
        return self.pts is not None

    def key_before(self, k):
        """The last keyframe at or before frame k (-1: none)."""
        i = int(np.searchsorted(self.keys, k, side="right")) - 1
        return int(self.keys[i]) if i >= 0 else -1

    def frame_of(self, pts):
        """The frame number of a decoded frame's timestamp (None: no usable timestamp)."""
        if self.pts is not None and pts is not None:
            i = int(np.searchsorted(self.pts, pts))
            if i < len(self.pts) and self.pts[i] == pts:
                return i
        return None

    def distrust(self):
        """Timestamps that disagree with the count of decoded frames (AVI with B-frames, broken
        files): from now on frames are only counted."""
        self.pts = None
        self.keys = np.zeros(0, dtype=np.int64)


def index_video(path, container, stream):
    """The `VideoIndex` of an open container's video stream, with a warning when the file holds
    fewer frames than it declares (a truncated file: the frames it holds are used)."""
    pts, keys, missing = [], [], False
    try:
        stream_frames = int(stream.frames or 0)
        # AVI stores no presentation timestamps: FFmpeg makes them up in decoding order
        avi = "avi" in str(getattr(container.format, "name", "")).split(",")
        frame_rate = stream.average_rate or stream.guessed_rate
        declared = _declared_frames(container, stream, stream_frames, frame_rate)
        H, W = int(stream.codec_context.height), int(stream.codec_context.width)
        for packet in container.demux(stream):
            # skip flush packets, and frames an edit list drops
            if packet.size == 0 or getattr(packet, "is_discard", False):
                continue
            missing = missing or packet.pts is None
            pts.append(0 if packet.pts is None else int(packet.pts))
            keys.append(bool(packet.is_keyframe))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: could not read the video ({one_line(exc)})") from None
    K = len(pts)
    if K == 0:
        raise InputError(f"{path}: the video has no frames")
    if H < 1 or W < 1:
        raise InputError(f"{path}: the video stream does not say its frame size")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    sorted_pts = np.asarray(pts, dtype=np.int64)[order]
    usable = not (missing or avi or np.any(np.diff(sorted_pts) == 0))
    key_frames = np.flatnonzero(np.asarray(keys)[order]).astype(np.int64)
    if declared is not None and K + max(2, declared[0] // 100) < declared[0]:
        warnings.warn(f"{path}: only {K} frames could be read but the file declares {declared[0]} "
                      f"({declared[1]}): it may be truncated; the {K} frames it holds are used",
                      UserWarning, stacklevel=3)
    return VideoIndex(K, (H, W), sorted_pts if usable else None, key_frames, stream_frames=stream_frames,
                      time_base=stream.time_base, frame_rate=frame_rate)


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
