"""Input statistics of a linear layer, accumulated over calibration tokens (pure math)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch


class StatisticsKind(IntEnum):
    """What a method needs to see of a layer's inputs; each level includes the previous."""

    NONE = 0
    NORMS = 1  # per-input-channel sum of squares (Wanda)
    MOMENTS = 2  # plus per-channel sums, for means and variances
    HESSIAN = 3  # plus the full X Xᵀ (SparseGPT)


@dataclass
class InputStatistics:
    """Running sums over every calibration token that reached a linear layer."""

    in_features: int
    kind: StatisticsKind
    n_tokens: int = 0
    sum: torch.Tensor | None = None
    sq_sum: torch.Tensor | None = None
    xxt: torch.Tensor | None = field(default=None, repr=False)

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs shaped ``[..., in_features]``."""
        x = x.detach().reshape(-1, self.in_features).float()
        self.n_tokens += x.shape[0]
        if self.kind >= StatisticsKind.NORMS:
            self.sq_sum = _add(self.sq_sum, (x * x).sum(dim=0))
        if self.kind >= StatisticsKind.MOMENTS:
            self.sum = _add(self.sum, x.sum(dim=0))
        if self.kind >= StatisticsKind.HESSIAN:
            self.xxt = _add(self.xxt, x.T @ x)

    def without(self, part: "InputStatistics") -> "InputStatistics":
        """The statistics of the tokens not in ``part``, a subset of this one's tokens (its sums
        subtracted): what was accumulated over all windows, less some held-out ones."""
        if part.n_tokens >= self.n_tokens:
            raise ValueError(f"cannot hold out {part.n_tokens} of {self.n_tokens} tokens: nothing would be left")
        less = [None if mine is None else mine - theirs for mine, theirs in
                ((self.sum, part.sum), (self.sq_sum, part.sq_sum), (self.xxt, part.xxt))]
        # Float rounding can leave a channel's sum of squares a hair below zero.
        sq_sum = None if less[1] is None else less[1].clamp_min(0.0)
        return InputStatistics(self.in_features, self.kind, self.n_tokens - part.n_tokens, less[0], sq_sum, less[2])

    def permute_inputs(self, perm: torch.Tensor) -> None:
        """Reorder the input channels, as when the layer's columns were permuted by ``perm``."""
        if self.sum is not None:
            self.sum = self.sum[perm.to(self.sum.device)]
        if self.sq_sum is not None:
            self.sq_sum = self.sq_sum[perm.to(self.sq_sum.device)]
        if self.xxt is not None:
            index = perm.to(self.xxt.device)
            self.xxt = self.xxt[index][:, index]

    @property
    def column_norms(self) -> torch.Tensor:
        """‖x_j‖₂ over all calibration tokens, per input channel j."""
        return torch.sqrt(self.sq_sum)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n_tokens

    @property
    def variance(self) -> torch.Tensor:
        return (self.sq_sum / self.n_tokens - self.mean**2).clamp_min(0.0)

    def hessian(self) -> torch.Tensor:
        """H = 2 X Xᵀ / n, the Hessian of the layer-wise squared error (SparseGPT)."""
        if self.xxt is None:
            raise RuntimeError("Hessian statistics were not collected for this layer")
        return self.xxt * (2.0 / self.n_tokens)


def _add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total.add_(value)


@dataclass
class CrossStatistics:
    """Σ x_dense x_prunedᵀ over paired tokens: the same position run through the dense model
    and through the pruned one, as it reaches one linear layer (``--target dense``)."""

    in_features: int
    n_tokens: int = 0
    xdxp: torch.Tensor | None = field(default=None, repr=False)

    def add(self, dense: torch.Tensor, pruned: torch.Tensor) -> None:
        dense = dense.detach().reshape(-1, self.in_features).float()
        pruned = pruned.detach().reshape(-1, self.in_features).float()
        self.n_tokens += dense.shape[0]
        self.xdxp = _add(self.xdxp, dense.T @ pruned)

    def cross(self) -> torch.Tensor:
        """C = 2 X_dense X_prunedᵀ / n, on the scale of :meth:`InputStatistics.hessian`."""
        if self.xdxp is None:
            raise RuntimeError("no paired inputs were accumulated for this layer")
        return self.xdxp * (2.0 / self.n_tokens)
