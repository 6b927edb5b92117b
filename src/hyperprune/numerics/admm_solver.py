"""ADMM pruning and weight update (Boža 2024, "Fast and Effective Weight Update for Pruned Large
Language Models", arXiv 2401.02938): pure tensor math, no I/O.

The layer problem min ‖WX − W′X‖² subject to W′ having the mask's zeros is split as W (free, the
least-squares part) and Z (on the mask), with scaled dual U:

    Z ← (W + U) ⊙ M,   U ← U + W − Z,   W ← ((H + ρ₀I) W₀ + ρ(Z − U)) (H + (ρ₀ + ρ)I)⁻¹

so every iteration is one GEMM with a factor computed once per input (q/k/v share it). With no
mask given, the mask is chosen gradually from |W + U| over the first iterations, on a cubic
sparsity schedule: in each n:m group the n largest are protected and the globally smallest of the
rest are pruned, until exactly n:m is reached; then the mask is held. As the authors' code does,
inputs are first scaled to unit diagonal (X and W by √diag(XᵀX)), so that ρ₀ and ρ are relative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hyperprune.config import SparsityTarget


@dataclass
class ADMMFactor:
    """What ADMM needs of one input's H, shared by the layers reading that input."""

    scale: torch.Tensor  # √diag(H) (+ε): the input normalization
    damped: torch.Tensor  # H̄ + ρ₀I, H̄ the normalized H
    inverse: torch.Tensor  # (H̄ + (ρ₀ + ρ)I)⁻¹


def admm_factor(hessian: torch.Tensor, damp_fraction: float, rho: float) -> ADMMFactor:
    """Normalize H to unit diagonal, damp it by ``damp_fraction`` of its mean diagonal (ρ₀), and
    invert H̄ + (ρ₀ + ρ)I once."""
    H = hessian.detach().float()
    scale = H.diagonal().clamp_min(0).sqrt() + 1e-8
    normalized = H / scale.unsqueeze(0) / scale.unsqueeze(1)
    normalized.diagonal().add_(damp_fraction * normalized.diagonal().mean())
    shifted = normalized.clone()
    shifted.diagonal().add_(rho)
    factor, info = torch.linalg.cholesky_ex(shifted)
    inverse = torch.cholesky_inverse(factor) if int(info) == 0 else torch.linalg.inv(shifted)
    return ADMMFactor(scale, normalized, inverse)


def cubic_sparsity(step: int, steps: int, final: float) -> float:
    """The sparsity reached after ``step`` of ``steps`` mask-selection iterations: final·(1 − (1 − t/T)³)."""
    return final - final * (1 - (step + 1) / steps) ** 3


def linear_sparsity(step: int, steps: int, final: float) -> float:
    return final * (step + 1) / steps


def gradual_keep_mask(scores: torch.Tensor, target: SparsityTarget, sparsity: float) -> torch.Tensor:
    """The keep-mask at ``sparsity`` from |W + U| (``scores``, [d_out, d_in]): under an n:m pattern
    the n largest of each group are protected, and the globally smallest of the rest are pruned;
    at the pattern's own sparsity this is exactly n:m."""
    scores = scores.abs().float()
    count = int(scores.numel() * sparsity)
    if count == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    pattern = target.pattern
    if pattern is not None:
        groups = scores.view(scores.shape[0], -1, pattern.m)
        top = groups.topk(pattern.n, dim=2).indices
        protected = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True).view_as(scores)
        scores = scores.masked_fill(protected, float("inf"))
    if count >= scores.numel():
        return torch.isinf(scores)
    threshold = scores.flatten().kthvalue(count + 1).values
    return scores >= threshold


@dataclass
class ADMMResult:
    weight: torch.Tensor  # (W + U) ⊙ M in the original scale, zero where pruned
    mask: torch.Tensor  # keep-mask
    values: torch.Tensor  # W + U in the original scale, float32, not masked: ADMM's weights for every position


def admm_prune(weight: torch.Tensor, factor: ADMMFactor, target: SparsityTarget, iterations: int = 20,
               gradual_iterations: int = 15, rho: float = 1.0, schedule: str = "cubic",
               keep: torch.Tensor | None = None) -> ADMMResult:
    """ADMM on one layer, ``weight`` [d_out, d_in], with the factor of its input's H.

    With ``keep`` given the mask is fixed and only the weights are updated (ADMM as an update for
    any mask). Otherwise the mask is chosen gradually over ``gradual_iterations`` (at least 1) and
    then held for the rest of the ``iterations``."""
    W0 = weight.detach().float() * factor.scale.unsqueeze(0)
    rhs = W0 @ factor.damped  # (H̄ + ρ₀I) W₀, in row layout
    final = target.fraction
    sparsity_at = cubic_sparsity if schedule == "cubic" else linear_sparsity
    steps = max(1, gradual_iterations)
    mask = keep.to(W0.device, torch.bool) if keep is not None else None
    W, U = W0.clone(), torch.zeros_like(W0)
    if mask is None and iterations == 0:
        mask = gradual_keep_mask(W0, target, final)
    for step in range(iterations):
        if keep is None and step < steps:
            mask = gradual_keep_mask(W + U, target, sparsity_at(step, steps, final))
        Z = (W + U) * mask
        U.add_(W - Z)
        W = (rhs + rho * (Z - U)) @ factor.inverse
    if keep is None and iterations and iterations < steps:  # stopped before the schedule ended: finish it
        mask = gradual_keep_mask(W + U, target, final)
    values = (W + U) / factor.scale.unsqueeze(0)
    out = values * mask
    return ADMMResult(out.to(weight.dtype) if weight.dtype != torch.float32 else out, mask, values)
