"""hyperprune apply-masks: a run's masks on another copy of the weights."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from conftest import tiny_model
from hyperprune.cli import main
from hyperprune.models import load_model


def _pruned(tmp_path, tiny_model_dir, calib_file):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "wanda", "--calib", str(calib_file), "--nsamples", "4",
                 "--seqlen", "32", "--no-stream", "--output", str(out), "--quiet"]) == 0
    return out


def test_apply_masks_onto_a_fine_tuned_copy_gives_the_same_zeros(tmp_path, tiny_model_dir, calib_file, tokenizer):
    pruned = _pruned(tmp_path, tiny_model_dir, calib_file)
    copy_dir = tmp_path / "finetuned"
    finetuned = tiny_model("llama")
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(0.01)  # no zero left where the original had none: the zeros must come from the masks
    finetuned.save_pretrained(copy_dir)
    tokenizer.save_pretrained(copy_dir)
    out = tmp_path / "masked"
    assert main(["apply-masks", "--model", str(copy_dir), "--masks", str(pruned / "masks.safetensors"), "--output", str(out)]) == 0
    assert main(["verify", str(out)]) == 0
    reference, masked = load_model(str(pruned)).model.state_dict(), load_model(str(out)).model.state_dict()
    with safe_open(str(pruned / "masks.safetensors"), framework="pt") as f:
        names = [k for k in f.keys()]
    for name in names:
        assert torch.equal(reference[name] == 0, masked[name] == 0), name
    report = json.loads((out / "report.json").read_text())
    assert report["pattern"] == "2:4" and report["nm_valid"] and report["masks_from"]["method"] == "wanda"


def test_apply_masks_refuses_another_model_size(tmp_path, tiny_model_dir, calib_file, tokenizer, capsys):
    pruned = _pruned(tmp_path, tiny_model_dir, calib_file)
    other = tmp_path / "wider"
    tiny_model("llama", hidden_size=128).save_pretrained(other)
    tokenizer.save_pretrained(other)
    capsys.readouterr()
    out = tmp_path / "masked"
    assert main(["apply-masks", "--model", str(other), "--masks", str(pruned / "masks.safetensors"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "another model size" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_apply_masks_refuses_a_model_with_other_blocks(tmp_path, tiny_model_dir, calib_file, tokenizer, capsys):
    pruned = _pruned(tmp_path, tiny_model_dir, calib_file)
    for layers, expected in ((2, "has no weight"), (4, "cover 21 of the model's 28")):
        other = tmp_path / f"layers{layers}"
        tiny_model("llama", num_hidden_layers=layers).save_pretrained(other)
        tokenizer.save_pretrained(other)
        capsys.readouterr()
        assert main(["apply-masks", "--model", str(other), "--masks", str(pruned / "masks.safetensors"),
                     "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1
