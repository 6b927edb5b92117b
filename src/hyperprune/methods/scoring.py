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


def ria_scores(weight: torch.Tensor, column_norms: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """RIA (Zhang et al., ICLR 2024, Eq. 3): relative importance times activations,
    S_ij = (|W_ij|/Σ_k|W_ik| + |W_ij|/Σ_k|W_kj|) · ‖X_j‖₂^a."""
    w = weight.abs().float()
    relative = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12) + w / w.sum(dim=0, keepdim=True).clamp_min(1e-12)
    return relative * column_norms.to(weight.device).float().pow(power).unsqueeze(0)


def minmax(values: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] over the whole tensor (a constant tensor maps to zeros)."""
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else torch.zeros_like(values)


def pruner_zero_scores(weight: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Pruner-Zero's evolved metric for LLaMA (Dong et al., ICML 2024): |W ⊙ W| · minmax(|G|),
    G the LM-loss gradient of W over the calibration set."""
    w = weight.float()
    return (w * w) * minmax(gradient.to(weight.device).float().abs())
