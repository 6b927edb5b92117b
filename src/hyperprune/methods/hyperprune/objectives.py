"""HyperPrune's pure tensor math: relaxation, schedules, prior, losses and features.

Nothing here touches modules, files or the engine; each function is tested directly.
Groups are rows of a ``[G, m]`` view of a weight (m consecutive input columns), and
patterns are the rows of ``nm_patterns(n, m)``, shape ``[P, m]``.
"""

from __future__ import annotations

import math

import torch

_LOG_FLOOR = 1e-6  # relative floor under |w| before a log, so exact zeros stay finite
_FEATURE_CLIP = 8.0


def temperature(step: int, tau0: float, tau_final: float, decay: float) -> float:
    """τ(t) = max(τ_f, τ0·exp(−ηt)) (paper: Gumbel-Softmax schedule)."""
    return max(tau_final, tau0 * math.exp(-decay * step))


def decay_to_reach(tau0: float, tau_final: float, step: float) -> float:
    """The η for which τ(t) reaches τ_f at ``step``."""
    if tau_final >= tau0 or step <= 0:
        return 0.0
    return math.log(tau0 / tau_final) / step


def prior_weight(step: int, total_steps: int, gamma0: float, alpha: float) -> float:
    """γ_t = γ0·exp(−α·t/T): the prior fades over the block's steps (paper, App. C)."""
    progress = step / max(total_steps, 1)
    return gamma0 * math.exp(-alpha * progress)


def prior_log_probs(prior_keep: torch.Tensor, patterns: torch.Tensor, beta: float) -> torch.Tensor:
    """log softmax_j(β·cos(M̃_i, s_j)) for each group's prior mask M̃_i (App. C).

    ``prior_keep`` is ``[G, m]`` (0/1), the result ``[G, P]``; it is added to the logits
    with weight γ.
    """
    prior = prior_keep.float()
    cos = (prior @ patterns.T) / (prior.norm(dim=1, keepdim=True).clamp_min(1e-12) * patterns.norm(dim=1))
    return torch.log_softmax(beta * cos, dim=1)


def relaxed_mask(
    logits: torch.Tensor,
    patterns: torch.Tensor,
    tau: float,
    gumbel: bool = False,
    straight_through: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Relaxed group masks Σ_j z_j·s_j, ``[G, m]``.

    z = softmax((logits + g)/τ) with g ~ Gumbel(0, 1) when ``gumbel``, else g = 0, which
    gives the expected mask E[M] (Theorem 1). With ``straight_through`` the forward
    value is the hard one-hot of z and the gradient is z's.
    """
    if gumbel:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        logits = logits - torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    z = torch.softmax(logits / tau, dim=-1)
    if straight_through:
        hard = torch.nn.functional.one_hot(z.argmax(dim=-1), z.shape[-1]).to(z.dtype)
        z = hard + z - z.detach()
    return z @ patterns


def hard_mask(logits: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """The argmax pattern of each group, ``[G, m]`` bool: exactly n kept of m."""
    return patterns[logits.argmax(dim=-1)].bool()


def quadratic_error(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """tr(ΔW H ΔWᵀ): the layer's squared output error Σ‖ΔW x‖² (×2/n) for H = 2XXᵀ/n."""
    return ((delta @ hessian) * delta).sum()


def outlier_energy(masked_weight: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """R_outlier = Σ_ij (Ŵ_ij·E[x_j])² + Σ_ij Ŵ_ij²·Var[x_j] = E_x ‖Ŵ·Diag(x)‖²,

    from per-channel input means and variances, with no pass over the samples.
    """
    return (masked_weight.pow(2) * (mean.pow(2) + variance)).sum()


def continual_penalty(logits: torch.Tensor, frozen_logits: torch.Tensor) -> torch.Tensor:
    """R_continual: mean over cached groups of ‖h_θ′(·) − h_θ(·)‖² (paper: continual-pruning term)."""
    if logits.numel() == 0:
        return logits.new_zeros(())
    return (logits - frozen_logits).pow(2).sum(dim=-1).mean()


def block_reconstruction(pruned: torch.Tensor, dense: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """‖f(W⊙M, x) − f(W, x)‖² over the block output (paper: reconstruction loss), normalized by the energy the
    block adds to its input, ‖f(W, x) − x‖²: the residual stream would otherwise make
    every block's error look tiny and λ meaningless across blocks."""
    return (pruned - dense).pow(2).sum() / (dense - inputs).pow(2).sum().clamp_min(1e-12)


def row_centered_log(values: torch.Tensor) -> torch.Tensor:
    """log(values) minus its mean over each row: a scale-free, per-row ranking signal."""
    logs = torch.log(values)
    return logs - logs.mean(dim=-1, keepdim=True)


def group_features(
    weight: torch.Tensor,
    coupling: torch.Tensor,
    column_norms: torch.Tensor,
    hessian_diag: torch.Tensor,
    hinv_diag: torch.Tensor,
    m: int,
    features: tuple[str, ...],
) -> torch.Tensor:
    """Per-group inputs of the hypernetwork, ``[rows·d_in/m, m·len(features)]``.

    For rows of W (``weight`` [r, d_in]): the row-normalized weights, log Wanda scores
    |w|·‖x‖ and log SparseGPT saliencies w²/[H⁻¹]²_jj (both centered per row),
    log diag H and log diag H⁻¹ (centered per layer), and ``coupling``, the weight
    times the gradient signal (ΔW̃ H)_ij of a reference mask's error: the off-diagonal
    part of H that a purely local view cannot see.
    """
    rows, cols = weight.shape
    rms = weight.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    magnitude = weight.abs() + _LOG_FLOOR * rms
    columns: list[torch.Tensor] = []
    for name in features:
        if name == "weight":
            value = weight / rms
        elif name == "wanda":
            value = row_centered_log(magnitude * column_norms)
        elif name == "saliency":
            value = row_centered_log(magnitude.pow(2) / hinv_diag.pow(2))
        elif name == "hdiag":
            logs = torch.log(hessian_diag.clamp_min(1e-12))
            value = (logs - logs.mean()).expand(rows, cols)
        elif name == "hinv":
            logs = torch.log(hinv_diag.clamp_min(1e-12))
            value = (logs - logs.mean()).expand(rows, cols)
        elif name == "coupling":
            scale = coupling.abs().mean(dim=1, keepdim=True).clamp_min(1e-12)
            value = coupling / scale
        else:
            raise ValueError(f"unknown feature '{name}'")
        columns.append(value.clamp(-_FEATURE_CLIP, _FEATURE_CLIP).reshape(rows, cols // m, m))
    return torch.cat(columns, dim=-1).reshape(rows * (cols // m), m * len(features))
