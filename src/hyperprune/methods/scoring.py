"""Score-based pruning shared by Magnitude and Wanda: turn scores into a keep-mask."""

from __future__ import annotations

import torch

from hyperprune.config import SparsityTarget
from hyperprune.masks import nm_mask_from_scores, unstructured_mask_from_scores


def mask_from_scores(scores: torch.Tensor, target: SparsityTarget, per_row: bool) -> torch.Tensor:
    """n:m keeps the top-n per group; unstructured prunes the lowest scores per row or matrix."""
    if target.pattern is not None:
        return nm_mask_from_scores(scores, target.pattern.n, target.pattern.m)
    return unstructured_mask_from_scores(scores, target.sparsity, per_row=per_row)


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """Wanda: S_ij = |W_ij| · ‖X_j‖₂ (Sun et al., 2023, Eq. 1)."""
    return weight.abs().float() * column_norms.to(weight.device).float().unsqueeze(0)
