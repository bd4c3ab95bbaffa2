"""Pictures: one PNG, JPEG or TIFF picture, and a folder of them as a lazy stack (`FrameFolder`)."""

from __future__ import annotations

import os
import warnings

import numpy as np

from .._arraylike import LazyStack
from .._paths import check_regular_file
from ..errors import InputError
from ._common import to_grey

__all__ = ["read_image", "load_folder", "FrameFolder", "IMAGE_EXTS"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def _natural_sorted(names):
    """frame2 before frame10: digits compare as numbers."""
    import re

    return sorted(names, key=lambda s: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)])


def read_image(path, *, grey=False):
    """Read one picture: (H, W) grey, or (H, W, Ch) colour (RGBA loses its alpha, with a note).

    Parameters
    ----------
    path : str or path-like
    grey : bool
        Convert colour to grey.
    """
    check_regular_file(path)
    img, alpha, _ = _read_picture(path, grey)
    if alpha:
        warnings.warn(f"{path}: {alpha}: the alpha channel is dropped", UserWarning, stacklevel=2)
    return img


def _read_picture(path, grey):
    """(picture, what had an alpha channel or None, the dtype it was stored in)."""
    import imageio.v3 as iio

    try:
        img = iio.imread(path)
    except Exception as exc:
        raise InputError(f"{path}: not an image this tool can read; expected a PNG, JPEG or TIFF picture "
                         f"({type(exc).__name__})") from None
    img = np.asarray(img)
    stored = img.dtype
    if img.ndim == 3 and img.shape[0] > 4 and img.shape[-1] not in (1, 2, 3, 4):
        img = img[0]  # a multi-page file read as a stack: take the first page
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    alpha = None
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        alpha = "RGBA frames" if img.shape[-1] == 4 else "grey frames with alpha"
        img = img[..., :3] if img.shape[-1] == 4 else img[..., 0]
    if grey:
        img = to_grey(img)
    if img.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2-D picture, got an array of shape {img.shape}")
    return img, alpha, stored


def load_folder(folder, grey=False):
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")]
    if not names:
        raise InputError(f"{folder}: no PNG, JPEG or TIFF frames in this folder")
    X = FrameFolder(folder, _natural_sorted(names), grey=grey)
    if X.alpha:
        warnings.warn(f"{folder}: {X.alpha}: the alpha channel is dropped", UserWarning, stacklevel=3)
    return X, X.names


def _frame_header(path):
    """(H, W, pixel format) from a picture's header, without decoding it; None where Pillow cannot tell."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size[1], im.size[0], im.mode
    except Exception:
        return None


class FrameFolder(LazyStack):
    """The frames of a folder as a lazy stack: (K, H, W) grey or (K, H, W, Ch) colour.

    Frames are decoded when a slice of them is read, so a pass over a folder
    of 100,000 frames holds one chunk of them at a time. Opening the folder
    reads every frame's header only (size and pixel format) and decodes one
    frame of each pixel format, so that frames of different sizes or channel
    counts are reported before any work starts.

    Parameters
    ----------
    folder : str
    names : list of str
        The frame files, in the stack's order.
    grey : bool
        Convert colour frames to grey as they are read.

    Attributes
    ----------
    shape, dtype, ndim, size, nbytes : as an array's
    names : list of str
    alpha : str or None
        What had an alpha channel (dropped as the frames are read), if anything did.
    """

    _what = "a folder"

    def __init__(self, folder, names, grey=False):
        self.folder, self.names, self.grey = folder, list(names), bool(grey)
        paths = [os.path.join(folder, n) for n in self.names]
        formats = {}  # pixel format -> (a decoded frame's channel axis, () or (Ch,), its dtype, its stored dtype)
        first = None
        self.alpha = None
        for n, path in zip(self.names, paths):
            check_regular_file(path)  # a FIFO among the frames would block the header read for ever
            head = _frame_header(path)
            key = head[2] if head is not None else ("file", n)
            if key not in formats:
                img, alpha, stored = _read_picture(path, self.grey)
                formats[key] = (img.shape[2:], img.dtype, stored)
                self.alpha = self.alpha or alpha
                if head is None:
                    head = (img.shape[0], img.shape[1], key)
            this = (head[0], head[1]) + tuple(formats[key][0])
            if first is None:
                first = (n, this, formats[key][2])
            elif this != first[1]:
                what = "size" if this[:2] != first[1][:2] else "channel count"
                raise InputError(
                    f"{folder}: frames differ in {what}: {first[0]} is {_describe_shape(first[1])} but {n} is "
                    f"{_describe_shape(this)}; all frames must have the same size and channels (or use --grey)"
                )
            elif formats[key][2] != first[2]:
                raise _depths_differ(folder, first[0], first[2], n, formats[key][2])
        self.frame_shape = first[1]
        self.frame_dtype = first[2]  # as stored: every frame's, checked again as each is decoded
        dtype = np.result_type(*(f[1] for f in formats.values()))
        self.dtype = np.dtype(np.float64) if dtype.kind == "f" and dtype != np.float32 else np.dtype(dtype)
        self.shape = (len(self.names),) + tuple(int(v) for v in self.frame_shape)

    def __repr__(self):
        return f"FrameFolder({self.folder!r}, {len(self)} frames of {_describe_shape(self.frame_shape)})"

    def _read(self, index):
        out = np.empty((len(index),) + self.shape[1:], dtype=self.dtype)
        for t, k in enumerate(index):
            img, _, stored = _read_picture(os.path.join(self.folder, self.names[k]), self.grey)
            if img.shape != self.shape[1:]:
                raise InputError(f"{self.folder}: {self.names[k]} is {_describe_shape(img.shape)}, the other "
                                 f"frames {_describe_shape(self.shape[1:])}")
            if stored != self.frame_dtype:  # a header that did not tell the truth
                raise _depths_differ(self.folder, self.names[0], self.frame_dtype, self.names[k], stored)
            out[t] = img
        return out

    def _read_frames(self, frames):
        return self._read(frames)

    def _index(self, key):
        # an array of indices or a mask, as numpy reads it
        return [int(k) for k in np.atleast_1d(np.arange(len(self))[key])]


def _depth(dtype):
    dtype = np.dtype(dtype)
    return "1-bit" if dtype == np.bool_ else f"{8 * dtype.itemsize}-bit{' float' if dtype.kind == 'f' else ''}"


def _depths_differ(folder, first, first_dtype, name, dtype):
    return InputError(f"{folder}: frames differ in bit depth: {first} is {_depth(first_dtype)} ({np.dtype(first_dtype)}) "
                      f"but {name} is {_depth(dtype)} ({np.dtype(dtype)}); all frames must have the same bit depth")


def _describe_shape(shape):
    ch = "grey" if len(shape) == 2 else f"{shape[2]} channels"
    return f"{shape[0]}x{shape[1]}, {ch}"
