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


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """g ~ Gumbel(0, 1). Drawn once, outside any recomputed (checkpointed) region: the
    checkpoint's RNG bookkeeping does not cover a custom ``torch.Generator``."""
    uniform = torch.rand(shape, generator=generator, device=device)
    return -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))


def relaxed_mask(
    logits: torch.Tensor,
    patterns: torch.Tensor,
    tau: float,
    gumbel: bool = False,
    straight_through: bool = False,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relaxed group masks Σ_j z_j·s_j, ``[G, m]``.

    z = softmax((logits + g)/τ) with g ~ Gumbel(0, 1) when ``gumbel`` (or g = ``noise``),
    else g = 0, which gives the expected mask E[M] (Theorem 1). With ``straight_through``
    the forward value is the hard one-hot of z and the gradient is z's.
    """
    if noise is None and gumbel:
        noise = gumbel_noise(logits.shape, generator, logits.device)
    if noise is not None:
        logits = logits + noise.to(logits.dtype)
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


def diagonal_blocks(hessian: torch.Tensor, m: int) -> torch.Tensor:
    """The m×m blocks H_gg on H's diagonal, one per column group: ``[d_in/m, m, m]``."""
    groups = hessian.shape[0] // m
    return hessian.reshape(groups, m, groups, m).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def pattern_costs(values: torch.Tensor, hessian_blocks: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """q_gj = e_jᵀH_gg e_j with e_j = v_g ⊙ (1 − s_j): the within-group error of each pattern.

    ``values`` [rows, d_in] (the weights the mask multiplies), result ``[rows, d_in/m, P]``.
    """
    rows, cols = values.shape
    m = patterns.shape[1]
    v = values.reshape(rows, cols // m, m)
    dropped = 1.0 - patterns  # [P, m]
    # Σ_ab v_a v_b H_ab (1−s_ja)(1−s_jb), as (v ⊙ d_j)ᵀ H (v ⊙ d_j) for every pattern j.
    pair = dropped.unsqueeze(2) * dropped.unsqueeze(1)  # [P, m, m]
    weighted = torch.einsum("pab,gab->gpab", pair, hessian_blocks)  # [G, P, m, m]
    return torch.einsum("rga,gpab,rgb->rgp", v, weighted, v)


def expected_quadratic_error(
    values: torch.Tensor,
    hessian: torch.Tensor,
    hessian_blocks: torch.Tensor,
    probs: torch.Tensor,
    patterns: torch.Tensor,
    costs: torch.Tensor,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """E_M[eᵀHe] summed over rows, exactly, for e = base + v ⊙ (1 − M) (Eq. 12).

    Each group's pattern is drawn independently from ``probs`` [rows·d_in/m, P]. Then
    E[eᵀHe] = E[e]ᵀH E[e] + Σ_g (Σ_j z_j q_gj − ē_gᵀH_gg ē_g), with ē_g the random part's
    mean v_g ⊙ (1 − E[M]_g) and q from :func:`pattern_costs`. Theorem 1 keeps only the
    first term, which makes fractional masks look cheaper than any hard one; with the
    variance term the loss is multilinear in each group's z, so its minima are hard masks.
    """
    rows, cols = values.shape
    m = patterns.shape[1]
    expected_keep = (probs @ patterns).reshape(rows, cols)
    mean_random = values * (1.0 - expected_keep)
    mean_error = mean_random if base is None else base + mean_random
    first = ((mean_error @ hessian) * mean_error).sum()
    g = mean_random.reshape(rows, cols // m, m)
    within_mean = torch.einsum("rga,gab,rgb->", g, hessian_blocks, g)
    within_random = (probs.reshape(rows, cols // m, -1) * costs).sum()
    return first + within_random - within_mean


def pattern_delta_losses(
    values: torch.Tensor,
    hessian: torch.Tensor,
    hessian_blocks: torch.Tensor,
    keep: torch.Tensor,
    patterns: torch.Tensor,
    base: torch.Tensor | None = None,
    error_times_hessian: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact change of eᵀHe if one group alone switches to pattern j: ``[rows, d_in/m, P]``.

    Δ_gj = 2(e_j − e)_gᵀ(He)_g + (e_j − e)_gᵀH_gg(e_j − e)_g, at the current error
    e = base + v ⊙ (1 − keep) and e_j = base_g + v_g ⊙ (1 − s_j). ``error_times_hessian``
    (eH, the costly part) may be passed in when the caller already has it.
    """
    rows, cols = values.shape
    m = patterns.shape[1]
    if error_times_hessian is None:
        error = values * (~keep.bool()).float()
        if base is not None:
            error = error + base
        error_times_hessian = error @ hessian
    grad = error_times_hessian.reshape(rows, cols // m, m)
    v = values.reshape(rows, cols // m, m)
    keep_g = keep.reshape(rows, cols // m, m).float()
    # (e_j − e)_g = v_g ⊙ (keep_g − s_j): the base cancels.
    change = v.unsqueeze(2) * (keep_g.unsqueeze(2) - patterns)  # [r, G, P, m]
    linear = 2.0 * (change * grad.unsqueeze(2)).sum(-1)
    quadratic = torch.einsum("rgpa,gab,rgpb->rgp", change, hessian_blocks, change)
    return linear + quadratic


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
    delta: torch.Tensor | None = None,
    hessian_blocks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-group inputs of the hypernetwork, ``[rows·d_in/m, F]``.

    For rows of W (``weight`` [r, d_in]), m values per group each: the row-normalized
    weights, log Wanda scores |w|·‖x‖ and log SparseGPT saliencies w²/[H⁻¹]²_jj (both
    centered per row), log diag H and log diag H⁻¹ (centered per layer), and ``coupling``,
    the weight times the gradient signal (ΔW H)_ij of the current mask's error: the
    off-diagonal part of H that a purely local view cannot see. Then P values per group
    for ``delta``, the exact loss change of switching the group to each pattern
    (:func:`pattern_delta_losses`, scaled per row), and m(m−1)/2 for ``hblock``, the
    correlations H_ab/√(H_aa H_bb) inside the group.
    """
    rows, cols = weight.shape
    groups = cols // m
    rms = weight.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    magnitude = weight.abs() + _LOG_FLOOR * rms
    columns: list[torch.Tensor] = []
    for name in features:
        if name == "weight":
            value = weight / rms
        elif name == "wanda":
            # An input never seen (‖x‖ = 0: Gemma-3 has such channels) would put log 0 into every
            # row's mean and make the whole row NaN; give it the floor the weights get instead.
            floor = _LOG_FLOOR * column_norms.max().clamp_min(1e-30)
            value = row_centered_log(magnitude * torch.where(column_norms > 0, column_norms, floor))
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
        elif name == "delta":
            scale = delta.abs().reshape(rows, -1).mean(dim=1).clamp_min(1e-20).view(rows, 1, 1)
            columns.append((delta / scale).clamp(-_FEATURE_CLIP, _FEATURE_CLIP))
            continue
        elif name == "hblock":
            columns.append(hessian_block_correlations(hessian_blocks).unsqueeze(0).expand(rows, groups, -1))
            continue
        else:
            raise ValueError(f"unknown feature '{name}'")
        columns.append(value.clamp(-_FEATURE_CLIP, _FEATURE_CLIP).reshape(rows, groups, m))
    stacked = torch.cat(columns, dim=-1)
    return stacked.reshape(rows * groups, stacked.shape[-1])


def feature_width(features: tuple[str, ...], n: int, m: int) -> int:
    """Number of hypernetwork inputs per group for ``features``."""
    widths = {"delta": math.comb(m, n), "hblock": m * (m - 1) // 2}
    return sum(widths.get(name, m) for name in features)


def hessian_block_correlations(hessian_blocks: torch.Tensor) -> torch.Tensor:
    """Off-diagonal H_ab/√(H_aa H_bb) of each group's block (a < b): ``[G, m(m−1)/2]``."""
    m = hessian_blocks.shape[-1]
    diag = hessian_blocks.diagonal(dim1=1, dim2=2).clamp_min(1e-12).sqrt()
    corr = hessian_blocks / (diag.unsqueeze(2) * diag.unsqueeze(1))
    upper = torch.triu_indices(m, m, offset=1, device=hessian_blocks.device)
    return corr[:, upper[0], upper[1]]
