"""The contract between the layer-wise engine and a pruning method, and the registry.

A method says which input statistics it needs (``statistics``) and what it does with
one block (``prune_block``). The engine does everything else: capturing inputs,
hooks, moving blocks between devices, propagating activations, and measuring.
A new method is one module with one ``@register_method`` class.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from hyperprune.config import PruneConfig, SparsityTarget
from hyperprune.engine.statistics import InputStatistics, StatisticsKind
from hyperprune.errors import HyperpruneError


@dataclass
class BlockContext:
    """What a method sees of the block it prunes."""

    index: int
    num_blocks: int
    block: nn.Module
    linears: dict[str, nn.Linear]  # role -> module, on the compute device
    statistics: dict[str, InputStatistics]  # role -> its input statistics (empty if NONE)
    target: SparsityTarget
    inputs: torch.Tensor  # [nsamples, seqlen, hidden] block inputs (may live on the CPU)
    dense_outputs: torch.Tensor  # [nsamples, seqlen, hidden] outputs of the unpruned block
    forward: Any  # forward(hidden_states) -> outputs, with the captured kwargs bound
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)  # per-layer notes the method wants in the report
    kwargs: dict[str, Any] = field(default_factory=dict)  # what ``forward`` binds (masks, positions)
    block_info: dict[str, Any] = field(default_factory=dict)  # block-level notes for the report
    names: dict[str, str] = field(default_factory=dict)  # role -> the weight's state-dict name


class PruningMethod(ABC):
    """Base class. Subclasses set ``name``, ``statistics`` and override ``prune_linear``
    (one matrix at a time) or ``prune_block`` (the whole block at once)."""

    name: ClassVar[str]
    statistics: ClassVar[StatisticsKind] = StatisticsKind.NONE
    supports_unstructured: ClassVar[bool] = True
    # A method that needs a pass over the whole dense model first (``prepare``) cannot stream.
    needs_whole_model: ClassVar[bool] = False

    def __init__(self, config: PruneConfig) -> None:
        self.config = config

    @property
    def updates_weights(self) -> bool:
        """Whether the method changes kept weights (then ``--target dense`` changes the weights it aims at)."""
        return False

    def prepare(self, model: nn.Module, layout, calib_ids: torch.Tensor, device: torch.device, progress: bool) -> None:
        """Called once with the dense model before the layer loop, for ``needs_whole_model``
        methods; not on a --resume that has finished blocks (their state is checkpointed)."""

    def reorder_block(self, linears: dict[str, nn.Linear], statistics: dict[str, InputStatistics],
                      probe: Any) -> dict[str, Any]:
        """Rewrite the block into an equivalent one before it is pruned (RIA permutes the channels
        one linear produces and another consumes). Called after the statistics are gathered and
        before the dense weights are copied; ``probe()`` gives the block's relative output change
        on one calibration window, to check that a rewrite is exact. Returns notes for the report."""
        return {}

    def prune_block(self, ctx: BlockContext) -> dict[str, torch.Tensor]:
        """Prune the block's linears in place; return their keep-masks by role."""
        masks = {}
        for role, linear in ctx.linears.items():
            mask = self.prune_linear(linear, ctx.statistics.get(role), ctx.target, f"block {ctx.index} {role}")
            linear.weight.data.mul_(mask.to(linear.weight.dtype))
            masks[role] = mask
        return masks

    def prune_linear(
        self, linear: nn.Linear, stats: InputStatistics | None, target: SparsityTarget, where: str
    ) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State carried from block to block (checkpointed for --resume). None by default."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"method '{self.name}' keeps no state, got {sorted(state)}")


METHODS: dict[str, type[PruningMethod]] = {}


def register_method(name: str):
    """Class decorator: make a method available under ``name`` to the API and CLI."""

    def decorate(cls: type[PruningMethod]) -> type[PruningMethod]:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[PruningMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise HyperpruneError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}") from None
