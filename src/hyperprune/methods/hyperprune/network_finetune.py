"""HyperPrune end to end (issue 27, route B): the shared network's gradient from the KL divergence
between the dense and the pruned model, every mask drawn from the network.

Straight-through: the model runs with the hard masks (each group's argmax pattern) and the
gradient flows through the relaxed mask softmax(logits/τ)·S. Because the forward pass is the same
whichever layers are "live", the network's gradient is a sum over layers,

    ∂L/∂θ = Σ_layers Σ_groups ⟨∂L/∂M_g, ∂soft_g/∂θ⟩,   ∂L/∂M = ∂L/∂W_eff ⊙ V,

so one forward and backward pass of the model gives ∂L/∂W_eff for every layer (the masked
weights are leaves), and the network is then back-propagated layer by layer in chunks of groups:
memory stays at one chunk's activations however large the model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from hyperprune.numerics.masked_training import logit_kl
from hyperprune.methods.hyperprune.network import HyperNetwork
from hyperprune.numerics.end_to_end import substituted
from hyperprune.numerics.masked_training import EarlyStopping, window_order

_CHUNK_GROUPS = 1 << 18  # groups through the network at a time


@dataclass
class NetworkLayer:
    """What the network reads to mask one linear layer of the whole model."""

    name: str  # the weight's parameter name in the model
    block: int
    component: int
    features: torch.Tensor  # [groups, F], as the layer-wise pass last computed them (any float dtype)
    values: torch.Tensor  # [d_out, d_in] float32: what the mask multiplies (the dense W)


def _chunks(count: int, size: int = _CHUNK_GROUPS):
    for first in range(0, count, size):
        yield slice(first, min(first + size, count))


def _bias(network: HyperNetwork, layer: NetworkLayer) -> torch.Tensor:
    device = network.first.weight.device
    return network.context_bias(torch.tensor(layer.block, device=device), torch.tensor(layer.component, device=device))


@torch.no_grad()
def hard_keeps(network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's keep-mask: every group's argmax pattern (exactly n:m)."""
    keeps = {}
    for layer in layers:
        bias = _bias(network, layer)
        index = torch.cat([network(layer.features[part].float(), bias).argmax(dim=1)
                           for part in _chunks(layer.features.shape[0])])
        keeps[layer.name] = patterns[index].bool().reshape(layer.values.shape)
    return keeps


def kl_and_weight_gradients(model: nn.Module, layers: list[NetworkLayer], keeps: dict[str, torch.Tensor],
                            ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """KL(dense ‖ masked) on ``ids`` [windows, seqlen], summed over windows (one window at a time),
    and its gradient with respect to each masked weight W_eff = keep ⊙ V."""
    dtype = next(model.parameters()).dtype
    dense = {layer.name: layer.values.to(dtype) for layer in layers}
    masked = {layer.name: (layer.values * keeps[layer.name]).to(dtype).requires_grad_(True) for layer in layers}
    total = 0.0
    for window in range(ids.shape[0]):
        batch = ids[window : window + 1]
        with torch.no_grad(), substituted(model, dense):
            teacher = model(input_ids=batch, use_cache=False).logits
        with substituted(model, masked):
            loss = logit_kl(model(input_ids=batch, use_cache=False).logits, teacher)
            loss.backward()
        total += float(loss.detach())
    return total, {name: weight.grad for name, weight in masked.items()}


def accumulate_network_gradient(network: HyperNetwork, layers: list[NetworkLayer],
                                weight_grads: dict[str, torch.Tensor], patterns: torch.Tensor, tau: float,
                                group_fraction: float = 1.0, generator: torch.Generator | None = None) -> None:
    """Add the straight-through ∂L/∂θ to the network's ``.grad``, given ∂L/∂W_eff per layer.
    ``group_fraction`` < 1: an unbiased estimate from that share of each layer's groups, drawn
    with ``generator`` (the network's backward is then that much cheaper)."""
    m = patterns.shape[1]
    for layer in layers:
        mask_grad = (weight_grads[layer.name].float() * layer.values).reshape(-1, m)  # ∂L/∂M, per group
        features = layer.features
        if group_fraction < 1.0:
            count = max(1, round(features.shape[0] * group_fraction))
            chosen = torch.randperm(features.shape[0], generator=generator)[:count]
            features, mask_grad = features[chosen], mask_grad[chosen] * (features.shape[0] / count)
        for part in _chunks(features.shape[0]):
            bias = _bias(network, layer)  # inside: each chunk's graph is freed by its backward
            soft = torch.softmax(network(features[part].float(), bias) / tau, dim=1) @ patterns
            (soft * mask_grad[part]).sum().backward()


def end_to_end_step(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor,
                    ids: torch.Tensor, tau: float, optimizer: torch.optim.Optimizer, group_fraction: float = 1.0,
                    generator: torch.Generator | None = None, keeps: dict[str, torch.Tensor] | None = None) -> float:
    """One optimizer step of the network on the KL of the windows ``ids``; returns their mean KL
    at the masks the step started from (``keeps``: those masks, if already computed)."""
    keeps = hard_keeps(network, layers, patterns) if keeps is None else keeps
    model.requires_grad_(False)
    loss, weight_grads = kl_and_weight_gradients(model, layers, keeps, ids)
    optimizer.zero_grad(set_to_none=True)
    accumulate_network_gradient(network, layers, {k: g / ids.shape[0] for k, g in weight_grads.items()}, patterns, tau,
                                group_fraction, generator)
    optimizer.step()
    return loss / ids.shape[0]


@torch.no_grad()
def masked_kl(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor,
              ids: torch.Tensor, keeps: dict[str, torch.Tensor] | None = None) -> float:
    """Mean KL(dense ‖ masked) over the windows of ``ids`` at the network's hard masks (``keeps``,
    if already computed)."""
    keeps = hard_keeps(network, layers, patterns) if keeps is None else keeps
    dtype = next(model.parameters()).dtype
    dense = {layer.name: layer.values.to(dtype) for layer in layers}
    masked = {layer.name: (layer.values * keeps[layer.name]).to(dtype) for layer in layers}
    total = 0.0
    for window in range(ids.shape[0]):
        batch = ids[window : window + 1]
        with substituted(model, dense):
            teacher = model(input_ids=batch, use_cache=False).logits
        with substituted(model, masked):
            total += float(logit_kl(model(input_ids=batch, use_cache=False).logits, teacher))
    return total / ids.shape[0]


class _NetworkSnapshots:
    """What :class:`EarlyStopping` keeps of the network: copies of its state."""

    def __init__(self, network: HyperNetwork) -> None:
        self.network = network

    def snapshot(self) -> dict[str, torch.Tensor]:
        return copy.deepcopy(self.network.state_dict())

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self.network.load_state_dict(state)


@dataclass
class EndToEndRun:
    steps: int  # steps taken (early stopping may end before the budget)
    best_step: int  # 0: the layer-wise network was best on the held-out windows
    seconds: float
    train_kl: list[float] = field(default_factory=list)  # per step, at the masks the step started from
    holdout_kl: list[tuple[int, float]] = field(default_factory=list)  # (step, mean held-out KL) of every check


def train_network_end_to_end(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer],
                             patterns: torch.Tensor, train_ids: torch.Tensor, holdout_ids: torch.Tensor, steps: int,
                             lr: float, tau: float, batch_size: int, eval_every: int, patience: int, seed: int,
                             group_fraction: float = 1.0, progress: bool = True) -> EndToEndRun:
    """Adam on the network and its embeddings for at most ``steps`` steps of ``batch_size`` windows;
    the held-out KL is checked every ``eval_every`` steps and the best network is kept (the
    starting one counts, so the held-out KL never gets worse)."""
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    batches = window_order(train_ids.shape[0], steps, batch_size, generator)
    # The hard masks cost one pass of every group through the network: once per step, shared by
    # the step that follows and the held-out check that precedes it.
    keeps = hard_keeps(network, layers, patterns)
    stopping = EarlyStopping(_NetworkSnapshots(network), patience,
                             masked_kl(model, network, layers, patterns, holdout_ids, keeps))
    run = EndToEndRun(0, 0, 0.0)
    start = time.perf_counter()
    bar = tqdm(batches, desc="HyperPrune end to end", unit="step", disable=not progress)
    for step, batch in enumerate(bar, start=1):
        run.train_kl.append(end_to_end_step(model, network, layers, patterns, train_ids[batch], tau, optimizer,
                                            group_fraction, generator, keeps))
        run.steps = step
        bar.set_postfix(kl=f"{run.train_kl[-1]:.4f}", best=f"{stopping.best:.4f}")
        keeps = hard_keeps(network, layers, patterns)
        if step % eval_every == 0 or step == steps:
            if stopping.check(step, masked_kl(model, network, layers, patterns, holdout_ids, keeps)):
                break
    stopping.keep_best()
    run.best_step, run.holdout_kl, run.seconds = stopping.best_step, stopping.history, time.perf_counter() - start
    return run
