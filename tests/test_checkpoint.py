import json
from importlib import metadata

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hyperprune.api import prune
from hyperprune.config import PruneConfig, SparsityTarget
from hyperprune.engine import run_layerwise
from hyperprune.export import MASKS_FILE, load_masks, save_masks
from hyperprune.workflows.verify import verify_checkpoint
from hyperprune.methods import get_method
from hyperprune.models import layout_for


@pytest.mark.parametrize("stream", [False, True])
def test_save_load_gives_the_same_logits(tmp_path, tiny_model_dir, calib_file, stream):
    """The saved checkpoint (streamed or held in memory) reloads to the very model the
    engine pruned in memory."""
    from transformers import AutoModelForCausalLM

    from hyperprune.api import calibration_ids, load_for

    config = PruneConfig(model=str(tiny_model_dir), method="sparsegpt", calib=str(calib_file), nsamples=4, seqlen=32,
                         stream=stream)
    out = tmp_path / "out"
    prune(config, output=out, progress=False)

    loaded, seqlen = load_for(config)
    ids = calibration_ids(loaded, config, seqlen)
    result = run_layerwise(loaded.model, loaded.layout, get_method("sparsegpt")(config), ids, torch.device("cpu"),
                           config.engine_settings(), progress=False)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, reloaded(ids).logits)
    masks = load_masks(out / MASKS_FILE)
    assert set(masks) == set(result.masks)
    assert all(torch.equal(masks[k], result.masks[k]) for k in result.masks)
    assert verify_checkpoint(out).ok
    assert json.loads((out / "report.json").read_text())["streamed"] is stream
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("model")) == [
        "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors", "model.safetensors.index.json"]
    assert not (out / "state").exists() and not (out / "checkpoint.json").exists()


def test_mask_file_is_bit_packed(tmp_path):
    masks = {"a.weight": torch.rand(16, 64) > 0.5}
    save_masks(masks, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.get_tensor("a.weight").numel() == 16 * 64 // 8
    assert torch.equal(load_masks(tmp_path / "m.safetensors")["a.weight"], masks["a.weight"])


@pytest.fixture
def pruned_dir(tmp_path, tiny_model_dir, calib_file):
    out = tmp_path / "out"
    config = PruneConfig(model=str(tiny_model_dir), method="sparsegpt", calib=str(calib_file), nsamples=4, seqlen=32)
    report = prune(config, output=out, progress=False)
    return out, report


def test_prune_writes_a_loadable_checkpoint_with_report(pruned_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = pruned_dir
    assert (out / "config.json").is_file() and (out / MASKS_FILE).is_file()
    assert AutoTokenizer.from_pretrained(out) is not None
    model = AutoModelForCausalLM.from_pretrained(out)
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("method", "pattern", "seed", "nsamples", "seqlen", "calib", "global_sparsity", "layers", "blocks",
                "wall_seconds", "peak_rss_bytes", "versions", "config"):
        assert key in on_disk, key
    assert on_disk["pattern"] == "2:4" and on_disk["seqlen"] == 32 and on_disk["nsamples"] == 4
    assert on_disk["global_sparsity"] == pytest.approx(0.5)
    assert on_disk["nm_valid"] is True
    assert on_disk["versions"]["torch"] == metadata.version("torch")
    assert on_disk["versions"]["transformers"] == metadata.version("transformers")
    assert len(on_disk["layers"]) == 3 * 7 and all("rel_error" in r for r in on_disk["layers"])
    assert on_disk["peak_rss_bytes"] > 0
    q = model.model.layers[0].self_attn.q_proj.weight
    assert float((q == 0).float().mean()) == pytest.approx(0.5)
    assert not list(out.parent.glob(".out.tmp-*"))


def test_verify_fails_on_a_tampered_weight(pruned_dir):
    from hyperprune.cli import main

    out, _ = pruned_dir
    assert main(["verify", str(out)]) == 0
    shard = out / "model-00002-of-00004.safetensors"
    with safe_open(str(shard), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    name = "model.layers.1.mlp.down_proj.weight"
    weight = tensors[name].clone()
    weight[0, :4] = 1.0  # a whole 4-group dense again
    tensors[name] = weight
    save_file(tensors, str(shard), metadata=meta)
    result = verify_checkpoint(out)
    assert not result.ok
    bad = [c for c in result.layers if c.violations]
    assert [c.name for c in bad] == [name] and bad[0].violations == 1
    assert main(["verify", str(out)]) == 1
