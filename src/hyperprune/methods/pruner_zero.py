"""Pruner-Zero (Dong et al., ICML 2024): the pruning metric its genetic programming search
found for LLaMA, |W ⊙ W| · minmax(|G|), with G the LM-loss gradient over the calibration set
(gathered once, on the dense model, by :func:`~hyperprune.engine.gradients.weight_gradient_norms`)."""

from __future__ import annotations

import torch

from hyperprune.engine.gradients import weight_gradient_norms
from hyperprune.errors import HyperpruneError
from hyperprune.methods.base import BlockContext, PruningMethod, register_method
from hyperprune.methods.scoring import mask_from_scores, pruner_zero_scores


@register_method("pruner-zero")
class PrunerZero(PruningMethod):
    needs_whole_model = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.gradients: dict[str, torch.Tensor] = {}
        self.layout = None

    def prepare(self, model, layout, calib_ids, device, progress) -> None:
        self.layout = layout
        self.gradients = weight_gradient_norms(model, layout, calib_ids, device, progress)

    def prune_block(self, ctx: BlockContext) -> dict[str, torch.Tensor]:
        if self.layout is None:
            raise HyperpruneError("pruner-zero ran without its gradient pass; call prepare() first")
        masks = {}
        for role, linear in ctx.linears.items():
            name = f"{self.layout.layers}.{ctx.index}.{self.layout.components[role]}.weight"
            scores = pruner_zero_scores(linear.weight.detach(), self.gradients.pop(name))
            # Unstructured: compared within each output row, as Wanda (whose code Pruner-Zero builds on).
            masks[role] = mask_from_scores(scores, ctx.target, per_row=True)
            linear.weight.data.mul_(masks[role].to(linear.weight.dtype))
        return masks
