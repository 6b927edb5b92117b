from hyperprune.engine.layerwise import BlockRecord, LayerRecord, LayerwiseResult, run_layerwise
from hyperprune.engine.memory import PeakMemory
from hyperprune.engine.statistics import InputStatistics, StatisticsKind

__all__ = [
    "BlockRecord",
    "InputStatistics",
    "LayerRecord",
    "LayerwiseResult",
    "PeakMemory",
    "StatisticsKind",
    "run_layerwise",
]
