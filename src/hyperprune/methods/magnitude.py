"""Magnitude pruning: keep the largest |W|."""

from __future__ import annotations

import torch

from hyperprune.methods.base import PruningMethod, register_method
from hyperprune.methods.scoring import mask_from_scores


@register_method("magnitude")
class Magnitude(PruningMethod):
    def prune_linear(self, linear, stats, target, where) -> torch.Tensor:
        # Unstructured magnitude uses one threshold per matrix, as in the Wanda repo's baseline.
        return mask_from_scores(linear.weight.detach().abs().float(), target, per_row=False)
