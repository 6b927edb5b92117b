"""Capture what the first decoder block receives for each calibration sample."""

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
    kwargs: dict[str, Any]  # attention mask, position ids / embeddings: same for every sample


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


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    layout: BlockLayout,
    input_ids: torch.Tensor,
    device: torch.device,
    offload_device: torch.device,
    activation_dir: Path | None = None,
) -> BlockInputs:
    """Run the embedding and mask/position preparation for each sample and record the
    first block's inputs. Only the embedding and rotary modules visit ``device``."""
    first = decoder_blocks(model, layout)[0]
    store: dict[str, Any] = {}
    hidden = None

    def hook(module, args, kwargs):
        store["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        store["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    on_device = [model.get_submodule(layout.embed), model.get_submodule(layout.rotary)]
    for module in on_device:
        module.to(device)
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    kwargs: dict[str, Any] = {}
    try:
        for index in range(input_ids.shape[0]):
            try:
                model.get_submodule(layout.layers.rsplit(".", 1)[0])(
                    input_ids=input_ids[index : index + 1].to(device), use_cache=False
                )
            except _Captured:
                pass
            if hidden is None:
                shape = (input_ids.shape[0], *store["hidden"].shape[1:])
                hidden = activation_buffer(shape, store["hidden"].dtype, offload_device, activation_dir, "inputs")
                kwargs = replay_kwargs(to_device(store["kwargs"], offload_device))
            hidden[index] = store["hidden"][0].to(offload_device)
    finally:
        handle.remove()
        for module in on_device:
            module.to("cpu")
    return BlockInputs(hidden, kwargs)
