"""The contract between the layer-wise engine and a pruning method, and the registry.

A method says which input statistics it needs (``statistics``) and what it does with
one block (``prune_block``). The engine does everything else: capturing inputs,
hooks, moving blocks between devices, propagating activations, and measuring.
A new method is one module with one ``@register_method`` class, which declares its options
class and flag prefix there; config fields, CLI flags and their help all come from that.
"""

from __future__ import annotations

import sys
from abc import ABC
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from hyperprune.config import Options, PruneConfig, SparsityTarget, first_validation_error
from hyperprune.numerics.statistics import InputStatistics, StatisticsKind
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
    # role -> diag(W H Wᵀ) of the dense layer (Σ‖(W X)_i‖², the Hessian's scale), from the calibration
    # forward; empty when the method gathers no Hessian
    output_energy: dict[str, torch.Tensor] = field(default_factory=dict)


def roles_by_input(ctx: BlockContext) -> list[list[str]]:
    """The block's roles grouped by the input they read (q/k/v, gate/up), in block order."""
    groups: dict[int, list[str]] = {}
    for role in ctx.linears:
        groups.setdefault(id(ctx.statistics.get(role)), []).append(role)
    return list(groups.values())


class PruningMethod(ABC):
    """Base class. Subclasses set ``statistics`` and override ``prune_linear`` (one matrix at a
    time) or ``prune_block`` (the whole block at once). What a method reads of the run is
    ``self.config`` (target, seed, the shared ``hessian`` options) and ``self.options``, its own
    options class, validated, with a preset's values applied."""

    name: ClassVar[str]
    statistics: ClassVar[StatisticsKind] = StatisticsKind.NONE
    supports_unstructured: ClassVar[bool] = True
    # A method that needs a pass over the whole dense model first (``prepare``) cannot stream.
    needs_whole_model: ClassVar[bool] = False
    # Declared at registration: the method's options class and the prefix of its CLI flags.
    options_class: ClassVar[type[Options] | None] = None
    flag_prefix: ClassVar[str | None] = None
    # Old CLI spellings of option flags, kept as aliases: field -> flags (a "--no-x" alias sets False).
    legacy_flags: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Whether the method runs SparseGPT's solver, and so reads ``config.hessian`` (--percdamp, --blocksize).
    uses_hessian: ClassVar[bool] = False
    # Whether the method can run an exact least-squares refit, and so reads ``config.refit`` (--refit-method).
    uses_refit: ClassVar[bool] = False

    def __init__(self, config: PruneConfig, preset: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.options = method_options(type(self), config, preset or {})

    @property
    def options_key(self) -> str:
        """Where ``config.options`` holds this method's options: the name of the class's registration
        (a preset shares its base method's)."""
        return type(self).name

    @property
    def updates_weights(self) -> bool:
        """Whether the method changes kept weights (then ``fit_target="dense"`` changes the weights it aims at)."""
        return False

    def prepare(self, whole_model: WholeModelPass) -> None:
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

    def finish(self) -> None:
        """Called once after the last block (also after a --resume): write what the method
        keeps beyond the pruned model (HyperPrune's --save-hypernet). Nothing by default."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """State carried from block to block (checkpointed for --resume). None by default."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"method '{self.name}' keeps no state, got {sorted(state)}")


@dataclass
class WholeModelPass:
    """What the engine hands a ``needs_whole_model`` method before the layer loop: the dense
    model and calibration windows, and ``one_shot_masks(name)``, the masks a one-shot method
    (sparsegpt, wanda, magnitude) gives a copy of the model under the same run settings."""

    model: nn.Module
    layout: Any
    calib_ids: torch.Tensor
    device: torch.device
    progress: bool
    one_shot_masks: Callable[[str], dict[str, torch.Tensor]]
    # layerwise(method, ids): ``method`` run block by block on a copy of the dense model over the
    # windows ``ids``, under the run's target and seed (HyperPrune's pass before its end-to-end phase).
    layerwise: Callable[[Any, torch.Tensor], Any] | None = None
    # Where the pass may keep state that survives a kill (inside the run's partial directory), and
    # what identifies the run there; None without --output.
    work_dir: Any = None
    fingerprint: dict[str, Any] | None = None


def method_options(cls: type[PruningMethod], config: PruneConfig, preset: Mapping[str, Any]) -> Options | None:
    """``cls``'s options: the defaults, then ``config.options[cls.name]``, then the preset's fixed values."""
    given = dict(config.options.get(cls.name, {}))
    if cls.options_class is None:
        if given:
            raise HyperpruneError(f"method '{cls.name}' takes no options; remove options['{cls.name}'] "
                                  f"({', '.join(sorted(given))})")
        return None
    try:
        return cls.options_class(**{**given, **preset})
    except ValueError as exc:
        raise HyperpruneError(f"invalid options['{cls.name}']: {first_validation_error(exc)}") from None


@dataclass(frozen=True)
class MethodEntry:
    """A registered name: a method class, or a preset of one (its options with some values fixed,
    and some defaults of its own that the user's options still override). Calling it with a config
    builds the method."""

    name: str
    cls: type[PruningMethod]
    preset: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_preset(self) -> bool:
        return self.name != self.cls.name

    def __call__(self, config: PruneConfig) -> PruningMethod:
        if self.defaults:
            given = config.options.get(self.cls.name, {})
            config = config.model_copy(update={"options": {**config.options, self.cls.name: {**self.defaults, **given}}})
        method = self.cls(config, self.preset)
        method.name = self.name
        return method

    def __getattr__(self, attribute: str) -> Any:
        """The class's declarations (``statistics``, ``supports_unstructured``, ...) read through."""
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self.cls, attribute)


METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, *, options: type[Options] | None = None, flag_prefix: str | None = None,
                    legacy_flags: dict[str, tuple[str, ...]] | None = None, summary: str | None = None):
    """Class decorator: make a method available under ``name`` to the API and the CLI. ``options``
    is its options class; each field becomes the flag ``--{flag_prefix}-{field}`` (default prefix:
    the name), with the field's default and description as its help."""

    def decorate(cls: type[PruningMethod]) -> type[PruningMethod]:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        if options is not None:
            cls.options_class = options
            cls.flag_prefix = flag_prefix or name
        if legacy_flags:
            cls.legacy_flags = dict(legacy_flags)
        METHODS[name] = MethodEntry(name, cls, {}, summary or _first_line(cls.__doc__ or sys.modules[cls.__module__].__doc__))
        return cls

    return decorate


def register_preset(name: str, base: str, summary: str, defaults: Mapping[str, Any] | None = None,
                    **fixed: Any) -> MethodEntry:
    """A variant of a registered method with some of its options fixed (``sparsegpt+lstsq``), and
    ``defaults`` of its own that a user's options override (``hyperprune+refit``'s row fraction)."""
    if name in METHODS:
        raise ValueError(f"method '{name}' is registered twice")
    cls = METHODS[base].cls
    if cls.options_class is None:
        raise ValueError(f"method '{base}' has no options to preset")
    cls.options_class(**(defaults or {}), **fixed)  # a bad preset fails at import, not at run time
    METHODS[name] = MethodEntry(name, cls, dict(fixed), summary, dict(defaults or {}))
    return METHODS[name]


def get_method(name: str) -> MethodEntry:
    try:
        return METHODS[name]
    except KeyError:
        raise HyperpruneError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}") from None


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ")
