"""hyperprune: prune LLMs to hardware-friendly n:m semi-structured sparsity.

The public names below are imported on first use, so that ``hyperprune --help`` and other light
commands do not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("hyperprune")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_PUBLIC = {
    "apply_masks": "hyperprune.api",
    "compare": "hyperprune.api",
    "distill": "hyperprune.api",
    "evaluate": "hyperprune.api",
    "evaluate_perplexity": "hyperprune.api",
    "export_compact": "hyperprune.api",
    "load_pretrained": "hyperprune.api",
    "prune": "hyperprune.api",
    "HessianOptions": "hyperprune.config",
    "NMPattern": "hyperprune.config",
    "PruneConfig": "hyperprune.config",
    "SparseGPTOptions": "hyperprune.config",
    "SparsityTarget": "hyperprune.config",
    "ZeroShotOptions": "hyperprune.config",
    "HyperpruneError": "hyperprune.errors",
    "METHODS": "hyperprune.methods",
    "PruningMethod": "hyperprune.methods",
    "register_method": "hyperprune.methods",
    "register_preset": "hyperprune.methods",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hyperprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
