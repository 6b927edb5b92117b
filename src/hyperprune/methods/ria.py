"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024): a one-shot score that
weighs each weight against its row and its column, times the input activation norm."""

from __future__ import annotations

import torch

from hyperprune.engine.statistics import StatisticsKind
from hyperprune.methods.base import PruningMethod, register_method
from hyperprune.methods.scoring import mask_from_scores, ria_scores


@register_method("ria")
class RIA(PruningMethod):
    statistics = StatisticsKind.NORMS

    def prune_linear(self, linear, stats, target, where) -> torch.Tensor:
        scores = ria_scores(linear.weight.detach(), stats.column_norms, self.config.ria.power)
        return mask_from_scores(scores, target, per_row=True)  # RIA's unstructured mode compares within a row
