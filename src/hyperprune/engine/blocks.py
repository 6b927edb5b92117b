"""Where decoder blocks come from during the layer loop.

``ModelBlocks`` serves the blocks of a model already in memory. ``StreamedBlocks`` serves a
skeleton whose weights stay on the meta device: each block is read from the safetensors
shards when its turn comes and freed after, so resident memory follows one block, not the
model's depth. The embedding is materialized only while the first block's inputs are captured.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

import torch
from torch import nn

from hyperprune.engine.memory import trim_freed_memory
from hyperprune.errors import HyperpruneError
from hyperprune.models.architectures import BlockLayout, decoder_blocks
from hyperprune.models.shard_reader import ShardReader


class BlockStore(Protocol):
    def num_blocks(self) -> int: ...

    def load(self, index: int) -> nn.Module: ...

    def release(self, index: int, block: nn.Module) -> None: ...

    def embedding(self): ...  # context manager: embedding materialized inside

    def block_state(self, index: int, block: nn.Module) -> dict[str, torch.Tensor]: ...

    def restore(self, index: int, tensors: dict[str, torch.Tensor]) -> None: ...


def _prefixed_state(block: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu() for k, v in block.state_dict().items()}


class ModelBlocks:
    """Blocks of a model held in memory."""

    def __init__(self, model: nn.Module, layout: BlockLayout) -> None:
        self.model, self.layout = model, layout

    def num_blocks(self) -> int:
        return len(decoder_blocks(self.model, self.layout))

    def load(self, index: int) -> nn.Module:
        return decoder_blocks(self.model, self.layout)[index]

    def release(self, index: int, block: nn.Module) -> None:
        block.to("cpu")

    @contextmanager
    def embedding(self) -> Iterator[None]:
        yield

    def block_state(self, index: int, block: nn.Module) -> dict[str, torch.Tensor]:
        return _prefixed_state(block, f"{self.layout.layers}.{index}")

    def restore(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        """Put a checkpointed (already pruned) block back, when resuming."""
        prefix = f"{self.layout.layers}.{index}."
        block = self.load(index)
        block.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items()})


def materialize(module: nn.Module, prefix: str, reader: ShardReader, dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Give a meta-device module real CPU tensors from the checkpoint; return source dtypes."""
    expected = set(module.state_dict().keys())
    tensors = reader.read([f"{prefix}.{k}" for k in expected if f"{prefix}.{k}" in reader.weight_map])
    local = {name[len(prefix) + 1 :]: t for name, t in tensors.items()}
    missing = expected - set(local)
    if missing:
        raise HyperpruneError(f"checkpoint is missing {prefix}.{sorted(missing)[0]} (and {len(missing) - 1} more); is it complete?")
    # Assign tensors one by one (no to_empty): the block is never allocated twice.
    for name, tensor in local.items():
        owner, _, leaf = name.rpartition(".")
        target = module.get_submodule(owner) if owner else module
        if leaf in target._parameters:
            target._parameters[leaf] = nn.Parameter(tensor.to(dtype), requires_grad=False)
        else:
            target._buffers[leaf] = tensor.to(dtype)
    return {name: t.dtype for name, t in local.items()}


def free(module: nn.Module) -> None:
    """Drop a module's weights back to the meta device."""
    module.to("meta")


class StreamedBlocks:
    """Blocks materialized one at a time from the shards of a skeleton model."""

    def __init__(self, skeleton: nn.Module, layout: BlockLayout, reader: ShardReader, dtype: torch.dtype) -> None:
        self.model, self.layout, self.reader, self.dtype = skeleton, layout, reader, dtype
        self.source_dtypes: dict[int, dict[str, torch.dtype]] = {}

    def num_blocks(self) -> int:
        return len(decoder_blocks(self.model, self.layout))

    def load(self, index: int) -> nn.Module:
        block = decoder_blocks(self.model, self.layout)[index]
        self.source_dtypes[index] = materialize(block, f"{self.layout.layers}.{index}", self.reader, self.dtype)
        return block

    def release(self, index: int, block: nn.Module) -> None:
        free(block)
        trim_freed_memory()

    def block_state(self, index: int, block: nn.Module) -> dict[str, torch.Tensor]:
        """Pruned tensors, cast back to the checkpoint's own dtypes."""
        prefix = f"{self.layout.layers}.{index}"
        dtypes = self.source_dtypes[index]
        return {f"{prefix}.{k}": v.detach().cpu().to(dtypes[k]) for k, v in block.state_dict().items()}

    def restore(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        """Nothing to do: a streamed block lives in its checkpoint shard, not in memory."""

    @contextmanager
    def embedding(self) -> Iterator[None]:
        """Inside: what runs before the first block (embeddings, learned positions) is real."""
        inner_path = self.layout.layers.rsplit(".", 1)[0]
        inner = self.model.get_submodule(inner_path)
        blocks = decoder_blocks(self.model, self.layout)
        paths = [f"{inner_path}.{name}" for name, child in inner.named_children()
                 if child is not blocks and any(True for _ in child.parameters())]
        if self.layout.embed not in paths:
            paths.append(self.layout.embed)
        for path in paths:
            materialize(self.model.get_submodule(path), path, self.reader, self.dtype)
        try:
            yield
        finally:
            for path in paths:
                free(self.model.get_submodule(path))
