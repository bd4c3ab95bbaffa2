"""What the lazily read stacks (a video, a folder of frames) share with an array."""

import numpy as np

__all__ = ["LazyStack"]


class LazyStack:
    """The array attributes derived from ``shape`` and ``dtype``, indexing, iteration, and reading it whole.

    Subclasses set ``shape`` and ``dtype`` and implement ``_read_frames(frames)``,
    the images numbered by a `range` (or by a list, from `_index`) as one
    array; `_index` turns any other key into such a list, or refuses it.
    ``_what`` names the stack in messages.
    """

    _what = "a stack"

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        K = len(self)
        if isinstance(key, (int, np.integer)):
            k = int(key)
            if not -K <= k < K:
                raise IndexError(f"frame {k} is out of range for {self._what} of {K} frames")
            out = self._read_frames(range(k % K, k % K + 1))[0]
            return out[rest] if rest else out
        if isinstance(key, slice):
            frames = range(*key.indices(K))
        elif key is Ellipsis:
            frames = range(K)
        else:
            frames = self._index(key)
        out = self._read_frames(frames)
        return out[(slice(None),) + rest] if rest else out

    def _index(self, key):
        raise TypeError(f"{type(self).__name__} is indexed by an int or a slice of frames, "
                        f"got {type(key).__name__}")

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self):
        return self.size * np.dtype(self.dtype).itemsize

    def __len__(self):
        return int(self.shape[0])

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]

    def __array__(self, dtype=None, copy=None):
        X = self[:]
        return X if dtype is None else X.astype(dtype, copy=False)
