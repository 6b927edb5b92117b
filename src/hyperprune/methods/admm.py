"""ADMM pruning (Boža 2024): the mask chosen gradually while ADMM updates the weights; the math is
in ``numerics.admm_solver``. Optionally the exact refit on the final mask (ALPS's last step)."""

from __future__ import annotations

import torch

from hyperprune.config import ADMMOptions
from hyperprune.errors import HyperpruneError
from hyperprune.methods.base import BlockContext, PruningMethod, register_method, roles_by_input
from hyperprune.numerics.admm_solver import admm_factor, admm_prune
from hyperprune.numerics.refit import stacked_exact_refit
from hyperprune.numerics.statistics import StatisticsKind


@register_method("admm", options=ADMMOptions,
                 summary="ADMM (Boža 2024): gradual mask selection with ADMM weight updates")
class ADMM(PruningMethod):
    statistics = StatisticsKind.HESSIAN
    uses_refit = True

    def __init__(self, config, preset=None) -> None:
        super().__init__(config, preset)
        if self.options.final_refit == "lstsq" and config.refit.method == "obs":
            raise HyperpruneError("admm's final refit is an exact least-squares refit: give refit method cg or lstsq, "
                                  "not obs")

    @property
    def updates_weights(self) -> bool:
        return True

    def prune_block(self, ctx: BlockContext) -> dict[str, torch.Tensor]:
        opts: ADMMOptions = self.options
        masks = {}
        for roles in roles_by_input(ctx):
            hessian = ctx.statistics[roles[0]].hessian()
            factor = admm_factor(hessian, opts.damp, opts.rho)  # one factor for the layers sharing the input
            results = {role: admm_prune(ctx.linears[role].weight.data, factor, ctx.target, opts.iterations,
                                        opts.gradual_iterations, opts.rho, opts.schedule) for role in roles}
            del factor
            weights = {role: result.weight for role, result in results.items()}
            if opts.final_refit == "lstsq":
                refit = self.config.refit
                solved = stacked_exact_refit([ctx.linears[r].weight.data for r in roles], hessian,
                                             [results[r].mask for r in roles], opts.refit_damp, refit.method,
                                             refit.tol, refit.max_iter, [weights[r] for r in roles], refit.preconditioner)
                for role, result in zip(roles, solved):
                    weights[role] = result.weight
                    ctx.info[role] = {"refit_iterations": result.iterations, "refit_residual": result.residual}
            for role in roles:
                ctx.linears[role].weight.data.copy_(weights[role])
                masks[role] = results[role].mask
        return masks
