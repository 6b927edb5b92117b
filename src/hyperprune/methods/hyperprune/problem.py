"""Per-layer data of HyperPrune's mask problem: what the losses and the features read.

A layer's problem is to choose a keep-mask M minimizing ‖(W − M ⊙ V)X‖², i.e. eᵀHe per
row with e = base + V ⊙ (1 − M), base = W − V. At first V = W (the paper's frozen
weights, base = 0). In a refit-aware round V holds the refit weights on the kept set and
W elsewhere, so switching a group's pattern is priced at the weights that will follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hyperprune.config import ADMMOptions, HessianOptions, SparsityTarget
from hyperprune.numerics.statistics import InputStatistics
from hyperprune.masks import nm_mask_from_scores
from hyperprune.methods.hyperprune import objectives as obj
from hyperprune.methods.scoring import wanda_scores
from hyperprune.methods.sparsegpt import InverseHessianFactor, inverse_hessian_factor, sparsegpt_prune
from hyperprune.models.architectures import COMPONENTS
from hyperprune.numerics.admm_solver import ADMMFactor, admm_factor, admm_prune

_FEATURE_ROWS_BYTES = 1 << 28  # rows of pattern-delta temporaries computed at a time
# Layers with more weights than this (7B-sized) keep the mask-dependent features in bfloat16 and
# compute the per-pattern costs for each step's rows instead of holding them: memory, not math.
_COMPACT_ABOVE = 1 << 24


@dataclass
class InputTerms:
    """What depends only on a layer's inputs: computed once per group of layers sharing an
    input (q/k/v, gate/up) rather than once per layer."""

    hessian: torch.Tensor  # H = 2XXᵀ/n, dead inputs pinned to 1 as SparseGPT does
    hessian_diag: torch.Tensor
    hinv_diag: torch.Tensor  # SparseGPT's [H⁻¹]_jj (Cholesky form) in w²/[H⁻¹]²_jj
    hessian_blocks: torch.Tensor  # [d_in/m, m, m]
    column_norms: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    factor: InverseHessianFactor | None  # SparseGPT's, for the prior; dropped once the problems are built
    admm: ADMMFactor | None = None  # ADMM's, for an admm prior; dropped with ``factor``


def input_terms(stats: InputStatistics, hessian_options: HessianOptions, m: int, where: str,
                admm_options: ADMMOptions | None = None) -> InputTerms:
    """``admm_options``: also factor H as ADMM does (an admm prior)."""
    H = stats.hessian().float()  # a new tensor already: pinning dead inputs leaves the statistics alone
    # Before the pin, on the H the admm method itself reads, so that the prior is that method's mask.
    admm = None if admm_options is None else admm_factor(H, admm_options.damp, admm_options.rho)
    factor = inverse_hessian_factor(H, hessian_options, where)  # pins dead inputs in H, which would make it singular
    return InputTerms(H, torch.diag(H), torch.diag(factor.upper), obj.diagonal_blocks(H, m),
                      stats.column_norms.float(), stats.mean.float(), stats.variance.float(), factor, admm)


@dataclass
class LayerProblem:
    """One linear layer of the block: its weights and the statistics the losses use."""

    role: str
    component: int
    weight: torch.Tensor  # [d_out, d_in] the dense weight W
    values: torch.Tensor  # V, what the mask multiplies
    base: torch.Tensor | None  # W − V (None while V = W)
    terms: InputTerms
    dense_energy: torch.Tensor  # [d_out] diag(W H Wᵀ), the rows' dense output energy
    outlier_dense: torch.Tensor  # [d_out] Σ_j W_ij² E[x_j²]
    current_keep: torch.Tensor  # [d_out, d_in] bool: the mask the features are taken at
    prior_keep: torch.Tensor | None  # [d_out, d_in] bool
    prior_index: torch.Tensor | None  # [G] pattern index of the prior in each group
    patterns: torch.Tensor
    m: int
    costs: torch.Tensor | None = None  # [d_out, d_in/m, P] within-group cost of each pattern
    coupling: torch.Tensor | None = None  # [d_out, d_in] V ⊙ (e H) at current_keep
    delta: torch.Tensor | None = None  # [d_out, d_in/m, P] Δ loss per pattern at current_keep
    cached_features: torch.Tensor | None = None  # [d_out, d_in/m, F], when small enough to keep
    keep_error: torch.Tensor | None = None  # [d_out] eᵀHe at current_keep, from the last refresh
    prior_weight: torch.Tensor | None = None  # SparseGPT's OBS weights for the prior (kept for a refit's first guess)

    @property
    def hessian(self) -> torch.Tensor:
        return self.terms.hessian

    @property
    def groups_per_row(self) -> int:
        return self.weight.shape[1] // self.m

    def error(self, keep: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """e = base + V ⊙ (1 − keep) for (a subset of) rows; ``keep`` may be relaxed."""
        sel = slice(None) if rows is None else rows
        error = self.values[sel] * (1.0 - keep)
        return error if self.base is None else error + self.base[sel]

    @property
    def compact(self) -> bool:
        return self.weight.numel() > _COMPACT_ABOVE

    def costs_for(self, rows: torch.Tensor) -> torch.Tensor:
        """Within-group cost of every pattern, ``[len(rows), d_in/m, P]``."""
        if self.costs is not None:
            return self.costs[rows]
        return obj.pattern_costs(self.values[rows], self.terms.hessian_blocks, self.patterns)

    def refresh(self, keep: torch.Tensor, names: tuple[str, ...], cache_bytes: int, need_costs: bool) -> None:
        """Recompute what depends on the current mask (coupling, delta) and on V (costs)."""
        self.current_keep = keep
        H, blocks = self.terms.hessian, self.terms.hessian_blocks
        store = torch.bfloat16 if self.compact else torch.float32
        if need_costs and self.costs is None and not self.compact:
            self.costs = obj.pattern_costs(self.values, blocks, self.patterns)
        if "coupling" in names or "delta" in names:
            rows = self.weight.shape[0]
            chunk = max(1, _FEATURE_ROWS_BYTES // (self.weight.shape[1] * self.patterns.shape[0] * 4 * 3))
            coupling, delta, frozen = [], [], []
            for first in range(0, rows, chunk):
                sel = slice(first, first + chunk)
                error = self.error(keep[sel].float(), torch.arange(first, min(first + chunk, rows)))
                error_h = error @ H  # eH
                frozen.append((error * error_h).sum(dim=1))  # eᵀHe per row, free once eH is there
                if "coupling" in names:
                    coupling.append((self.values[sel] * error_h).to(store))
                if "delta" in names:
                    base = None if self.base is None else self.base[sel]
                    delta.append(obj.pattern_delta_losses(self.values[sel], H, blocks, keep[sel], self.patterns, base,
                                                          error_h).to(store))
            self.coupling = torch.cat(coupling) if coupling else None
            self.delta = torch.cat(delta) if delta else None
            self.keep_error = torch.cat(frozen)
        else:
            self.keep_error = None
        self.cached_features = None
        size = self.weight.numel() // self.m * obj.feature_width(names, int(self.patterns[0].sum()), self.m) * 4
        if size <= cache_bytes:
            self.cached_features = self.features(None, names).view(self.weight.shape[0], self.groups_per_row, -1)

    def rebase(self, refit: torch.Tensor, keep: torch.Tensor, elsewhere: torch.Tensor | None = None) -> None:
        """Price the next round at the refit weights: V = refit on the kept set, ``elsewhere`` (W
        by default) on the pruned set; the current mask becomes the prior. With V = refit(M) on
        M's kept set, the loss at M is exactly the refit's error, and at any other mask M′ it is
        the error of M′ ⊙ V, an upper bound on refit(M′)'s (a majorize-minimize step)."""
        self.values = torch.where(keep, refit.float(), self.weight if elsewhere is None else elsewhere)
        self.base = self.weight - self.values
        self.costs = None
        self.prior_keep = keep

    def features(self, rows: torch.Tensor | None, names: tuple[str, ...]) -> torch.Tensor:
        if self.cached_features is not None:
            chosen = self.cached_features if rows is None else self.cached_features[rows]
            return chosen.reshape(-1, chosen.shape[-1])
        sel = slice(None) if rows is None else rows
        t = self.terms
        coupling = None if self.coupling is None else self.coupling[sel].float()
        delta = None if self.delta is None else self.delta[sel].float()
        return obj.group_features(self.values[sel], coupling, t.column_norms, t.hessian_diag, t.hinv_diag, self.m,
                                  names, delta, t.hessian_blocks)

    def prior_logits(self, rows: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor | None:
        if self.prior_index is None:
            return None
        index = self.prior_index.view(-1, self.groups_per_row)
        if rows is not None:
            index = index[rows]
        return table[index.reshape(-1).long()]

    def relative_error(self, keep: torch.Tensor) -> float:
        """‖(W − W ⊙ keep)X‖²/‖WX‖² for a hard keep-mask, weights not updated."""
        return self.relative_error_of(lambda rows: self.weight[rows] * (~keep[rows]))

    def relative_error_of(self, error_rows) -> float:
        """Σ eᵀHe / ‖WX‖² for the error rows that ``error_rows(slice)`` gives. 7B-sized layers go
        a slice of rows at a time: a whole ΔW, ΔW·H and their product would be 3 layer-sized
        temporaries (0.5 GiB for LLaMA-2-7B's down) on top of the block's problems."""
        rows = self.weight.shape[0]
        chunk = rows if not self.compact else max(1, _FEATURE_ROWS_BYTES // (self.weight.shape[1] * 4))
        total = sum(obj.quadratic_error(error_rows(slice(first, first + chunk)), self.hessian)
                    for first in range(0, rows, chunk))
        return float(total / self.dense_energy.sum().clamp_min(1e-12))

    def refreshed_relative_error(self) -> float | None:
        """:meth:`relative_error` of ``current_keep`` from the last refresh (no W·H product), while
        V = W; None when the refresh computed no eH."""
        if self.keep_error is None or self.base is not None:
            return None
        return float(self.keep_error.sum() / self.dense_energy.sum().clamp_min(1e-12))


def pattern_index(keep: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Index into ``patterns`` of each group's keep-pattern (groups must be exactly n-hot)."""
    m = patterns.shape[1]
    powers = 2 ** torch.arange(m, device=keep.device)
    lookup = torch.full((2**m,), -1, dtype=torch.long, device=keep.device)
    lookup[(patterns.to(keep.device).long() * powers).sum(1)] = torch.arange(patterns.shape[0], device=keep.device)
    index = lookup[(keep.reshape(-1, m).long() * powers).sum(1)]
    if (index < 0).any():
        raise ValueError("prior mask is not exactly n:m")
    return index.to(torch.int16)  # C(16, 8) = 12870 patterns at most fit; 8x smaller than long


def build_problem(role: str, weight: torch.Tensor, stats: InputStatistics, terms: InputTerms,
                  target: SparsityTarget, prior: str, patterns: torch.Tensor, hessian_options: HessianOptions,
                  component: int | None = None, keep_prior_weight: bool = False,
                  values: str = "dense", dense_energy: torch.Tensor | None = None) -> LayerProblem:
    """Everything per layer that stays fixed while the hypernetwork trains (until a refresh).
    ``keep_prior_weight``: keep the prior's updated weights (a refit's first guess), not only its mask.
    ``values``: "dense", the mask multiplies W (the paper); "prior-update", it multiplies the
    prior's updated weights (ADMM's W + U everywhere; SparseGPT's OBS weights where it keeps).
    ``dense_energy``: diag(W H Wᵀ) if the caller has it (the engine's output energy: the
    denominator of every relative error); else one W·H product here."""
    pattern = target.pattern
    W = weight.detach().float()
    H = terms.hessian
    wanda_keep = nm_mask_from_scores(wanda_scores(W, terms.column_norms), pattern.n, pattern.m)
    prior_keep = prior_weight = None
    V = W
    if prior == "wanda":
        prior_keep = wanda_keep
    elif prior == "sparsegpt":
        obs = sparsegpt_prune(W, None, target, hessian_options, role, factor=terms.factor)
        prior_keep = obs.mask
        prior_weight = obs.weight if keep_prior_weight else None
        if values == "prior-update":
            V = torch.where(prior_keep, obs.weight.float(), W)  # OBS zeroes what it prunes: W there
    elif prior == "admm":
        admm = ADMMOptions()  # the admm method's defaults: the prior is that method's mask
        result = admm_prune(W, terms.admm, target, admm.iterations, admm.gradual_iterations, admm.rho, admm.schedule)
        prior_keep = result.mask
        prior_weight = result.weight if keep_prior_weight else None
        if values == "prior-update":
            V = result.values
    second_moment = terms.mean.pow(2) + terms.variance  # E[x_j²]
    return LayerProblem(
        role=role,
        component=COMPONENTS.index(role) if component is None else component,
        weight=W,
        values=V,
        base=None if V is W else W - V,
        terms=terms,
        dense_energy=((W @ H) * W).sum(dim=1) if dense_energy is None else dense_energy.to(W.device, torch.float32),
        outlier_dense=(W.pow(2) * second_moment).sum(dim=1),
        current_keep=prior_keep if prior_keep is not None else wanda_keep,
        prior_keep=prior_keep,
        prior_index=None if prior_keep is None else pattern_index(prior_keep, patterns),
        patterns=patterns,
        m=pattern.m,
        prior_weight=prior_weight,
    )
