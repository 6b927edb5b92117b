"""MaskPro (2025): n:m masks learned as linear-space probabilities, by policy gradient.

Each group of m weights has m logits; a mask keeps n positions drawn from softmax(logits)
without replacement (the Gumbel-top-n trick), so the distribution needs m numbers per group,
not C(m, n). The logits start from a prior mask (SparseGPT's by default) scaled by a constant,
and are trained by REINFORCE: the gradient of E[L] is E[(L − b) ∇ log p(mask)], with the
baseline b starting at the prior mask's loss and following a moving average.

The original trains end to end on the LM loss of the whole model. Here it runs layer-wise in
this engine, as HyperPrune does, with the same calibration budget: the loss of a row is its
exact output error (w − w⊙m)ᵀH(w − w⊙m) on the calibration inputs, with the weights frozen.
A row's loss depends only on that row's groups, so each row gets its own advantage.
"""

from __future__ import annotations

import torch

from hyperprune.config import MaskProOptions, SparsityTarget
from hyperprune.numerics.statistics import StatisticsKind
from hyperprune.masks import nm_mask_from_scores
from hyperprune.methods.base import PruningMethod, register_method
from hyperprune.methods.scoring import wanda_scores
from hyperprune.methods.sparsegpt import sparsegpt_prune


def sample_without_replacement(logits: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` of the m positions of every group (``logits`` [groups, m]) without replacement.

    Returns the keep-mask [groups, m] and the log-probability [groups] of the ordered draw,
    Σ_k (logit_{i_k} − logsumexp of the logits not yet drawn): differentiable in ``logits``.
    """
    uniform = torch.rand(logits.shape, generator=generator, device="cpu").to(logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    order = torch.topk(logits.detach() + gumbel, n, dim=1).indices  # the Gumbel-top-n draw, in draw order
    available = torch.zeros_like(logits)
    log_prob = torch.zeros(logits.shape[0], device=logits.device, dtype=logits.dtype)
    for k in range(n):
        chosen = order[:, k : k + 1]
        log_prob = log_prob + logits.gather(1, chosen).squeeze(1) - torch.logsumexp(logits + available, dim=1)
        available = available.scatter(1, chosen, float("-inf"))
    keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(1, order, True)
    return keep, log_prob


def row_errors(weight: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per row, (w − w⊙m)ᵀ H (w − w⊙m): the squared output error of the mask, weights frozen.
    ``keep`` may carry leading sample dimensions."""
    removed = weight * (~keep)
    return ((removed @ hessian) * removed).sum(dim=-1)


def train_mask_logits(
    weight: torch.Tensor, hessian: torch.Tensor, prior: torch.Tensor, n: int, m: int,
    options: MaskProOptions, generator: torch.Generator,
) -> tuple[torch.Tensor, dict]:
    """REINFORCE on the mask logits of one layer; returns the final keep-mask (top-n logits)."""
    rows, cols = weight.shape
    W, H = weight.detach().float(), hessian.detach().float()
    scale = ((W @ H) * W).sum(dim=1).clamp_min(1e-12)  # each row's dense output energy: losses are relative
    logits = (options.init_scale * prior.float()).reshape(-1, m).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=options.lr)
    baseline = row_errors(W, prior, H) / scale  # Eq.: b₀ = the prior mask's loss
    start = baseline.clone()
    for _ in range(options.steps):
        draws = [sample_without_replacement(logits, n, generator) for _ in range(options.samples)]
        keep = torch.stack([d[0].reshape(rows, cols) for d in draws])
        log_prob = torch.stack([d[1].reshape(rows, cols // m).sum(dim=1) for d in draws])  # [samples, rows]
        losses = row_errors(W, keep, H) / scale  # [samples, rows]
        advantage = losses - baseline
        optimizer.zero_grad(set_to_none=True)
        (advantage.detach() * log_prob).mean(dim=0).sum().backward()
        optimizer.step()
        baseline = options.baseline_decay * baseline + (1 - options.baseline_decay) * losses.mean(dim=0)
    learned = nm_mask_from_scores(logits.detach().reshape(rows, cols), n, m)
    learned_error = row_errors(W, learned, H) / scale
    # The layer-wise loss is exact and a row's loss depends only on its own mask, so each row
    # keeps whichever of the learned and the prior mask is better: a row never ends worse than
    # it started. (REINFORCE with one scalar reward per row of many groups is noisy; at a high
    # learning rate its learned mask can be worse than the prior, see the README.)
    use_prior = start < learned_error
    final = torch.where(use_prior.unsqueeze(1), prior.to(learned.device), learned)
    end = torch.minimum(start, learned_error)
    return final, {"prior_rel_error": float(start.mean()), "learned_rel_error": float(learned_error.mean()),
                   "rel_error": float(end.mean()), "rows_kept_prior": float(use_prior.float().mean()),
                   "changed_from_prior": float((final != prior).float().mean() / 2)}


@register_method("maskpro", options=MaskProOptions,
                 summary="MaskPro (layer-wise here): policy-gradient learning of n:m masks from a prior")
class MaskPro(PruningMethod):
    statistics = StatisticsKind.HESSIAN
    uses_hessian = True
    supports_unstructured = False

    def prune_block(self, ctx) -> dict[str, torch.Tensor]:
        options, pattern = self.options, ctx.target.pattern
        masks = {}
        for number, (role, linear) in enumerate(ctx.linears.items()):
            weight, hessian = linear.weight.detach(), ctx.statistics[role].hessian()
            prior = self._prior(weight, ctx.statistics[role], hessian, ctx.target, f"block {ctx.index} {role}")
            # One stream per (seed, block, layer): a resumed run draws exactly what it would have.
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + ctx.index * 64 + number)
            keep, info = train_mask_logits(weight, hessian, prior.to(weight.device), pattern.n, pattern.m, options, generator)
            ctx.info[role] = info
            linear.weight.data.mul_(keep.to(linear.weight.dtype))
            masks[role] = keep
        return masks

    def _prior(self, weight, stats, hessian, target: SparsityTarget, where: str) -> torch.Tensor:
        kind = self.options.prior
        if kind == "sparsegpt":
            return sparsegpt_prune(weight, hessian, target, self.config.hessian, where).mask
        scores = wanda_scores(weight, stats.column_norms) if kind == "wanda" else weight.abs().float()
        return nm_mask_from_scores(scores, target.pattern.n, target.pattern.m)
