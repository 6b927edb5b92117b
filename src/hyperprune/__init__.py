"""hyperprune: prune LLMs to hardware-friendly n:m semi-structured sparsity."""

from hyperprune.api import compare, evaluate, prune
from hyperprune.config import NMPattern, PruneConfig, SparseGPTOptions, SparsityTarget, ZeroShotOptions
from hyperprune.errors import HyperpruneError
from hyperprune.eval import evaluate_perplexity
from hyperprune.methods import METHODS, PruningMethod, register_method

__all__ = [
    "METHODS",
    "HyperpruneError",
    "NMPattern",
    "PruneConfig",
    "PruningMethod",
    "SparseGPTOptions",
    "SparsityTarget",
    "ZeroShotOptions",
    "compare",
    "evaluate",
    "evaluate_perplexity",
    "prune",
    "register_method",
]
