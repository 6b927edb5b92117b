"""Damped least-squares math shared by the refits and the dense target (pure tensor math)."""

from __future__ import annotations

import torch


def damped_hessian(hessian: torch.Tensor, damp_fraction: float) -> torch.Tensor:
    """H + λI with λ = damp_fraction · mean(diag H); inputs never seen (diag 0) are pinned to 1."""
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp_fraction * torch.diag(H).mean())
    return H


def dense_target_weight(
    weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damp_fraction: float
) -> torch.Tensor:
    """The weights whose output on the pruned model's inputs best matches the dense model's.

    Minimizes Σ‖W̃ x_p − W x_d‖² + λ‖W̃ − W‖² over the paired tokens (x_p pruned stream, x_d
    dense stream), in closed form W̃ = W (C + λI)(H + λI)⁻¹ with H = 2X_pX_pᵀ/n and
    C = 2X_dX_pᵀ/n. Because W̃x_p is that fit's projection, Σ‖W′x_p − Wx_d‖² equals
    (W′ − W̃) H (W′ − W̃)ᵀ plus a constant, so any method that prunes W̃ for H, and any refit
    toward W̃, minimizes the error to the dense trajectory (GPTAQ's target, arXiv 2504.02692).
    With equal streams (C = H), W̃ = W. Returns float32.
    """
    W = weight.detach().float()
    raw = hessian.detach().float().to(W.device)
    H = damped_hessian(raw, damp_fraction)
    # C gets exactly H's damping and dead-input pinning, so that C = H gives W̃ = W.
    rhs = (cross.detach().float().to(W.device) + (H - raw)).T @ W.T  # (C + λI)ᵀ Wᵀ
    factor, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        return torch.linalg.lstsq(H, rhs).solution.T.contiguous()
    return torch.cholesky_solve(rhs, factor).T.contiguous()
