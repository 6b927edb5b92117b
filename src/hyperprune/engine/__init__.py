"""The driver: the layer loop and everything around it (capture, block stores, checkpoints,
the dense target, reconstruction, output assembly). It sits above ``methods`` and hands each
method what it needs; the numerics methods use live in ``hyperprune.numerics``."""

from hyperprune.engine.layerwise import (
    BlockJob,
    BlockOutcome,
    BlockRecord,
    LayerRecord,
    LayerwiseResult,
    prune_one_block,
    run_layerwise,
)
from hyperprune.engine.memory import PeakMemory

__all__ = [
    "BlockJob",
    "BlockOutcome",
    "BlockRecord",
    "LayerRecord",
    "LayerwiseResult",
    "PeakMemory",
    "prune_one_block",
    "run_layerwise",
]
