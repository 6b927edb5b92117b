"""Where the prunable linear layers of a model live.

A table of known families is the fast path (and gives the paper's seven role names); any other
decoder-only model is discovered (:func:`discover_layout`): the repeated blocks are the longest
``nn.ModuleList`` of identical layers holding ``nn.Linear`` modules, every ``nn.Linear`` of a
block is prunable (embeddings, the LM head and norms are not Linear modules of the blocks), known
module names map to roles (fused projections such as Phi-3's ``qkv_proj`` keep one role, ``qkv``,
and are pruned as one matrix along their input dimension) and any other Linear takes its own
module path as its role. Which Linears share an input is found by the engine on a real forward of
the first block (``input_groups`` is None here).
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
    # None: found by the engine with hooks on the first block's forward.
    input_groups: tuple[tuple[str, ...], ...] | None = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


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
    """The known layout of ``model_type`` (see :func:`layout_of` for any model)."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise HyperpruneError(
            f"architecture '{model_type}' has no known layout (known: {supported}); load the model and use layout_of(model)"
        ) from None


# Module names -> roles. "dense" is the attention output in GPT-NeoX-style blocks (handled by path).
KNOWN_ROLES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "qkv_proj": "qkv", "gate_up_proj": "gate_up", "query_key_value": "qkv", "out_proj": "o",
    "dense_h_to_4h": "up", "dense_4h_to_h": "down", "fc1": "up", "fc2": "down",
}


# Encoder-only families: transformers can wrap some as a "causal LM", but they are not one.
ENCODER_ONLY = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta",
                "camembert", "modernbert", "mpnet", "ernie", "xlm-roberta-xl", "data2vec-text"}


def check_decoder_config(config) -> None:
    """Refuse, from the config alone, what cannot be pruned block by block here."""
    kind = getattr(config, "model_type", "?")
    if kind in ENCODER_ONLY:
        raise HyperpruneError(f"'{kind}' is an encoder-only model; hyperprune prunes decoder-only causal LMs")
    if getattr(config, "is_encoder_decoder", False):
        raise HyperpruneError(f"'{kind}' is an encoder-decoder model; hyperprune prunes decoder-only causal LMs")
    if getattr(config, "vision_config", None) is not None:
        raise HyperpruneError(f"'{kind}' is a vision-language model; prune its language model on its own "
                              "(a checkpoint of the text tower) instead")
    experts = max(int(getattr(config, name, 0) or 0) for name in ("num_local_experts", "num_experts", "n_routed_experts"))
    if experts > 1:
        raise HyperpruneError(f"'{kind}' is a mixture-of-experts model ({experts} experts); its experts would need "
                              "statistics from the tokens routed to each, which hyperprune does not gather: not supported")


def layout_of(model: nn.Module) -> BlockLayout:
    """The layout of a loaded model: the known table's, else discovered from its modules."""
    config = model.config
    check_decoder_config(config)
    if config.model_type in ARCHITECTURES:
        return ARCHITECTURES[config.model_type]
    return discover_layout(model)


def _path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    for name, module in model.named_modules():
        if module is target:
            return name
    return None


def _block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest nn.ModuleList of identical layers: the decoder blocks."""
    candidates = [(len(module), name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1]
    if not candidates:
        raise HyperpruneError(f"found no repeated decoder blocks in {type(model).__name__} (an nn.ModuleList of "
                              "identical layers); it cannot be pruned block by block")
    _, name, module = max(candidates, key=lambda c: c[0])
    if not any(isinstance(m, nn.Linear) for m in module[0].modules()):
        kinds = sorted({type(m).__name__ for m in module[0].modules() if "linear" in type(m).__name__.lower()
                        or "conv" in type(m).__name__.lower()})
        found = f" (found {', '.join(kinds)})" if kinds else ""
        raise HyperpruneError(f"the blocks of {type(model).__name__} ({name}) hold no nn.Linear layers{found}; "
                              "only nn.Linear projections can be pruned")
    return name, module


def discover_layout(model: nn.Module) -> BlockLayout:
    """Find the blocks, the embedding, the final norm and every block's Linear modules."""
    layers, blocks = _block_list(model)
    block = blocks[0]
    if any(("expert" in type(m).__name__.lower() or "moe" in type(m).__name__.lower()) for m in block.modules()):
        raise HyperpruneError(f"the blocks of {type(model).__name__} hold mixture-of-experts layers; not supported")
    components: dict[str, str] = {}
    for path, module in block.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        leaf = path.rsplit(".", 1)[-1]
        role = "o" if leaf == "dense" and ("attn" in path or "attention" in path) else KNOWN_ROLES.get(leaf)
        if role is None or role in components:
            role = path.replace(".", "_")
        components[role] = path
    embed = _path_of(model, model.get_input_embeddings())
    if embed is None:
        raise HyperpruneError(f"found no input embedding in {type(model).__name__}; it cannot be pruned block by block")
    inner = model.get_submodule(layers.rsplit(".", 1)[0]) if "." in layers else model
    norms = [name for name, child in inner.named_children() if "norm" in type(child).__name__.lower()]
    prefix = layers.rsplit(".", 1)[0] + "." if "." in layers else ""
    final_norm = prefix + norms[-1] if norms else ""
    return BlockLayout(layers=layers, embed=embed, final_norm=final_norm, rotary="", components=components, input_groups=None)


def decoder_blocks(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
    return model.get_submodule(layout.layers)


def block_linears(block: nn.Module, layout: BlockLayout) -> dict[str, nn.Linear]:
    """The block's prunable linear layers, keyed by component role, in the layout's order."""
    linears = {}
    for role in layout.components:
        module = block.get_submodule(layout.components[role])
        if not isinstance(module, nn.Linear):
            raise HyperpruneError(f"component '{role}' ({layout.components[role]}) is {type(module).__name__}, not Linear")
        linears[role] = module
    return linears


def prunable_weight_names(model: nn.Module, layout: BlockLayout) -> list[str]:
    """State-dict names of every prunable weight, block by block."""
    names = []
    for index in range(len(decoder_blocks(model, layout))):
        for role in layout.components:
            names.append(f"{layout.layers}.{index}.{layout.components[role]}.weight")
    return names


def context_length(config) -> int:
    return int(getattr(config, "max_position_embeddings", 0) or 0)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
