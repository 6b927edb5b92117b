"""The identity method: prunes nothing. A reference point in comparisons, and the
engine's pass-through check (it must reproduce the unpruned model exactly)."""

from __future__ import annotations

import torch

from hyperprune.methods.base import PruningMethod, register_method


@register_method("dense")
class Dense(PruningMethod):
    def prune_linear(self, linear, stats, target, where) -> torch.Tensor:
        return torch.ones_like(linear.weight, dtype=torch.bool)
