"""hyperprune: prune LLMs to hardware-friendly n:m semi-structured sparsity."""

from hyperprune.api import apply_masks, compare, distill, evaluate, export_compact, load_pretrained, prune
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
    "apply_masks",
    "compare",
    "distill",
    "evaluate",
    "export_compact",
    "load_pretrained",
    "evaluate_perplexity",
    "prune",
    "register_method",
]
