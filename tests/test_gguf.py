"""GGUF inputs beyond the built-in model: a tiny LLaMA written as GGUF here, in several
quantization types, loads through transformers, prunes, verifies, reloads and evaluates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model
from hyperprune.cli import main
from hyperprune.models import load_model
from hyperprune.models.loading import resolve_model

gguf = pytest.importorskip("gguf")

# transformers maps llama GGUF tensors back to these names.
TENSOR_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _embedded_reader():
    source = resolve_model("smollm2-135m")
    return gguf.GGUFReader(str(Path(source.path) / source.gguf_file))


def _rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (the halves of each head interleaved); transformers undoes it on load."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(model, path: Path, qtype) -> None:
    """Write ``model`` (a transformers LLaMA) as a llama GGUF, with the embedded model's tokenizer."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    for key, field in _embedded_reader().fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"],
               "output.weight": state["lm_head.weight"]}
    for i in range(config.num_hidden_layers):
        for hf, short in TENSOR_NAMES.items():
            weight = state[f"model.layers.{i}.{hf}.weight"]
            if short == "attn_q":
                weight = _rope_permute(weight, config.num_attention_heads)
            elif short == "attn_k":
                weight = _rope_permute(weight, config.num_key_value_heads)
            tensors[f"blk.{i}.{short}.weight"] = weight
    for name, weight in tensors.items():
        kind = qtype if weight.ndim == 2 else gguf.GGMLQuantizationType.F32  # norms stay F32, as llama.cpp keeps them
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, weight.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(weight.astype(np.float32), kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def source_model():
    return tiny_model("llama", vocab_size=49152, num_hidden_layers=2, tie_word_embeddings=False)


@pytest.mark.parametrize("qtype, tolerance", [("F32", 1e-5), ("Q4_0", 0.3)])
def test_a_written_gguf_loads_with_its_own_tokenizer_and_the_source_weights(tmp_path, source_model, qtype, tolerance):
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_llama_gguf(source_model, path, getattr(gguf.GGMLQuantizationType, qtype))
    loaded = load_model(str(path))
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    assert ids.shape[1] > 5  # the GGUF's BPE tokenizer, not a byte fallback
    with torch.no_grad():
        reference = source_model(ids).logits
        logits = loaded.model(ids).logits
    error = float((logits - reference).norm() / reference.norm())
    # A wrong tensor mapping or a q/k row order left permuted gives errors of order 1.
    assert error < tolerance, f"{qtype}: relative logit error {error:.2e}"


def test_a_quantized_gguf_prunes_verifies_reloads_and_evaluates(tmp_path, source_model, calib_file):
    path = tmp_path / "tiny-q8.gguf"
    write_llama_gguf(source_model, path, gguf.GGMLQuantizationType.Q8_0)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(path), "--method", "sparsegpt", "--calib", str(calib_file), "--nsamples", "4",
                 "--seqlen", "32", "--output", str(out), "--quiet"]) == 0
    assert main(["verify", str(out)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("To be or not to be, that is the question.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(reloaded(ids).logits).all()
    assert float((reloaded.model.layers[0].mlp.down_proj.weight == 0).float().mean()) == pytest.approx(0.5)
    result = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out), "--eval", str(calib_file), "--eval-windows", "2", "--seqlen", "32", "--quiet",
                 "--json", str(result)]) == 0
    report = json.loads(result.read_text())
    ppl = report["ppl"]
    assert math.isfinite(ppl) and ppl > 1
