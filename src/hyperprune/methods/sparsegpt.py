"""SparseGPT (Frantar & Alistarh, 2023): OBS-based mask selection with weight update.

The pure functions here take a weight and a Hessian and return the pruned weight;
the method class only wires them to the engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from hyperprune.config import ADMMOptions, HessianOptions, SparseGPTOptions, SparsityTarget
from hyperprune.numerics.statistics import StatisticsKind
from hyperprune.errors import HyperpruneError
from hyperprune.masks import nm_mask_from_scores
from hyperprune.methods.base import BlockContext, PruningMethod, register_method, register_preset, roles_by_input
from hyperprune.numerics.admm_solver import admm_factor, admm_prune
from hyperprune.numerics.refit import lstsq_refit, stacked_exact_refit

log = logging.getLogger(__name__)


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # updated weight, zero where pruned
    mask: torch.Tensor  # keep-mask
    loss: float  # Σ OBS losses, the layer's predicted squared error (H scale)
    percdamp: float  # dampening finally used


def inverse_hessian_cholesky(
    hessian: torch.Tensor, percdamp: float, max_retries: int = 4, where: str = "layer"
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹, with λ = percdamp · mean(diag H).

    If H + λI is not positive definite (too few samples, dead or collinear inputs),
    retry with 10x the dampening, then give a clear error instead of a crash.
    """
    damp_fraction = percdamp
    mean_diag = torch.mean(torch.diag(hessian))
    for attempt in range(max_retries + 1):
        # In place on one copy, and each intermediate freed as soon as it is used: at 7B scale
        # (d_in = 11008) every d×d matrix is 485 MB.
        dampened = hessian.clone()
        dampened.diagonal().add_(damp_fraction * mean_diag)
        factor, info = torch.linalg.cholesky_ex(dampened)
        del dampened
        if info == 0:
            inverse = torch.cholesky_inverse(factor)
            del factor
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if info == 0:
                return upper, damp_fraction
        if attempt < max_retries:
            log.warning(
                "Cholesky decomposition failed for %s with dampening %.3g; retrying with %.3g "
                "(more calibration samples usually avoid this)",
                where, damp_fraction, damp_fraction * 10,
            )
        damp_fraction *= 10
    raise HyperpruneError(
        f"Cholesky decomposition failed for {where} even with dampening {damp_fraction / 10:.3g}; "
        "the Hessian is degenerate: use more calibration samples (--nsamples) or a larger --percdamp"
    )


@dataclass
class InverseHessianFactor:
    """What SparseGPT needs of H: the upper Cholesky factor of (H + λI)⁻¹, the λ finally used,
    and the inputs never seen (diag H = 0), whose weights are zeroed."""

    upper: torch.Tensor
    damp: float
    dead: torch.Tensor


def inverse_hessian_factor(hessian: torch.Tensor, options: HessianOptions, where: str = "layer",
                           pinned: bool = False) -> InverseHessianFactor:
    """Factor H for SparseGPT. Inputs that were always zero carry no information: they are
    pinned (diag 1) so H stays invertible; ``hessian`` is modified in place unless already ``pinned``."""
    dead = torch.diag(hessian) == 0
    if not pinned:
        hessian[dead, dead] = 1.0
    upper, damp = inverse_hessian_cholesky(hessian, options.percdamp, options.max_damp_retries, where)
    return InverseHessianFactor(upper, damp, dead)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    target: SparsityTarget,
    options: HessianOptions = HessianOptions(),
    where: str = "layer",
    keep_mask: torch.Tensor | None = None,
    overwrite_hessian: bool = False,
    factor: InverseHessianFactor | None = None,
) -> SparseGPTResult:
    """Prune ``weight`` [d_out, d_in] given H = 2XXᵀ/n [d_in, d_in] (SparseGPT, Alg. 1).

    Columns are processed left to right in lazy blocks of ``blocksize``. n:m groups are
    chosen when the scan reaches a group's first column, by the OBS saliency
    w² / [H⁻¹]_jj² (Eq. 3), and the remaining columns absorb the error (Eq. 2).

    With ``keep_mask`` given, no selection happens: the same sequential OBS update
    refits the kept weights for that fixed mask (HyperPrune's ``--refit-method obs``).
    With ``overwrite_hessian`` the caller's ``hessian`` (a float32 scratch copy) is modified
    instead of copied; with ``factor`` (from :func:`inverse_hessian_factor` on the same H and
    options) no factorization happens and ``hessian`` is not read: d×d matrices less at peak.
    """
    W = weight.detach().clone().float()
    rows, cols = W.shape
    if factor is None:
        H = hessian.detach() if overwrite_hessian and hessian.dtype == torch.float32 else hessian.detach().clone().float()
        factor = inverse_hessian_factor(H, options, where, pinned=False)
        del H
    Hinv, used_damp = factor.upper, factor.damp
    W[:, factor.dead] = 0.0

    pruned = torch.zeros_like(W, dtype=torch.bool)
    losses = torch.zeros(rows, device=W.device)
    pattern = target.pattern
    for i1 in range(0, cols, options.blocksize):
        i2 = min(i1 + options.blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        if keep_mask is not None:
            mask1 = ~keep_mask[:, i1:i2].to(W.device, torch.bool)
        elif pattern is None:
            # Unstructured: one threshold for the whole column block (original SparseGPT).
            saliency = W1**2 / d1.reshape(1, -1) ** 2
            n_prune = int(saliency.numel() * target.sparsity)
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            if n_prune:
                order = torch.sort(saliency.reshape(-1), stable=True).indices[:n_prune]
                mask1.view(-1)[order] = True
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if keep_mask is None and pattern is not None and i % pattern.m == 0:
                group = W1[:, i : i + pattern.m] ** 2 / d1[i : i + pattern.m].reshape(1, -1) ** 2
                # Prune the m-n least salient, ties toward the lower column (as a stable ascending sort).
                mask1[:, i : i + pattern.m] = nm_mask_from_scores(-group, pattern.m - pattern.n, pattern.m)
            q = w.clone()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            losses += (w - q) ** 2 / d**2 / 2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)  # Eq. 2: OBS update
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the later columns
    W[pruned] = 0.0
    return SparseGPTResult(W.to(weight.dtype), ~pruned, float(losses.sum()), used_damp)


@register_method("sparsegpt", options=SparseGPTOptions,
                 summary="SparseGPT (Frantar & Alistarh 2023): OBS mask and sequential weight update")
class SparseGPT(PruningMethod):
    """SparseGPT's mask and update; with ``refit="lstsq"`` its mask, then the exact refit (its OBS
    weights as CG's first guess, and the layers of one input solved together); with
    ``refit="admm"`` its mask, then ADMM's update."""

    statistics = StatisticsKind.HESSIAN
    uses_hessian = True
    uses_refit = True

    @property
    def updates_weights(self) -> bool:
        return True

    def prune_block(self, ctx: BlockContext) -> dict[str, torch.Tensor]:
        """Layers that read one input (q/k/v, gate/up) share H, so they share its factorization;
        the ADMM and CG updates also solve them together."""
        grouped = self.options.refit == "admm" or (self.options.refit == "lstsq" and self.config.refit.method != "lstsq")
        masks = {}
        for roles in roles_by_input(ctx):
            hessian = ctx.statistics[roles[0]].hessian().float()
            where = f"block {ctx.index} {'+'.join(roles)}"
            factor = inverse_hessian_factor(hessian, self.config.hessian, where)  # pins dead inputs of H in place
            if not grouped:  # SparseGPT's own update, or the Cholesky refit, one layer at a time
                for role in roles:
                    masks[role] = self._prune_one(ctx.linears[role], hessian, ctx.target, f"block {ctx.index} {role}", factor)
                continue
            results = {role: self._sparsegpt(ctx.linears[role], hessian, ctx.target, f"block {ctx.index} {role}", factor)
                       for role in roles}
            del factor
            if self.options.refit == "admm":  # one ADMM factor for the layers sharing the input
                admm = ADMMOptions()
                admm_inverse = admm_factor(hessian, admm.damp, admm.rho)
                weights = {role: admm_prune(ctx.linears[role].weight.data, admm_inverse, ctx.target, admm.iterations,
                                            rho=admm.rho, keep=results[role].mask).weight for role in roles}
            elif self.config.refit.method == "obs":  # the exact refit "by OBS" is SparseGPT's own update
                weights = {role: result.weight for role, result in results.items()}
            else:
                refit = self.config.refit
                solved = stacked_exact_refit([ctx.linears[r].weight.data for r in roles], hessian,
                                             [results[r].mask for r in roles], self.options.lstsq_damp, refit.method,
                                             refit.tol, refit.max_iter, [results[r].weight for r in roles],
                                             refit.preconditioner)
                weights = {role: result.weight for role, result in zip(roles, solved)}
                for role, result in zip(roles, solved):
                    ctx.info[role] = {"refit_iterations": result.iterations, "refit_residual": result.residual}
            for role in roles:
                ctx.linears[role].weight.data.copy_(weights[role])
                masks[role] = results[role].mask
        return masks

    def prune_linear(self, linear, stats, target, where) -> torch.Tensor:
        """One layer alone (prune_block shares the factorization of H across the layers of one input)."""
        return self._prune_one(linear, stats.hessian().float(), target, where)

    def _prune_one(self, linear, hessian, target, where, factor=None) -> torch.Tensor:
        """SparseGPT on one layer, then the Cholesky refit if asked; the weights in place, the mask returned.
        Both solves read ``hessian`` with its dead inputs pinned (by the factorization, in place)."""
        result = self._sparsegpt(linear, hessian, target, where, factor)
        weight = result.weight
        if self.options.refit == "lstsq":
            weight = lstsq_refit(linear.weight.data, hessian, result.mask, self.options.lstsq_damp)
        linear.weight.data.copy_(weight)
        return result.mask

    def _sparsegpt(self, linear, hessian, target, where, factor=None) -> SparseGPTResult:
        return sparsegpt_prune(linear.weight.data, hessian, target, self.config.hessian, where, overwrite_hessian=True,
                               factor=factor)


register_preset("sparsegpt+lstsq", "sparsegpt", "SparseGPT's mask, then the exact least-squares refit of the kept weights",
                refit="lstsq")
register_preset("sparsegpt+admm", "sparsegpt", "SparseGPT's mask, then ADMM's weight update (Boža 2024) for that mask",
                refit="admm")
