"""HyperPrune (ICLR 2026): n:m masks chosen by one shared, context-aware hypernetwork,
trained block by block. This module is the orchestration; the math is in
``objectives`` and the network in ``network``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from hyperprune.config import HyperPruneOptions, PruneConfig, SparsityTarget
from hyperprune.engine.statistics import InputStatistics, StatisticsKind
from hyperprune.masks import nm_mask_from_scores, nm_patterns
from hyperprune.methods.base import BlockContext, PruningMethod, register_method
from hyperprune.methods.hyperprune import objectives as obj
from hyperprune.methods.hyperprune.network import HyperNetwork
from hyperprune.methods.scoring import wanda_scores
from hyperprune.methods.sparsegpt import inverse_hessian_cholesky, sparsegpt_prune
from hyperprune.models.architectures import COMPONENTS

_CHECKPOINT_GROUPS = 1 << 21  # above this many groups in a layer, recompute h_θ in backward
_EVAL_GROUPS = 1 << 18  # groups through h_θ at a time when no gradient is needed
_FEATURE_CACHE_BYTES = 1 << 30  # per layer; larger layers recompute their features each step


@dataclass
class LayerProblem:
    """One linear layer of the block: its frozen weight and the statistics the losses use."""

    role: str
    component: int
    weight: torch.Tensor  # [d_out, d_in]
    hessian: torch.Tensor  # H = 2XXᵀ/n
    dense_energy: torch.Tensor  # [d_out] diag(W H Wᵀ), the rows' dense output energy
    mean: torch.Tensor
    variance: torch.Tensor
    outlier_dense: torch.Tensor  # [d_out] Σ_j W_ij² E[x_j²]
    coupling: torch.Tensor  # [d_out, d_in] W ⊙ (ΔW̃ H) for the Wanda reference mask
    column_norms: torch.Tensor
    hessian_diag: torch.Tensor
    hinv_diag: torch.Tensor
    prior_keep: torch.Tensor | None  # [d_out, d_in] bool
    prior_index: torch.Tensor | None  # [G] pattern index of the prior in each group
    m: int
    cached_features: torch.Tensor | None = None  # [d_out, d_in/m, F], when small enough to keep

    @property
    def groups_per_row(self) -> int:
        return self.weight.shape[1] // self.m

    def cache_features(self, names: tuple[str, ...], budget_bytes: int) -> None:
        """Features are fixed while the weights are frozen: compute them once if they fit."""
        size = self.weight.numel() // self.m * self.m * len(names) * 4
        if size <= budget_bytes:
            self.cached_features = self.features(None, names).view(self.weight.shape[0], self.groups_per_row, -1)

    def features(self, rows: torch.Tensor | None, names: tuple[str, ...]) -> torch.Tensor:
        if self.cached_features is not None:
            chosen = self.cached_features if rows is None else self.cached_features[rows]
            return chosen.reshape(-1, chosen.shape[-1])
        sel = slice(None) if rows is None else rows
        return obj.group_features(self.weight[sel], self.coupling[sel], self.column_norms, self.hessian_diag,
                                  self.hinv_diag, self.m, names)

    def prior_logits(self, rows: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor | None:
        if self.prior_index is None:
            return None
        index = self.prior_index.view(-1, self.groups_per_row)
        if rows is not None:
            index = index[rows]
        return table[index.reshape(-1)]


def _pattern_index(keep: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Index into ``patterns`` of each group's keep-pattern (groups must be exactly n-hot)."""
    m = patterns.shape[1]
    powers = 2 ** torch.arange(m, device=keep.device)
    lookup = torch.full((2**m,), -1, dtype=torch.long, device=keep.device)
    lookup[(patterns.to(keep.device).long() * powers).sum(1)] = torch.arange(patterns.shape[0], device=keep.device)
    index = lookup[(keep.reshape(-1, m).long() * powers).sum(1)]
    if (index < 0).any():
        raise ValueError("prior mask is not exactly n:m")
    return index


@dataclass
class InputTerms:
    """What depends only on a layer's inputs: computed once per group of layers sharing an
    input (q/k/v, gate/up) rather than once per layer."""

    hessian: torch.Tensor  # H = 2XXᵀ/n, dead inputs pinned to 1 as SparseGPT does
    hessian_diag: torch.Tensor
    hinv_diag: torch.Tensor  # SparseGPT's [H⁻¹]_jj (Cholesky form) in w²/[H⁻¹]²_jj
    column_norms: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor


def input_terms(stats: InputStatistics, config: PruneConfig, where: str) -> InputTerms:
    H = stats.hessian().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0  # dead inputs would make H singular
    upper, _ = inverse_hessian_cholesky(H, config.sparsegpt.percdamp, config.sparsegpt.max_damp_retries, where)
    return InputTerms(H, torch.diag(H), torch.diag(upper), stats.column_norms.float(), stats.mean.float(),
                      stats.variance.float())


def build_problem(role: str, weight: torch.Tensor, stats: InputStatistics, terms: InputTerms,
                  target: SparsityTarget, prior: str, config: PruneConfig) -> LayerProblem:
    """Everything per layer that stays fixed while the hypernetwork trains."""
    pattern = target.pattern
    W = weight.detach().float()
    H = terms.hessian
    wanda_keep = nm_mask_from_scores(wanda_scores(W, terms.column_norms), pattern.n, pattern.m)
    delta = W * (~wanda_keep)
    prior_keep = None
    if prior == "wanda":
        prior_keep = wanda_keep
    elif prior == "sparsegpt":
        prior_keep = sparsegpt_prune(W, stats.hessian(), target, config.sparsegpt, role).mask
    second_moment = terms.mean.pow(2) + terms.variance  # E[x_j²]
    return LayerProblem(
        role=role,
        component=COMPONENTS.index(role),
        weight=W,
        hessian=H,
        dense_energy=((W @ H) * W).sum(dim=1),
        mean=terms.mean,
        variance=terms.variance,
        outlier_dense=(W.pow(2) * second_moment).sum(dim=1),
        coupling=W * (delta @ H),
        column_norms=terms.column_norms,
        hessian_diag=terms.hessian_diag,
        hinv_diag=terms.hinv_diag,
        prior_keep=prior_keep,
        prior_index=None,
        m=pattern.m,
    )


@register_method("hyperprune")
class HyperPrune(PruningMethod):
    """Learned n:m masks (HyperPrune); ``options.refit`` adds an OBS update of the kept weights."""

    statistics = StatisticsKind.HESSIAN
    supports_unstructured = False
    force_refit = False

    def __init__(self, config: PruneConfig) -> None:
        super().__init__(config)
        self.options: HyperPruneOptions = config.hyperprune
        if self.force_refit:
            self.options = self.options.model_copy(update={"refit": True})
        self.network: HyperNetwork | None = None
        self.shape: tuple[int, int, int] | None = None  # in_features, patterns, layers
        self.cache_features = torch.zeros(0)
        self.cache_layers = torch.zeros(0, dtype=torch.long)
        self.cache_components = torch.zeros(0, dtype=torch.long)
        self.cache_targets = torch.zeros(0)

    # ---------------------------------------------------------------- state
    def _build_network(self, in_features: int, num_patterns: int, num_layers: int) -> HyperNetwork:
        generator = torch.Generator().manual_seed(self.config.seed)
        self.shape = (in_features, num_patterns, num_layers)
        self.network = HyperNetwork(in_features, num_patterns, num_layers, self.options, generator)
        return self.network

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.network is None:
            return {}
        state = {f"network.{k}": v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        state.update({
            "shape": torch.tensor(self.shape),
            "cache.features": self.cache_features.cpu(),
            "cache.layers": self.cache_layers.cpu(),
            "cache.components": self.cache_components.cpu(),
            "cache.targets": self.cache_targets.cpu(),
        })
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        network = self._build_network(*[int(v) for v in state["shape"]])
        network.load_state_dict({k[len("network."):]: v for k, v in state.items() if k.startswith("network.")})
        self.cache_features = state["cache.features"]
        self.cache_layers = state["cache.layers"].long()
        self.cache_components = state["cache.components"].long()
        self.cache_targets = state["cache.targets"]

    # ---------------------------------------------------------------- block
    def prune_block(self, ctx: BlockContext) -> dict[str, torch.Tensor]:
        opts = self.options
        pattern = ctx.target.pattern
        device = ctx.device
        patterns = nm_patterns(pattern.n, pattern.m).to(device)
        prior_table = obj.prior_log_probs(patterns, patterns, opts.prior_beta)
        problems, shared_inputs = {}, {}
        for role, linear in ctx.linears.items():
            stats = ctx.statistics[role]
            if id(stats) not in shared_inputs:
                shared_inputs[id(stats)] = input_terms(stats, self.config, f"block {ctx.index} {role}")
            problem = build_problem(role, linear.weight, stats, shared_inputs[id(stats)], ctx.target, opts.prior,
                                    self.config)
            if problem.prior_keep is not None:
                problem.prior_index = _pattern_index(problem.prior_keep, patterns)
            problem.cache_features(opts.features, _FEATURE_CACHE_BYTES)
            problems[role] = problem
        in_features = pattern.m * len(opts.features)
        if self.network is None:
            self._build_network(in_features, patterns.shape[0], ctx.num_blocks)
        network = self.network.to(device)
        generator = torch.Generator(device=device).manual_seed(self.config.seed * 1_000_003 + ctx.index)

        timing = self._train(ctx, network, problems, patterns, prior_table, generator)

        gamma_final = obj.prior_weight(opts.steps, opts.steps, opts.prior_gamma, opts.prior_decay)
        masks = {}
        with torch.no_grad():
            for role, problem in problems.items():
                keep = self._final_mask(network, ctx.index, problem, patterns, prior_table, gamma_final)
                info = {"mask_error": _relative_error(problem, keep)}
                if problem.prior_keep is not None:
                    info["prior_error"] = _relative_error(problem, problem.prior_keep)
                    info["changed_vs_prior"] = float((keep != problem.prior_keep).view(-1, pattern.m).any(1).float().mean())
                linear = ctx.linears[role]
                if opts.refit:
                    refit = sparsegpt_prune(linear.weight.data, ctx.statistics[role].hessian(), ctx.target,
                                            self.config.sparsegpt, f"block {ctx.index} {role}", keep_mask=keep)
                    linear.weight.data.copy_(refit.weight)
                else:
                    linear.weight.data.mul_(keep.to(linear.weight.dtype))
                masks[role] = keep
                ctx.info[role] = info
            self._extend_continual_cache(network, ctx.index, problems, generator)
        ctx.block_info.update(timing)
        return masks

    def _context_bias(self, network: HyperNetwork, layer: int, component: int) -> torch.Tensor:
        device = network.first.weight.device
        return network.context_bias(torch.tensor(layer, device=device), torch.tensor(component, device=device))

    def _logits(self, network, layer, problem, rows, prior_table, gamma) -> torch.Tensor:
        logits = network(problem.features(rows, self.options.features), self._context_bias(network, layer, problem.component))
        prior = problem.prior_logits(rows, prior_table)
        return logits if prior is None or gamma == 0 else logits + gamma * prior

    def _train(self, ctx, network, problems, patterns, prior_table, generator) -> dict[str, float]:
        opts = self.options
        steps = opts.steps
        if steps == 0:
            return {"steps": 0}
        optimizer = torch.optim.AdamW([
            {"params": network.network_parameters(), "lr": opts.lr, "weight_decay": opts.weight_decay},
            {"params": network.embedding_parameters(), "lr": opts.embed_lr, "weight_decay": 0.0},
        ])
        decay = opts.tau_decay if opts.tau_decay is not None else obj.decay_to_reach(opts.tau0, opts.tau_final, 0.75 * steps)
        block_from = {"layer": steps, "block": 0, "two-stage": round(steps * (1 - opts.block_fraction))}[opts.objective]
        ctx.block.requires_grad_(False)
        names = {id(module): name for name, module in ctx.block.named_modules()}
        weight_names = {role: f"{names[id(lin)]}.weight" for role, lin in ctx.linears.items()}
        clock = {"hypernet_s": 0.0, "objective_s": 0.0, "backward_s": 0.0}
        terms: dict[str, float] = {}
        network.train()
        for step in range(steps):
            tau = obj.temperature(step, opts.tau0, opts.tau_final, decay)
            gamma = obj.prior_weight(step, steps, opts.prior_gamma, opts.prior_decay)
            on_block = step >= block_from
            step_terms = (self._block_step if on_block else self._layer_step)(
                ctx, network, problems, patterns, prior_table, tau, gamma, generator, weight_names, clock)
            loss = step_terms["reconstruction"]
            if opts.outlier:
                loss = loss - opts.lambda_outlier * step_terms["outlier"]
            if opts.continual and self.cache_features.numel():
                step_terms["continual"] = self._continual_term(network)
                loss = loss + opts.lambda_continual * step_terms["continual"]
            start = _now(ctx.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock["backward_s"] += _now(ctx.device) - start
            terms = {k: float(v.detach()) for k, v in step_terms.items()}
        network.eval()
        return {"steps": steps, "final_tau": tau, **{f"final_{k}": v for k, v in terms.items()}, **clock}

    def _layer_step(self, ctx, network, problems, patterns, prior_table, tau, gamma, generator, weight_names, clock):
        """Each linear's exact quadratic error with the relaxed mask, on a random subset of rows."""
        opts = self.options
        rec, out = [], []
        for problem in problems.values():
            d_out = problem.weight.shape[0]
            count = max(1, round(d_out * opts.row_fraction))
            rows = torch.randperm(d_out, generator=generator, device=ctx.device)[:count]
            start = _now(ctx.device)
            logits = self._logits(network, ctx.index, problem, rows, prior_table, gamma)
            keep = obj.relaxed_mask(logits, patterns, tau, opts.relaxation == "gumbel", opts.straight_through, generator)
            clock["hypernet_s"] += _now(ctx.device) - start
            start = _now(ctx.device)
            W = problem.weight[rows]
            keep = keep.reshape(W.shape)
            rec.append(obj.quadratic_error(W * (1 - keep), problem.hessian) / problem.dense_energy[rows].sum().clamp_min(1e-12))
            if opts.outlier:
                out.append(obj.outlier_energy(W * keep, problem.mean, problem.variance)
                           / problem.outlier_dense[rows].sum().clamp_min(1e-12))
            clock["objective_s"] += _now(ctx.device) - start
        terms = {"reconstruction": torch.stack(rec).mean()}
        if out:
            terms["outlier"] = torch.stack(out).mean()
        return terms

    def _block_step(self, ctx, network, problems, patterns, prior_table, tau, gamma, generator, weight_names, clock):
        """The paper's objective: the block's output with every relaxed mask applied at once."""
        opts = self.options
        start = _now(ctx.device)
        masked, out = {}, []
        for role, problem in problems.items():
            keep = self._full_relaxed_mask(network, ctx.index, problem, patterns, prior_table, tau, gamma, generator)
            masked[weight_names[role]] = problem.weight * keep
            if opts.outlier:
                out.append(obj.outlier_energy(masked[weight_names[role]], problem.mean, problem.variance)
                           / problem.outlier_dense.sum().clamp_min(1e-12))
        clock["hypernet_s"] += _now(ctx.device) - start
        start = _now(ctx.device)
        nsamples = ctx.inputs.shape[0]
        batch = torch.randperm(nsamples, generator=generator, device=ctx.device)[: opts.batch_size].tolist()
        pruned, dense, inputs = [], [], []
        dtype = next(iter(ctx.linears.values())).weight.dtype
        masked = {k: v.to(dtype) for k, v in masked.items()}
        for s in batch:
            x = ctx.inputs[s : s + 1].to(ctx.device)
            result = functional_call(ctx.block, masked, (x,), ctx.kwargs)
            pruned.append((result[0] if isinstance(result, tuple) else result).float())
            dense.append(ctx.dense_outputs[s : s + 1].to(ctx.device).float())
            inputs.append(x.float())
        terms = {"reconstruction": obj.block_reconstruction(torch.cat(pruned), torch.cat(dense), torch.cat(inputs))}
        if out:
            terms["outlier"] = torch.stack(out).mean()
        clock["objective_s"] += _now(ctx.device) - start
        return terms

    def _full_relaxed_mask(self, network, layer, problem, patterns, prior_table, tau, gamma, generator):
        opts = self.options

        def compute(*_params):
            logits = self._logits(network, layer, problem, None, prior_table, gamma)
            keep = obj.relaxed_mask(logits, patterns, tau, opts.relaxation == "gumbel", opts.straight_through, generator)
            return keep.reshape(problem.weight.shape)

        if problem.weight.numel() // problem.m > _CHECKPOINT_GROUPS:
            # Recompute h_θ in backward: activations of all groups at once would not fit.
            return checkpoint(compute, *network.parameters(), use_reentrant=False, preserve_rng_state=True)
        return compute()

    def _final_mask(self, network, layer, problem, patterns, prior_table, gamma) -> torch.Tensor:
        """The argmax pattern of every group: an exact n:m keep-mask."""
        d_out = problem.weight.shape[0]
        chunk = max(1, _EVAL_GROUPS // problem.groups_per_row)
        parts = []
        for first in range(0, d_out, chunk):
            rows = torch.arange(first, min(first + chunk, d_out), device=problem.weight.device)
            parts.append(obj.hard_mask(self._logits(network, layer, problem, rows, prior_table, gamma), patterns))
        return torch.cat(parts).reshape(problem.weight.shape)

    # ---------------------------------------------------------------- continual pruning
    def _continual_term(self, network: HyperNetwork) -> torch.Tensor:
        device = network.first.weight.device
        layers, components = self.cache_layers.to(device), self.cache_components.to(device)
        logits = network(self.cache_features.to(device), network.context_bias(layers, components))
        return obj.continual_penalty(logits, self.cache_targets.to(device))

    def _extend_continual_cache(self, network, layer, problems, generator) -> None:
        """Cache a few groups of each finished layer; then freeze h_θ′ by storing its logits."""
        count = self.options.continual_groups
        feats, layers, comps = [self.cache_features], [self.cache_layers], [self.cache_components]
        for problem in problems.values():
            device = problem.weight.device
            rows = torch.randint(problem.weight.shape[0], (count,), generator=generator, device=device)
            cols = torch.randint(problem.groups_per_row, (count,), generator=generator, device=device)
            groups = problem.features(rows, self.options.features).view(count, problem.groups_per_row, -1)
            feats.append(groups[torch.arange(count, device=device), cols].cpu())
            layers.append(torch.full((count,), layer, dtype=torch.long))
            comps.append(torch.full((count,), problem.component, dtype=torch.long))
        self.cache_features = torch.cat([f.reshape(-1, groups.shape[-1]) for f in feats])
        self.cache_layers = torch.cat(layers)
        self.cache_components = torch.cat(comps)
        device = network.first.weight.device
        self.cache_targets = network(
            self.cache_features.to(device),
            network.context_bias(self.cache_layers.to(device), self.cache_components.to(device)),
        ).detach().cpu()


@register_method("hyperprune+refit")
class HyperPruneRefit(HyperPrune):
    """HyperPrune's mask, then the kept weights refit by an OBS update (beyond the paper)."""

    force_refit = True


def _relative_error(problem: LayerProblem, keep: torch.Tensor) -> float:
    """‖ΔW X‖²/‖W X‖² of the layer for a hard keep-mask, weights not updated."""
    delta = problem.weight * (~keep)
    return float(obj.quadratic_error(delta, problem.hessian) / problem.dense_energy.sum().clamp_min(1e-12))


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
