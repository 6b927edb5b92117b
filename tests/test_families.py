"""Model families beyond LLaMA: each block replayed with its own arguments, pass-through exact,
and a Wanda and SparseGPT 2:4 prune that verifies and reloads with transformers."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from hyperprune.cli import main
from hyperprune.config import PruneConfig
from hyperprune.engine import run_layerwise
from hyperprune.engine.capture import capture_block_inputs
from hyperprune.methods import get_method
from hyperprune.models import layout_for

CPU = torch.device("cpu")
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


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_pass_through_is_exact_for_every_family(model_type):
    model = family_model(model_type)
    with torch.no_grad():
        expected = model.model(input_ids=ids(), use_cache=False).last_hidden_state
    result = run_layerwise(model, layout_for(model_type), get_method("dense")(PruneConfig(method="dense")), ids(), CPU,
                           progress=False)
    with torch.no_grad():
        got = model.model.norm(result.final_hidden)
    assert float((got - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_alternating_attention_needs_each_blocks_own_arguments(model_type):
    """Guard for the guard: replaying every block with the first block's arguments changes the
    result of these families, so the pass-through test above can fail."""
    model = family_model(model_type)
    layout = layout_for(model_type)
    captured = capture_block_inputs(model, layout, ids(), CPU, CPU)
    assert captured.block_kwargs is not None and len(captured.block_kwargs) == 3
    with torch.no_grad():
        own = first = captured.hidden[1:2]
        for index, block in enumerate(model.model.layers):
            out_own = block(own, **captured.for_block(index))
            out_first = block(first, **captured.kwargs)
            own = out_own[0] if isinstance(out_own, tuple) else out_own
            first = out_first[0] if isinstance(out_first, tuple) else out_first
    assert not torch.allclose(own, first, atol=1e-4)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_prune_verify_and_reload_every_family(tmp_path, tokenizer, calib_file, model_type):
    from transformers import AutoModelForCausalLM

    directory = tmp_path / model_type
    family_model(model_type).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    for method in ("wanda", "sparsegpt"):
        out = tmp_path / f"{model_type}-{method}"
        assert main(["prune", "--model", str(directory), "--method", method, "--calib", str(calib_file), "--nsamples", "4",
                     "--seqlen", "32", "--output", str(out), "--quiet"]) == 0
        assert main(["verify", str(out)]) == 0
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        weight = reloaded.model.layers[1].mlp.down_proj.weight
        assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6)
