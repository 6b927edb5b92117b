from hyperprune.models.architectures import (
    ARCHITECTURES,
    COMPONENTS,
    BlockLayout,
    block_linears,
    context_length,
    decoder_blocks,
    discover_layout,
    layout_for,
    layout_of,
    prunable_weight_names,
)
from hyperprune.models.loading import BUILTIN_MODELS, LoadedModel, load_model, resolve_model

__all__ = [
    "ARCHITECTURES",
    "BUILTIN_MODELS",
    "COMPONENTS",
    "BlockLayout",
    "LoadedModel",
    "block_linears",
    "context_length",
    "decoder_blocks",
    "discover_layout",
    "layout_for",
    "layout_of",
    "load_model",
    "prunable_weight_names",
    "resolve_model",
]
