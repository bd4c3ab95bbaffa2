"""Video files as lazy image stacks (through PyAV, the ``video`` extra).

- `VideoStack` (``stack.py``): ``stack[a:b]`` decodes frames a..b-1 only;
- ``_index.py``: the stream's packets indexed once, by demuxing (K, timestamps, keyframes);
- ``_decode.py``: the seek-and-decode state machine and the frames' conversion;
- ``_cache.py``: `VideoStack.cached`, the frames decoded once into an on-disk ``.npy``.

Synthetic videos are written by `emface.datasets.write_synthetic_video`
(re-exported here). `SUFFIXES` is the one list of the video suffixes emface
reads, with those it also writes.
"""

from ..datasets import write_synthetic_video
from ._decode import LUMA
from .stack import VideoStack

__all__ = ["VideoStack", "write_synthetic_video", "LUMA", "SUFFIXES", "WRITABLE_SUFFIXES"]

#: every video suffix emface reads -> whether ``emface generate --video`` also writes it (H.264)
SUFFIXES = {".mp4": True, ".mkv": True, ".mov": True, ".m4v": True, ".avi": True,
            ".webm": False, ".mpg": False, ".mpeg": False, ".wmv": False}
#: the suffixes of the videos emface writes
WRITABLE_SUFFIXES = tuple(s for s, writes in SUFFIXES.items() if writes)

