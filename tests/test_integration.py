"""Integration on the embedded model (SmolLM2-135M, GGUF), with few samples so CI stays fast."""

import json

import pytest
import torch

from hyperprune.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    pytest.importorskip("gguf")
    out = tmp_path_factory.mktemp("smollm") / "pruned"
    code = main(["prune", "--model", "smollm2-135m", "--method", "wanda", "--pattern", "2:4", "--calib", "brown",
                 "--nsamples", "2", "--seqlen", "64", "--eval", "brown-test", "--eval-windows", "4",
                 "--output", str(out), "--quiet"])
    assert code == 0
    return out


def test_embedded_model_prunes_saves_and_reloads(embedded_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = embedded_run
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "smollm2-135m" and report["seqlen"] == 64
    assert report["nm_valid"] is True and report["global_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert len(report["blocks"]) == 30 and len(report["layers"]) == 30 * 7
    ev = report["eval"]
    # Dense SmolLM2 on held-out Brown prose is a real language model; 2:4 pruning hurts it.
    assert 5 < ev["ppl_dense"] < 200
    assert ev["ppl_pruned"] > ev["ppl_dense"]

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert not hasattr(model.config, "quantization_config")
    ids = tokenizer("The jury said the election was conducted well.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    assert main(["verify", str(out)]) == 0
