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
from hyperprune.numerics.masked_training import EarlyStopping, activation_checkpointing, window_order

_CHUNK_GROUPS = 1 << 18  # groups through the network at a time


@dataclass
class NetworkLayer:
    """What the network reads to mask one linear layer of the whole model."""

    name: str  # the weight's parameter name in the model
    block: int
    component: int
    features: torch.Tensor  # [groups, F], as the layer-wise pass last computed them (any float dtype)
    values: torch.Tensor  # [d_out, d_in] float32: what the mask multiplies (the dense W)
    # The prior term the layer-wise pass added to the network's logits for its final masks,
    # γ_T·log p_prior (App. C): each group's prior pattern [groups] (uint8), and the table
    # γ_T·prior_log_probs [patterns, patterns] it indexes. Without it the phase would start from
    # masks the model never had.
    prior_index: torch.Tensor | None = None
    prior_table: torch.Tensor | None = None
    # The keep-mask the layer-wise pass applied. The network kept training on later blocks, so its
    # masks for earlier layers drift from these; the phase counts them as its step 0.
    applied: torch.Tensor | None = None
    # The dense weight, when ``values`` are not it (route A's prior-update values): the teacher's.
    dense: torch.Tensor | None = None

    @property
    def teacher_weight(self) -> torch.Tensor:
        return self.values if self.dense is None else self.dense


def _chunks(count: int, size: int = _CHUNK_GROUPS):
    for first in range(0, count, size):
        yield slice(first, min(first + size, count))


def _bias(network: HyperNetwork, layer: NetworkLayer) -> torch.Tensor:
    device = network.first.weight.device
    return network.context_bias(torch.tensor(layer.block, device=device), torch.tensor(layer.component, device=device))


def network_logits(network: HyperNetwork, layer: NetworkLayer, part: slice, bias: torch.Tensor) -> torch.Tensor:
    """The logits of the groups ``part`` of one layer: h_θ(features) + the prior term, if any."""
    logits = network(layer.features[part].float(), bias)
    if layer.prior_index is None:
        return logits
    return logits + layer.prior_table.to(logits.device)[layer.prior_index[part].long().to(logits.device)]


@torch.no_grad()
def hard_keeps(network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's keep-mask: every group's argmax pattern (exactly n:m)."""
    keeps = {}
    for layer in layers:
        bias = _bias(network, layer)
        index = torch.cat([network_logits(network, layer, part, bias).argmax(dim=1)
                           for part in _chunks(layer.features.shape[0])])
        keeps[layer.name] = patterns[index].bool().reshape(layer.values.shape)
    return keeps


def kl_and_weight_gradients(model: nn.Module, layers: list[NetworkLayer], keeps: dict[str, torch.Tensor],
                            ids: torch.Tensor, gradient_checkpointing: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    """KL(dense ‖ masked) on ``ids`` [windows, seqlen], summed over windows (one window at a time),
    and its gradient with respect to each masked weight W_eff = keep ⊙ V. ``gradient_checkpointing``:
    recompute each decoder block in the backward instead of keeping its activations."""
    dtype = next(model.parameters()).dtype
    dense = {layer.name: layer.teacher_weight.to(dtype) for layer in layers}
    masked = {layer.name: (layer.values * keeps[layer.name]).to(dtype).requires_grad_(True) for layer in layers}
    total = 0.0
    for window in range(ids.shape[0]):
        batch = ids[window : window + 1]
        with torch.no_grad(), substituted(model, dense):
            teacher = model(input_ids=batch, use_cache=False).logits
        with activation_checkpointing(model, gradient_checkpointing), substituted(model, masked):
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
        groups = layer
        if group_fraction < 1.0:
            count = max(1, round(layer.features.shape[0] * group_fraction))
            chosen = torch.randperm(layer.features.shape[0], generator=generator)[:count]
            groups = NetworkLayer(layer.name, layer.block, layer.component, layer.features[chosen], layer.values,
                                  None if layer.prior_index is None else layer.prior_index[chosen], layer.prior_table)
            # (only the network's logits are read: ``applied`` is left out)
            mask_grad = mask_grad[chosen] * (layer.features.shape[0] / count)
        for part in _chunks(groups.features.shape[0]):
            bias = _bias(network, layer)  # inside: each chunk's graph is freed by its backward
            soft = torch.softmax(network_logits(network, groups, part, bias) / tau, dim=1) @ patterns
            (soft * mask_grad[part]).sum().backward()


def end_to_end_step(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor,
                    ids: torch.Tensor, tau: float, optimizer: torch.optim.Optimizer, group_fraction: float = 1.0,
                    generator: torch.Generator | None = None, keeps: dict[str, torch.Tensor] | None = None,
                    gradient_checkpointing: bool = False) -> float:
    """One optimizer step of the network on the KL of the windows ``ids``; returns their mean KL
    at the masks the step started from (``keeps``: those masks, if already computed)."""
    keeps = hard_keeps(network, layers, patterns) if keeps is None else keeps
    model.requires_grad_(False)
    loss, weight_grads = kl_and_weight_gradients(model, layers, keeps, ids, gradient_checkpointing)
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
    dense = {layer.name: layer.teacher_weight.to(dtype) for layer in layers}
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


@dataclass
class FineTuningSettings:
    steps: int
    lr: float
    tau: float
    batch_size: int
    eval_every: int
    patience: int
    seed: int
    group_fraction: float = 1.0
    gradient_checkpointing: bool = False


class NetworkFineTuning:
    """Adam on the network and its embeddings for at most ``settings.steps`` steps of
    ``batch_size`` windows; the held-out KL is checked every ``eval_every`` steps and the best
    network is kept (the starting one counts, so the held-out KL never gets worse).

    Everything a step depends on (the network, Adam's moments, the random generator, early
    stopping's record and best network, the step) is in :meth:`state_dict`, so a run stopped
    after any step and resumed from that state takes the same steps to the same bits."""

    def __init__(self, model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer], patterns: torch.Tensor,
                 train_ids: torch.Tensor, holdout_ids: torch.Tensor, settings: FineTuningSettings) -> None:
        self.model, self.network, self.layers, self.patterns = model, network, layers, patterns
        self.train_ids, self.holdout_ids, self.settings = train_ids, holdout_ids, settings
        self.optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.batches = window_order(train_ids.shape[0], settings.steps, settings.batch_size, self.generator)
        # The hard masks cost one pass of every group through the network: once per step, shared by
        # the step that follows and the held-out check that precedes it.
        self.keeps = hard_keeps(network, layers, patterns)
        # Step 0 is what the layer-wise pass applied, where every layer says so; else the network's masks.
        self.start_masks = ({layer.name: layer.applied for layer in layers}
                            if all(layer.applied is not None for layer in layers) else self.keeps)
        self.stopping = EarlyStopping(_NetworkSnapshots(network), settings.patience,
                                      masked_kl(model, network, layers, patterns, holdout_ids, self.start_masks))
        self.run = EndToEndRun(0, 0, 0.0)
        self.stopped = False

    def train(self, after_step=None, progress: bool = True) -> EndToEndRun:
        """Steps from where the state stands to the budget or early stopping; ``after_step(step)``
        after each (where a caller checkpoints). Ends with the best network in place."""
        settings = self.settings
        start = time.perf_counter() - self.run.seconds
        bar = tqdm(total=settings.steps, initial=self.run.steps, desc="HyperPrune end to end", unit="step",
                   disable=not progress)
        while not self.stopped and self.run.steps < settings.steps:
            step = self.run.steps + 1
            batch = self.batches[step - 1]
            self.run.train_kl.append(end_to_end_step(self.model, self.network, self.layers, self.patterns,
                                                     self.train_ids[batch], settings.tau, self.optimizer,
                                                     settings.group_fraction, self.generator, self.keeps,
                                                     settings.gradient_checkpointing))
            self.run.steps = step
            self.keeps = hard_keeps(self.network, self.layers, self.patterns)
            if step % settings.eval_every == 0 or step == settings.steps:
                self.stopped = self.stopping.check(step, masked_kl(self.model, self.network, self.layers, self.patterns,
                                                                   self.holdout_ids, self.keeps))
            self.run.seconds = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(kl=f"{self.run.train_kl[-1]:.4f}", best=f"{self.stopping.best:.4f}")
            if after_step is not None:
                after_step(step)
        bar.close()
        self.stopping.keep_best()
        self.run.best_step, self.run.holdout_kl = self.stopping.best_step, list(self.stopping.history)
        return self.run

    def final_masks(self) -> dict[str, torch.Tensor]:
        """The masks of the best held-out check: step 0's (see ``start_masks``), or the network's."""
        return self.start_masks if self.stopping.best_step == 0 else hard_keeps(self.network, self.layers, self.patterns)

    def changed_groups(self, final: dict[str, torch.Tensor] | None = None) -> float:
        """Share of groups whose pattern differs in :meth:`final_masks` (``final``, if already
        computed: each costs a pass of every group through the network) from step 0's masks."""
        now = self.final_masks() if final is None else final
        m = self.patterns.shape[1]
        changed = sum(int((now[k] != self.start_masks[k]).view(-1, m).any(1).sum()) for k in now)
        return changed / max(1, sum(k.numel() // m for k in now.values()))

    def state_dict(self) -> dict:
        return {"network": copy.deepcopy(self.network.state_dict()), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": self.generator.get_state(), "steps": self.run.steps, "seconds": self.run.seconds,
                "train_kl": list(self.run.train_kl), "stopped": self.stopped, "stopping": self.stopping.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.run.steps, self.run.seconds, self.run.train_kl = state["steps"], state["seconds"], list(state["train_kl"])
        self.stopped = state["stopped"]
        self.stopping.load_state_dict(state["stopping"])
        self.keeps = hard_keeps(self.network, self.layers, self.patterns)


def train_network_end_to_end(model: nn.Module, network: HyperNetwork, layers: list[NetworkLayer],
                             patterns: torch.Tensor, train_ids: torch.Tensor, holdout_ids: torch.Tensor, steps: int,
                             lr: float, tau: float, batch_size: int, eval_every: int, patience: int, seed: int,
                             group_fraction: float = 1.0, progress: bool = True) -> EndToEndRun:
    """:class:`NetworkFineTuning` from the start to the end, without checkpoints."""
    settings = FineTuningSettings(steps, lr, tau, batch_size, eval_every, patience, seed, group_fraction)
    return NetworkFineTuning(model, network, layers, patterns, train_ids, holdout_ids, settings).train(progress=progress)
