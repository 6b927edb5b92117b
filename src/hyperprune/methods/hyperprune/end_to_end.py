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

from dataclasses import dataclass

import torch
from torch import nn

from hyperprune.engine.masked_distillation import logit_kl
from hyperprune.methods.hyperprune.network import HyperNetwork
from hyperprune.numerics.end_to_end import substituted

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
                                weight_grads: dict[str, torch.Tensor], patterns: torch.Tensor, tau: float) -> None:
    """Add the straight-through ∂L/∂θ to the network's ``.grad``, given ∂L/∂W_eff per layer."""
    m = patterns.shape[1]
    for layer in layers:
        mask_grad = (weight_grads[layer.name].float() * layer.values).reshape(-1, m)  # ∂L/∂M, per group
        for part in _chunks(layer.features.shape[0]):
            bias = _bias(network, layer)  # inside: each chunk's graph is freed by its backward
            soft = torch.softmax(network(layer.features[part].float(), bias) / tau, dim=1) @ patterns
            (soft * mask_grad[part]).sum().backward()


def network_gradient(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor,
                     ids: torch.Tensor, tau: float) -> tuple[float, torch.Tensor]:
    """(KL summed over the windows of ``ids``, the flat gradient of that KL with respect to the
    network's parameters and embeddings) at the network's current hard masks."""
    keeps = hard_keeps(network, layers, patterns)
    model.requires_grad_(False)
    loss, weight_grads = kl_and_weight_gradients(model, layers, keeps, ids)
    network.zero_grad(set_to_none=False)
    accumulate_network_gradient(network, layers, weight_grads, patterns, tau)
    flat = torch.cat([p.grad.reshape(-1) for p in network.parameters() if p.grad is not None])
    return loss, flat


def end_to_end_step(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor,
                    ids: torch.Tensor, tau: float, optimizer: torch.optim.Optimizer) -> float:
    """One optimizer step of the network on the KL of the windows ``ids``; returns their mean KL
    at the masks the step started from."""
    keeps = hard_keeps(network, layers, patterns)
    model.requires_grad_(False)
    loss, weight_grads = kl_and_weight_gradients(model, layers, keeps, ids)
    optimizer.zero_grad(set_to_none=True)
    accumulate_network_gradient(network, layers, {k: g / ids.shape[0] for k, g in weight_grads.items()}, patterns, tau)
    optimizer.step()
    return loss / ids.shape[0]


@torch.no_grad()
def masked_kl(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor,
              ids: torch.Tensor) -> float:
    """Mean KL(dense ‖ masked) over the windows of ``ids`` at the network's hard masks."""
    keeps = hard_keeps(network, layers, patterns)
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
