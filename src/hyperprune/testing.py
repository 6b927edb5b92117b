"""Tiny random models and a tokenizer built in-process (no downloads), shared by the test suite
and the benchmark scripts: neither imports the other; both import this."""

from __future__ import annotations

import hashlib

import torch

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)

TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "To be or not to be, that is the question. All that glitters is not gold. "
) * 20


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A random causal LM of ``model_type`` with TINY shapes, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**TINY, **overrides})
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences: 256-token vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TOKENIZER_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


# Model families beyond LLaMA, tiny: the families test and benchmarks/families.py use the same ones.
SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
# Sliding windows shorter than the windows below, so local and global layers see different masks.
FAMILIES = {
    "llama": {},
    "mistral": dict(sliding_window=8),
    "qwen2": {},
    "qwen3": dict(head_dim=16),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=8),
    "gemma3_text": dict(head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "olmo2": {},
    "granite": {},
}


def family_model(model_type: str):
    return tiny_model(model_type, **SPECIAL, **FAMILIES[model_type])


def ids(n=3, seqlen=24):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(0))


DISCOVERED = {
    "phi3": dict(pad_token_id=0),  # fused qkv_proj and gate_up_proj
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=0, eos_token_id=0),
    "gpt_neox": dict(pad_token_id=0, bos_token_id=0, eos_token_id=0),
}


def discovered_model(model_type: str):
    return tiny_model(model_type, **DISCOVERED[model_type])


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and bytes, in name order: equal exactly when every bit is."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
