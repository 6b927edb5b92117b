"""Methods whose masks come from one pass over the whole dense model before the layer loop
(Pruner-Zero's gradients, MaskLLM's and ProxSparse's end-to-end training). ``prepare`` computes
every mask; the layer loop then applies them block by block, so the engine still measures each
layer's and block's error and checkpoints each block as for any other method. The masks not yet
applied are the method's checkpointed state (bit-packed), so ``--resume`` after a finished block
skips the whole-model pass; a run killed during the pass itself starts it again."""

from __future__ import annotations

import torch

from hyperprune.errors import HyperpruneError
from hyperprune.masks import pack_mask, unpack_mask
from hyperprune.methods.base import BlockContext, PruningMethod, WholeModelPass


def packed_masks_state(masks: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Keep-masks as checkpoint tensors: each bit-packed, with its shape."""
    state = {}
    for name, keep in masks.items():
        state[f"{prefix}{name}|packed"] = pack_mask(keep)
        state[f"{prefix}{name}|shape"] = torch.tensor(list(keep.shape))
    return state


def masks_from_state(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The inverse of :func:`packed_masks_state` (keys outside ``prefix`` are ignored)."""
    names = {key[len(prefix):].rsplit("|", 1)[0] for key in state if key.startswith(prefix)}
    return {name: unpack_mask(state[f"{prefix}{name}|packed"], tuple(state[f"{prefix}{name}|shape"].tolist()))
            for name in names}


class WholeModelMasks(PruningMethod):
    needs_whole_model = True

    def __init__(self, config, preset=None) -> None:
        super().__init__(config, preset)
        self.masks: dict[str, torch.Tensor] = {}
        self.prepared = False
        self.whole_model_info: dict = {}  # what the whole-model pass reports (in block 0's record)

    def prepare(self, whole_model: WholeModelPass) -> None:
        self.masks = self.compute_masks(whole_model)
        self.prepared = True

    def state_dict(self) -> dict[str, torch.Tensor]:
        return packed_masks_state(self.masks)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.masks = masks_from_state(state)
        self.prepared = True

    def compute_masks(self, run: WholeModelPass) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prune_block(self, ctx: BlockContext) -> dict[str, torch.Tensor]:
        if not self.prepared:
            raise HyperpruneError(f"method '{self.name}' ran without its whole-model pass; call prepare() first")
        if ctx.index == 0 and self.whole_model_info:
            ctx.block_info["whole_model_pass"] = self.whole_model_info
        masks = {}
        for role, linear in ctx.linears.items():
            keep = self.masks.pop(ctx.names[role])
            masks[role] = keep.to(linear.weight.device)
            linear.weight.data.mul_(masks[role].to(linear.weight.dtype))
        return masks
