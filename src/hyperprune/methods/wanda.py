"""Wanda (Sun et al., 2023): prune by |W| times the input activation norm."""

from __future__ import annotations

import torch

from hyperprune.numerics.statistics import StatisticsKind
from hyperprune.methods.base import PruningMethod, register_method
from hyperprune.methods.scoring import mask_from_scores, wanda_scores


@register_method("wanda")
class Wanda(PruningMethod):
    statistics = StatisticsKind.NORMS

    def prune_linear(self, linear, stats, target, where) -> torch.Tensor:
        # Unstructured Wanda compares weights within each output row (its paper, Sec. 3).
        return mask_from_scores(wanda_scores(linear.weight.detach(), stats.column_norms), target, per_row=True)
