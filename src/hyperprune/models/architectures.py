"""Where the prunable linear layers of each supported architecture live.

This mapping is the one place that knows module names. To support a new model
family with a LLaMA-style decoder block, add its ``model_type`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hyperprune.errors import HyperpruneError

# The seven prunable components of a decoder block, by role.
COMPONENTS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class BlockLayout:
    """Module paths of a LLaMA-style causal LM, relative to the ``*ForCausalLM`` object."""

    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"
    components: dict[str, str] = field(
        default_factory=lambda: {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
        }
    )
    # Components fed the very same input tensor: one statistics accumulator serves them all.
    input_groups: tuple[tuple[str, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


LLAMA_LAYOUT = BlockLayout()

ARCHITECTURES: dict[str, BlockLayout] = {
    "llama": LLAMA_LAYOUT,
    "mistral": LLAMA_LAYOUT,
    "qwen2": LLAMA_LAYOUT,
    "qwen3": LLAMA_LAYOUT,
    # Same module names; they differ in norms, attention windows and rotary tables, which the
    # engine replays per block (each block gets its own recorded arguments).
    "gemma": LLAMA_LAYOUT,
    "gemma2": LLAMA_LAYOUT,
    "gemma3_text": LLAMA_LAYOUT,
    "olmo2": LLAMA_LAYOUT,
    "granite": LLAMA_LAYOUT,
}


def layout_for(model_type: str) -> BlockLayout:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise HyperpruneError(
            f"architecture '{model_type}' is not supported; supported model types: {supported} "
            "(LLaMA-style decoder blocks)"
        ) from None


def decoder_blocks(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
    return model.get_submodule(layout.layers)


def block_linears(block: nn.Module, layout: BlockLayout) -> dict[str, nn.Linear]:
    """The block's prunable linear layers, keyed by component role, in COMPONENTS order."""
    linears = {}
    for role in COMPONENTS:
        module = block.get_submodule(layout.components[role])
        if not isinstance(module, nn.Linear):
            raise HyperpruneError(f"component '{role}' ({layout.components[role]}) is {type(module).__name__}, not Linear")
        linears[role] = module
    return linears


def prunable_weight_names(model: nn.Module, layout: BlockLayout) -> list[str]:
    """State-dict names of every prunable weight, block by block."""
    names = []
    for index in range(len(decoder_blocks(model, layout))):
        for role in COMPONENTS:
            names.append(f"{layout.layers}.{index}.{layout.components[role]}.weight")
    return names


def context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 0)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
