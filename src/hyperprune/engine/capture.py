"""Capture what the decoder blocks receive: the first block's hidden states for each
calibration sample, and every block's own call arguments.

Models such as Gemma-2 and Gemma-3 alternate sliding-window and global attention, with a
different mask and rotary table per layer type, so block i is replayed with block i's own
arguments. They are recorded without running any block: for the first sample every block's
``forward`` is replaced by a recorder that notes its arguments and hands the hidden state on
unchanged, so the model's own code computes every mask and position table it would pass; the
weights of the blocks are never touched (a streamed skeleton keeps them on the meta device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyperprune.models.architectures import BlockLayout, decoder_blocks


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the first block."""


@dataclass
class BlockInputs:
    hidden: torch.Tensor  # [nsamples, seqlen, hidden], on the offload device
    kwargs: dict[str, Any]  # the first block's attention mask, position ids / embeddings (every sample)
    block_kwargs: list[dict[str, Any]] | None = None  # each block's own, when recorded

    def for_block(self, index: int) -> dict[str, Any]:
        return self.block_kwargs[index] if self.block_kwargs else self.kwargs


def to_device_shared(value: Any, device: torch.device, memo: dict[int, Any]) -> Any:
    """``to_device``, moving a tensor shared by several blocks' arguments only once."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.to(device)
        return memo[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(to_device_shared(v, device, memo) for v in value)
    if isinstance(value, dict):
        return {k: to_device_shared(v, device, memo) for k, v in value.items()}
    return value


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def replay_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Block kwargs safe to replay sample after sample.

    The model's cache object must not travel with them: with transformers >= 5 a block
    called with ``past_key_values`` appends each sample's keys and values to it, so
    every later sample would silently attend to the earlier ones.
    """
    clean = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "cache", "cache_position")}
    # transformers 5.24 renamed a layer's cache argument to `cache`; earlier versions call it past_key_values.
    clean["cache" if "cache" in kwargs else "past_key_values"] = None
    clean["use_cache"] = False
    return clean


def activation_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, directory: Path | None, name: str) -> torch.Tensor:
    """A [nsamples, seqlen, hidden] buffer: in memory, or memory-mapped from a file in
    ``directory`` (the OS pages it in and out, so activations may exceed RAM)."""
    if directory is None:
        return torch.empty(shape, dtype=dtype, device=device)
    path = directory / f"{name}.bin"
    path.unlink(missing_ok=True)
    return torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=dtype).view(shape)


class _Unrecordable(Exception):
    """A block takes positional arguments beyond the hidden state: recording is not attempted."""


def _first_block_call(inner: nn.Module, first: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first block's hidden state and arguments for ``ids``; nothing past it runs."""
    store: dict[str, Any] = {}

    def hook(module, args, kwargs):
        store["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        store["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        inner(input_ids=ids, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    return store["hidden"], store["kwargs"]


def _every_block_call(inner: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The first block's hidden state and every block's arguments, no block run: each block's
    ``forward`` is briefly a recorder that hands the hidden state on unchanged."""
    recorded: list[dict[str, Any] | None] = [None] * len(blocks)
    store: dict[str, Any] = {}

    def recorder(index: int):
        def forward(*args, **kwargs):
            state = args[0] if args else kwargs.pop("hidden_states")
            kwargs.pop("hidden_states", None)
            if isinstance(state, tuple):  # what the previous recorder handed on
                state = state[0]
            if len(args) > 1:
                raise _Unrecordable
            if index == 0:
                store["hidden"] = state
            recorded[index] = dict(kwargs)
            if index == len(blocks) - 1:
                raise _Captured
            return (state,)  # a tuple: models that index the layer's output with [0] get the state

        return forward

    for index, block in enumerate(blocks):
        block.forward = recorder(index)  # an instance attribute shadows the class's forward
    try:
        inner(input_ids=ids, use_cache=False)
    except _Captured:
        pass
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
    if any(r is None for r in recorded):
        raise _Unrecordable
    return store["hidden"], recorded


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    layout: BlockLayout,
    input_ids: torch.Tensor,
    device: torch.device,
    offload_device: torch.device,
    activation_dir: Path | None = None,
) -> BlockInputs:
    """Run the embedding and mask/position preparation for each sample and record the first
    block's inputs, and (from the first sample) every block's arguments. Only what runs before
    the blocks (embeddings, position tables) visits ``device``."""
    blocks = decoder_blocks(model, layout)
    inner = model.get_submodule(layout.layers.rsplit(".", 1)[0])
    # Everything the model runs before its first block (embeddings, learned positions, rotary
    # tables) and nothing of the blocks.
    on_device = [child for child in inner.children() if child is not blocks]
    if all(model.get_submodule(layout.embed) is not child for child in on_device):
        on_device.append(model.get_submodule(layout.embed))
    for module in on_device:
        module.to(device)
    hidden = None
    recorded: list[dict[str, Any]] | None = None
    recorded_first: dict[str, Any] = {}  # block 0's arguments, when not every block's could be recorded
    try:
        for index in range(input_ids.shape[0]):
            ids = input_ids[index : index + 1].to(device)
            state = None
            if index == 0:
                try:
                    state, recorded = _every_block_call(inner, blocks, ids)
                except (_Unrecordable, TypeError, AttributeError, IndexError, ValueError):
                    recorded = None  # the model works on the hidden state between blocks: block 0's for all
            if state is None:
                state, first_kwargs = _first_block_call(inner, blocks[0], ids)
                recorded_first = recorded_first or first_kwargs
            if hidden is None:
                shape = (input_ids.shape[0], *state.shape[1:])
                hidden = activation_buffer(shape, state.dtype, offload_device, activation_dir, "inputs")
            hidden[index] = state[0].to(offload_device)
    finally:
        for module in on_device:
            module.to("cpu")
    memo: dict[int, Any] = {}
    if recorded is None:
        return BlockInputs(hidden, replay_kwargs(to_device_shared(recorded_first, offload_device, memo)))
    block_kwargs = [replay_kwargs(to_device_shared(r, offload_device, memo)) for r in recorded]
    return BlockInputs(hidden, block_kwargs[0], block_kwargs)
