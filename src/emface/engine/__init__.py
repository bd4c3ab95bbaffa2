"""The statistics engine: per-chunk E-step kernels, sufficient statistics and the M-step.

- `kernels`: the formulas, written once against the array API (numpy and torch);
- `_numba_kernels`: the fused CPU sweep, the same formulas in one pass per image;
- `torch_backend`: moves chunks and θ to a torch device;
- `costs`: which correlation route, how many images per chunk;
- `chunk`, `plan`: a block of images, and what an iteration derives from θ;
- `stats`: one chunk's E-step and sums; `mstep`: the closed forms and objectives.

Nothing here imports anything above it (no estimator, no I/O, no CLI, no plots).
"""

from .chunk import Chunk, ChunkCache, block_moments
from .mstep import MStepInfo, expected_sse, free_energy, misfit_z, objective, params_from
from .plan import Plan, make_plan, resolve_backend
from .stats import chunk_stats, stats_from_positions, stats_from_q

__all__ = [
    "Chunk",
    "ChunkCache",
    "block_moments",
    "MStepInfo",
    "Plan",
    "chunk_stats",
    "expected_sse",
    "free_energy",
    "make_plan",
    "misfit_z",
    "objective",
    "params_from",
    "resolve_backend",
    "stats_from_positions",
    "stats_from_q",
]
