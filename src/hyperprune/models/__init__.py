"""Models: architectures and their block layouts, loading (built-in, local, GGUF, hub), shard
reading, random checkpoints. Names are imported on first use, so that the CLI can list model
presets without importing torch."""

from __future__ import annotations

import importlib
from typing import Any

_ARCHITECTURES = ("ARCHITECTURES", "COMPONENTS", "BlockLayout", "block_linears", "context_length", "decoder_blocks",
                  "discover_layout", "layout_for", "layout_of", "prunable_weight_names")
_LOADING = ("BUILTIN_MODELS", "LoadedModel", "load_model", "resolve_model")

__all__ = sorted(_ARCHITECTURES + _LOADING)


def __getattr__(name: str) -> Any:
    if name in _ARCHITECTURES:
        module = "hyperprune.models.architectures"
    elif name in _LOADING:
        module = "hyperprune.models.loading"
    else:
        raise AttributeError(f"module 'hyperprune.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
