"""The statistics engine: per-chunk E-step kernels, sufficient statistics and the M-step.

Nothing here imports anything above it (no estimator, no I/O, no CLI, no plots).
"""

from .stats import (
    Chunk,
    ChunkCache,
    Plan,
    chunk_stats,
    make_plan,
    objective,
    params_from,
    resolve_backend,
    stats_from_positions,
    stats_from_q,
)

__all__ = [
    "Chunk",
    "ChunkCache",
    "Plan",
    "chunk_stats",
    "make_plan",
    "objective",
    "params_from",
    "resolve_backend",
    "stats_from_positions",
    "stats_from_q",
]
