"""The statistics engine: per-chunk E-step kernels, sufficient statistics and the M-step.

- `_formulas`: the model's small formulas, once, for every backend (loss, normaliser, decode, ...);
- `poses`: the pose axis (`Translations`): its grid, decode, neighbours, window sums, coverage;
- `kernels`: the chunk kernels against the array API (numpy and torch);
- `_numba_kernels`, `_numba_sums`, `_numba_base`: the fused CPU sweep, the same kernels in one pass per image;
- `torch_backend`: moves chunks and θ to a torch device;
- `costs`: which correlation route, how many images per chunk;
- `chunk`, `plan`: a block of images, and what an iteration derives from θ;
- `estep`: one chunk's E-step and sums; `mstep`: the closed forms and objectives.

Nothing here imports anything above it (no estimator, no I/O, no CLI, no plots).
"""

from .chunk import Chunk, ChunkCache, block_moments
from .mstep import MStepInfo, expected_sse, free_energy, misfit_z, objective, params_from
from .estep import chunk_stats, stats_from_positions, stats_from_q
from .plan import Plan, make_plan, resolve_backend
from .poses import Translations, pose_of

__all__ = [
    "Chunk",
    "ChunkCache",
    "block_moments",
    "MStepInfo",
    "Plan",
    "Translations",
    "chunk_stats",
    "expected_sse",
    "free_energy",
    "make_plan",
    "misfit_z",
    "objective",
    "params_from",
    "pose_of",
    "resolve_backend",
    "stats_from_positions",
    "stats_from_q",
]
