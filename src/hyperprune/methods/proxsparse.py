"""ProxSparse (Amazon, 2025), for small models: masks learned end to end, with the weights,
under a regularizer that pulls every group toward n:m; the mask is read off at the end.

The regularizer of a group u of m weights is e_{n+1}(|u|), the elementary symmetric polynomial
of degree n + 1 of their magnitudes (for 2:4, the sum of the products of every three): it is
zero exactly when at most n of them are non-zero, and small weights that compete with large
ones are pushed to zero first. After each Adam step on the LM loss (plus λ2‖W − W0‖²/‖W0‖²
per layer, which keeps the weights near the dense ones), a linearized proximal step shrinks
every magnitude by λ1(t)·lr·∂e_{n+1}/∂|u_i|, with u = W/mean|W0| (the layer's own units, so the
gradient is scale-free and λ1 compares with Adam's own step of about lr), and clips at zero, so a weight can become exactly zero and a group that is already n:m is left
alone. λ1 ramps linearly from 0 to ``lambda_sparse`` over the steps. The mask is the n largest
trained magnitudes of each group; it is applied to the original weights (masks only, as
MaskLLM), and the trained weights are discarded.
"""

from __future__ import annotations

import itertools

import torch

from hyperprune.numerics.end_to_end import check_mask_memory, train_end_to_end
from hyperprune.masks import nm_mask_from_scores
from hyperprune.config import ProxSparseOptions
from hyperprune.methods.base import WholeModelPass, register_method
from hyperprune.methods.whole_model import WholeModelMasks
from hyperprune.models.architectures import prunable_weight_names

_COPIES = 5  # trained weights, gradient, Adam's two moments, the dense weights


def competitor_index(m: int, n: int) -> torch.Tensor:
    """[m, C(m−1, n), n]: for each position i, every n-subset of the other positions."""
    return torch.tensor([list(itertools.combinations([j for j in range(m) if j != i], n)) for i in range(m)])


def nm_penalty_gradient(magnitudes: torch.Tensor, n: int, index: torch.Tensor) -> torch.Tensor:
    """∂e_{n+1}/∂|u_i| = e_n(|u| without i), per group (``magnitudes`` [groups, m])."""
    others = magnitudes[:, index]  # [groups, m, C(m-1, n), n]
    return others.prod(dim=-1).sum(dim=-1)


def nm_penalty(magnitudes: torch.Tensor, n: int) -> torch.Tensor:
    """e_{n+1}(|u|) per group: zero exactly when at most n magnitudes are non-zero."""
    m = magnitudes.shape[1]
    subsets = torch.tensor(list(itertools.combinations(range(m), n + 1)))
    return magnitudes[:, subsets].prod(dim=-1).sum(dim=-1)


@torch.no_grad()
def proximal_shrink(weight: torch.Tensor, n: int, m: int, step: float, unit: float, index: torch.Tensor) -> None:
    """In place: |w_i| ← max(0, |w_i| − step·∂e_{n+1}/∂|u_i|), u = w/unit, signs kept."""
    groups = weight.view(-1, m)
    magnitudes = groups.abs()
    shrink = step * nm_penalty_gradient(magnitudes / unit, n, index.to(weight.device))
    groups.copy_(torch.sign(groups) * (magnitudes - shrink).clamp_min(0.0))


@register_method("proxsparse", options=ProxSparseOptions,
                 summary="ProxSparse (end to end, small models): n:m regularizer with a proximal step, mask read off")
class ProxSparse(WholeModelMasks):
    supports_unstructured = False

    def compute_masks(self, run: WholeModelPass) -> dict[str, torch.Tensor]:
        model, layout, calib_ids, device, progress = run.model, run.layout, run.calib_ids, run.device, run.progress
        options, pattern = self.options, self.config.target.pattern
        n, m = pattern.n, pattern.m
        names = prunable_weight_names(model, layout)
        params = dict(model.named_parameters())
        check_mask_memory("proxsparse", sum(params[name].numel() for name in names), 1, 1, _COPIES,
                          options.max_memory_gib, "a trained float32 copy of every prunable weight")
        dense = {name: params[name].detach().float().to(device) for name in names}
        trained = {name: dense[name].clone().requires_grad_(True) for name in names}
        units = {name: float(dense[name].abs().mean().clamp_min(1e-12)) for name in names}
        energy = {name: float(dense[name].pow(2).mean().clamp_min(1e-12)) for name in names}
        index = competitor_index(m, n)
        last = max(1, options.steps - 1)

        def weights_for_step(step: int) -> dict[str, torch.Tensor]:
            return {name: trained[name].to(params[name].dtype) for name in names}

        def closeness() -> torch.Tensor:
            return options.lambda_close * sum((trained[k] - dense[k]).pow(2).mean() / energy[k] for k in names)

        def prox(step: int) -> None:
            strength = options.lambda_sparse * step / last * options.lr
            for name in names:
                proximal_shrink(trained[name].data, n, m, strength, units[name], index)

        report = train_end_to_end(model, list(trained.values()), weights_for_step, calib_ids, options.steps, options.lr,
                                  options.batch_size, self.config.seed, device, regularizer=closeness, after_step=prox,
                                  progress=progress, desc="ProxSparse")
        with torch.no_grad():
            beyond = sum(int((trained[k].view(-1, m) != 0).sum(dim=1).gt(n).sum()) for k in names)
            groups = sum(trained[k].numel() // m for k in names)
        self.whole_model_info = {"steps": report.steps, "tokens": report.tokens, "seconds": report.seconds,
                                 "first_loss": report.losses[0] if report.losses else None,
                                 "last_loss": report.losses[-1] if report.losses else None,
                                 "groups_beyond_nm_before_readout": beyond / max(1, groups)}
        return {name: nm_mask_from_scores(trained[name].detach().abs(), n, m).cpu() for name in names}
