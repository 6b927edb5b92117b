"""``hyperprune make-random-model``: a random-weight checkpoint with a real model's shapes.

Useful to check time and memory before downloading a model, and for offline benchmarks.
It is written block by block, so making it needs no more memory than pruning it, and the
first N blocks are identical whatever ``--layers`` is (each tensor has its own seed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from hyperprune.errors import HyperpruneError
from hyperprune.export.output_dir import atomic_output_dir
from hyperprune.export.shard_writer import shard_name, write_index, write_tensors
from hyperprune.models.architectures import LLAMA_LAYOUT, torch_dtype
from hyperprune.models.model_presets import PRESETS

def embedded_tokenizer():
    from transformers import AutoTokenizer

    from hyperprune.models.loading import resolve_model

    source = resolve_model("smollm2-135m")
    return AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)


def random_config(like: str, layers: int | None, vocab_size: int, tokenizer=None, **overrides):
    from transformers import LlamaConfig

    if like not in PRESETS:
        raise HyperpruneError(f"unknown --like '{like}'; choose one of: {', '.join(PRESETS)}")
    shape = dict(PRESETS[like])
    if layers is not None:
        if layers <= 0:
            raise HyperpruneError(f"--layers {layers} must be positive")
        shape["num_hidden_layers"] = layers
    special = {}
    if tokenizer is not None:
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=False, **shape, **special, **overrides)


def _random(shape: tuple[int, ...], seed: int, std: float, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * std).to(dtype)


def block_tensors(config, index: int, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random weights of decoder block ``index`` under their checkpoint names."""
    h, i = config.hidden_size, config.intermediate_size
    head_dim = h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    shapes = {"q": (h, h), "k": (kv, h), "v": (kv, h), "o": (h, h), "gate": (i, h), "up": (i, h), "down": (h, i)}
    prefix = f"{LLAMA_LAYOUT.layers}.{index}"
    tensors = {}
    for k, (role, shape) in enumerate(shapes.items()):
        name = f"{prefix}.{LLAMA_LAYOUT.components[role]}.weight"
        tensors[name] = _random(shape, seed * 1_000_003 + index * 16 + k, config.initializer_range, dtype)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        tensors[f"{prefix}.{norm}.weight"] = torch.ones(h, dtype=dtype)
    return tensors


def make_random_model(
    like: str,
    output: str | Path,
    dtype: str = "bfloat16",
    layers: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    tokenizer = embedded_tokenizer()
    config = random_config(like, layers, len(tokenizer), tokenizer, dtype=dtype)
    torch_type = torch_dtype(dtype)
    nblocks = config.num_hidden_layers
    total_shards = nblocks + 1
    with atomic_output_dir(output, overwrite) as staging:
        weight_map: dict[str, str] = {}
        total_size = 0
        for index in tqdm(range(nblocks), desc="Writing blocks", unit="block", disable=not progress):
            tensors = block_tensors(config, index, seed, torch_type)
            name = shard_name(index, total_shards)
            write_tensors(staging / name, tensors)
            weight_map.update(dict.fromkeys(tensors, name))
            total_size += sum(t.numel() * t.element_size() for t in tensors.values())
            del tensors
        rest = {
            "model.embed_tokens.weight": _random((config.vocab_size, config.hidden_size), seed * 1_000_003 - 1, config.initializer_range, torch_type),
            "model.norm.weight": torch.ones(config.hidden_size, dtype=torch_type),
            "lm_head.weight": _random((config.vocab_size, config.hidden_size), seed * 1_000_003 - 2, config.initializer_range, torch_type),
        }
        name = shard_name(nblocks, total_shards)
        write_tensors(staging / name, rest)
        weight_map.update(dict.fromkeys(rest, name))
        total_size += sum(t.numel() * t.element_size() for t in rest.values())
        write_index(staging, weight_map, total_size)
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(output)
