"""Pruning methods. Importing this package registers every built-in method."""

from hyperprune.methods import dense, hyperprune, magnitude, maskllm, maskpro, pruner_zero, ria, sparsegpt, wanda  # noqa: F401  (registration)
from hyperprune.methods.base import METHODS, BlockContext, PruningMethod, get_method, register_method

__all__ = ["METHODS", "BlockContext", "PruningMethod", "get_method", "register_method"]
