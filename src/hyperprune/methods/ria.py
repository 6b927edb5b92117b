"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024): a one-shot score that
weighs each weight against its row and its column, times the input activation norm.

With ``--ria-permute``, the MLP's intermediate channels are permuted before the n:m mask is
chosen (RIA's channel permutation). The permutation is folded into the weights: the rows of the
gate/up projections (and their biases) and the columns of the down projection move together,
which leaves the block's function unchanged, because the activation between them acts channel
by channel. The saved checkpoint is therefore exactly n:m in its own layout and needs no
permutation at run time. Inputs that come from the residual stream (q, k, v, gate, up) or from
the attention heads (o) cannot be reordered without a gather at run time, so they are not
permuted; RIA's own code permutes them and un-permutes the mask, which leaves a matrix that is
not n:m as stored.
"""

from __future__ import annotations

from typing import Any

import torch

from hyperprune.config import RIAOptions
from hyperprune.numerics.statistics import StatisticsKind
from hyperprune.methods.base import PruningMethod, register_method
from hyperprune.methods.permutation import kept_score, nm_channel_permutation
from hyperprune.methods.scoring import mask_from_scores, ria_scores

# The consumer whose input channels are made by the producers' rows, channel by channel.
PERMUTABLE = {"down": ("gate", "up")}
# A rewrite that changes the block's output by more than this (relative) is undone.
EXACTNESS_TOLERANCE = 1e-4


def permute_channels(linears: dict, consumer: str, producers: tuple[str, ...], perm: torch.Tensor) -> None:
    """Reorder ``consumer``'s input columns and its producers' output rows (and biases) by ``perm``."""
    with torch.no_grad():
        weight = linears[consumer].weight
        weight.copy_(weight[:, perm.to(weight.device)])
        for role in producers:
            lin = linears[role]
            index = perm.to(lin.weight.device)
            lin.weight.copy_(lin.weight[index])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[index])


@register_method("ria", options=RIAOptions, summary="RIA (Zhang et al. 2024): relative importance and activations, optional channel permutation")
class RIA(PruningMethod):
    statistics = StatisticsKind.NORMS

    def reorder_block(self, linears, statistics, probe) -> dict[str, Any]:
        options, pattern = self.options, self.config.target.pattern
        if not options.permute or pattern is None:
            return {}
        notes = {}
        for consumer, candidates in PERMUTABLE.items():
            producers = tuple(role for role in candidates if role in linears)
            if consumer not in linears or not producers:
                notes[consumer] = {"permuted": False, "why": "no separate producer projections in this block"}
                continue
            stats = statistics[consumer]
            scores = ria_scores(linears[consumer].weight.detach(), stats.column_norms, options.power)
            before = kept_score(scores, pattern.n, pattern.m)
            perm = nm_channel_permutation(scores, pattern.n, pattern.m, options.permute_rounds)
            after = kept_score(scores[:, perm.to(scores.device)], pattern.n, pattern.m)
            if after <= before:
                notes[consumer] = {"permuted": False, "why": "no permutation keeps more score", "kept_score": before}
                continue
            permute_channels(linears, consumer, producers, perm)
            change = probe()
            if change > EXACTNESS_TOLERANCE:  # the activation between them is not channel-wise here
                permute_channels(linears, consumer, producers, torch.argsort(perm))
                notes[consumer] = {"permuted": False, "why": f"not exact in this block (output change {change:.2e})"}
                continue
            stats.permute_inputs(perm)
            notes[consumer] = {"permuted": True, "producers": list(producers), "kept_score_before": before,
                               "kept_score_after": after, "output_change": change, "order": perm.tolist()}
        return {"channel_permutation": notes}

    def prune_linear(self, linear, stats, target, where) -> torch.Tensor:
        scores = ria_scores(linear.weight.detach(), stats.column_norms, self.options.power)
        return mask_from_scores(scores, target, per_row=True)  # RIA's unstructured mode compares within a row
