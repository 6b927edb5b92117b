"""Pruning methods. Importing this package registers every built-in method."""

from hyperprune.methods import (  # noqa: F401  (registration)
    dense,
    hyperprune,
    magnitude,
    maskllm,
    maskpro,
    proxsparse,
    pruner_zero,
    ria,
    sparsegpt,
    wanda,
)
from hyperprune.methods.base import METHODS, BlockContext, PruningMethod, get_method, register_method

__all__ = ["METHODS", "BlockContext", "PruningMethod", "get_method", "register_method"]
