"""Pruner-Zero (Dong et al., ICML 2024): the pruning metric its genetic programming search
found for LLaMA, |W ⊙ W| · minmax(|G|), with G the LM-loss gradient over the calibration set
(gathered once, on the dense model, by :func:`~hyperprune.numerics.gradients.weight_gradient_norms`)."""

from __future__ import annotations

import torch

from hyperprune.numerics.gradients import weight_gradient_norms
from hyperprune.methods.base import WholeModelPass, register_method
from hyperprune.methods.scoring import mask_from_scores, pruner_zero_scores
from hyperprune.methods.whole_model import WholeModelMasks


@register_method("pruner-zero", summary="Pruner-Zero (Dong et al. 2024): |W ⊙ W| · minmax(|G|), G the LM-loss gradient")
class PrunerZero(WholeModelMasks):
    def compute_masks(self, run: WholeModelPass) -> dict[str, torch.Tensor]:
        gradients = weight_gradient_norms(run.model, run.layout, run.calib_ids, run.device, run.progress)
        params = dict(run.model.named_parameters())
        masks = {}
        for name in list(gradients):
            scores = pruner_zero_scores(params[name].detach(), gradients.pop(name))
            # Unstructured: compared within each output row, as Wanda (whose code Pruner-Zero builds on).
            masks[name] = mask_from_scores(scores, self.config.target, per_row=True)
        return masks
