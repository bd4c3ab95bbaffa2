"""What the lazily read stacks (a video, a folder of frames) share with an array."""

import numpy as np

__all__ = ["LazyStack"]


class LazyStack:
    """The array attributes derived from ``shape`` and ``dtype``, iteration, and reading the whole stack.

    Subclasses set ``shape`` and ``dtype`` and implement ``__getitem__`` for an
    int and a slice of images.
    """

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
