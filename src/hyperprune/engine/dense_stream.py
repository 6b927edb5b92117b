"""The dense trajectory, for ``--target dense``.

By default block ℓ is fitted to the dense block's output on the *pruned* model's inputs, so
the error of earlier blocks is carried along, never corrected. With ``--target dense`` the
engine keeps a second activation stream, the dense model's own hidden states, and fits each
block to the dense model's output at that depth: the weight-updating methods prune and refit
W̃ (:func:`~hyperprune.numerics.least_squares.dense_target_weight`), and block reconstruction trains
toward the dense stream.

Only the input group that reads the block's own input (q, k, v in LLaMA) is refitted to W̃. The
engine gathers every layer's statistics in one pass of the dense block, so a later layer's
pruned-stream input (o's, down's) is what the *dense* upstream layers produce; once q, k and v
are refitted, o already receives roughly the dense stream's input, and refitting o toward W̃ as
well corrects the same error twice. On SmolLM2-135M that double correction made every block's
error to the dense trajectory worse than no correction (even on the calibration windows), and
broke the massive activation block 11 writes at the first token (27.5k → 4.5k); fitting the first
group only did not (README, "Recovery after pruning").
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from hyperprune.numerics.statistics import CrossStatistics, InputStatistics
from hyperprune.errors import HyperpruneError
from hyperprune.numerics.least_squares import dense_target_weight
from hyperprune.models.architectures import BlockLayout


class PairedInputs:
    """Pairs, sample by sample, what the block's first input group (the one that reads the block
    input) sees on the pruned stream with what it sees on the dense stream, accumulating
    Σ x_dense x_prunedᵀ. The other groups are hooked only to tell which one runs first."""

    def __init__(self, linears: dict[str, nn.Linear], layout: BlockLayout) -> None:
        self.heads = {group[0]: linears[group[0]] for group in layout.input_groups}
        self.members = {role: group[0] for group in layout.input_groups for role in group}
        self.first_head: str | None = None  # the group whose input is the block's own (it runs first)
        self.cross: CrossStatistics | None = None  # Σ x_dense x_prunedᵀ of that group
        self._pruned: torch.Tensor | None = None

    @contextmanager
    def _hooked(self, hook) -> Iterator[None]:
        handles = [linear.register_forward_hook(lambda mod, args, out, h=head: hook(h, args[0]))
                   for head, linear in self.heads.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def recording_pruned(self):
        """Inside: a forward on the pruned stream records each group's input."""
        return self._hooked(self._record)

    def _record(self, head: str, x: torch.Tensor) -> None:
        if self.first_head is None:
            self.first_head = head
            self.cross = CrossStatistics(self.heads[head].in_features)
        if head == self.first_head:
            self._pruned = x.detach()

    def pairing_dense(self):
        """Inside: a forward on the dense stream pairs each group's input with the recorded one."""
        def pair(head: str, x: torch.Tensor) -> None:
            if head == self.first_head:
                self.cross.add(x, self._pruned)
                self._pruned = None

        return self._hooked(pair)


def apply_dense_target(
    linears: dict[str, nn.Linear], statistics: dict[str, InputStatistics], paired: PairedInputs, damp_fraction: float
) -> None:
    """Replace the weights of the group that reads the block's input by W̃, the target that folds
    in the dense trajectory (see the module docstring for why only that group). Its layers share
    H and C: their rows are stacked and solved in one go."""
    head = paired.first_head
    if head is None:
        raise RuntimeError("no pruned-stream forward was recorded before the dense target fit")
    roles = [role for role in linears if paired.members[role] == head]
    with torch.no_grad():
        stacked = torch.cat([linears[role].weight for role in roles])
        target = dense_target_weight(stacked, statistics[head].hessian(), paired.cross.cross(), damp_fraction)
        for role, rows in zip(roles, target.split([linears[r].weight.shape[0] for r in roles])):
            linears[role].weight.copy_(rows.to(linears[role].weight.dtype))


def check_dense_target(method, settings) -> None:
    """``fit_target="dense"`` must have something to act on: a weight update or a reconstruction."""
    if settings.fit_target == "dense" and settings.reconstruct.steps == 0 and not method.updates_weights:
        raise HyperpruneError(
            f"--fit-target dense changes nothing for method '{method.name}', which keeps the dense weights; "
            "add --reconstruct-steps N, or use a method that updates weights (sparsegpt, hyperprune+refit)"
        )
