"""HyperPrune's network trained end to end on the KL between the dense and the pruned model (route B)."""

import copy
import json

import pytest
import torch

from hyperprune.numerics.masked_training import logit_kl
from hyperprune.masks import count_nm_violations, nm_patterns
from hyperprune.methods.hyperprune.network_finetune import (FineTuningSettings, NetworkFineTuning, accumulate_network_gradient, end_to_end_step, hard_keeps,
                                                      kl_and_weight_gradients, masked_kl)
from hyperprune.methods.hyperprune.method import HyperPrune
from hyperprune.numerics.end_to_end import substituted
from conftest import tiny_model
from hyperprune.cli import main
from hyperprune.engine.run_checkpoint import partial_dir_for
from test_resume import assert_bit_identical, run_subprocess, tensors_of
from test_hyperprune import calib_ids, run

PATTERNS = nm_patterns(2, 4)


@pytest.fixture(scope="module")
def trained():
    HyperPrune.collect_network_layers = True
    try:
        model, _, method = run(layers=2, steps=10)
    finally:
        HyperPrune.collect_network_layers = False
    return model, method


def test_the_layer_pass_keeps_features_and_values_for_every_layer(trained):
    model, method = trained
    layers = method.network_layers
    assert len(layers) == 14 and len({layer.name for layer in layers}) == 14
    params = dict(model.named_parameters())
    dense = dict(tiny_model("llama", seed=0, num_hidden_layers=2).named_parameters())
    keeps = hard_keeps(method.network, layers, PATTERNS)
    for layer in layers:
        assert layer.values.shape == params[layer.name].shape
        assert layer.features.shape == (layer.values.numel() // 4, 36)
        # The values are the dense weights, not the pruned ones (in float32 the two share storage).
        assert torch.equal(layer.values, dense[layer.name].detach())
        assert torch.equal(layer.applied, params[layer.name] != 0)
        # With the prior term, the network's masks for the last block are the ones applied (earlier
        # blocks' drift as the network trains on later ones: the phase counts ``applied`` as step 0).
        assert layer.prior_index is not None
        if layer.block == 1:
            assert torch.equal(keeps[layer.name], layer.applied), layer.name


def test_the_layer_by_layer_network_gradient_equals_autograd_through_every_mask_at_once(trained):
    model, method = trained
    network, layers = method.network, method.network_layers
    ids, tau = calib_ids(2, 16, seed=3), 0.5
    # Reference: straight-through masks of every layer in one graph, one backward.
    network.zero_grad(set_to_none=True)
    weights = {}
    for layer in layers:
        bias = network.context_bias(torch.tensor(layer.block), torch.tensor(layer.component))
        logits = network(layer.features.float(), bias) + layer.prior_table[layer.prior_index.long()]
        soft = torch.softmax(logits / tau, dim=1) @ PATTERNS
        hard = PATTERNS[logits.argmax(dim=1)]
        keep = hard + soft - soft.detach()
        weights[layer.name] = layer.values * keep.reshape(layer.values.shape)
    model.requires_grad_(False)
    total = 0
    for window in range(ids.shape[0]):
        with torch.no_grad(), substituted(model, {layer.name: layer.values for layer in layers}):
            teacher = model(input_ids=ids[window : window + 1], use_cache=False).logits
        with substituted(model, weights):
            total = total + logit_kl(model(input_ids=ids[window : window + 1], use_cache=False).logits, teacher)
    total.backward()
    reference = [p.grad.clone() for p in network.parameters()]
    # Ours: one model pass for ∂L/∂W_eff, then the network layer by layer.
    network.zero_grad(set_to_none=True)
    loss, grads = kl_and_weight_gradients(model, layers, hard_keeps(network, layers, PATTERNS), ids)
    accumulate_network_gradient(network, layers, grads, PATTERNS, tau)
    assert loss == pytest.approx(float(total), rel=1e-4)  # the KL of near-equal logits: float32 cancellation
    for ours, theirs in zip(network.parameters(), reference):
        assert torch.allclose(ours.grad, theirs, rtol=1e-4, atol=1e-9)
    assert any(float(g.abs().sum()) > 0 for g in reference)


def test_end_to_end_steps_lower_the_kl_and_keep_masks_exactly_nm(trained):
    model, method = trained
    network, layers = copy.deepcopy(method.network), method.network_layers
    ids = calib_ids(4, 24, seed=1)
    before = masked_kl(model, network, layers, PATTERNS, ids)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    for _ in range(6):
        end_to_end_step(model, network, layers, PATTERNS, ids, 0.5, optimizer)
    after = masked_kl(model, network, layers, PATTERNS, ids)
    assert after < before
    for layer, keep in zip(layers, hard_keeps(network, layers, PATTERNS).values()):
        assert count_nm_violations(layer.values * keep, 2, 4) == 0
        assert int(keep.sum()) == keep.numel() // 2


# ---------------------------------------------------------------- route B inside a run
def _route_b_args(model_dir, calib_file, out, *extra):
    return ["prune", "--model", str(model_dir), "--method", "hyperprune", "--calib", str(calib_file),
            "--nsamples", "4", "--seqlen", "24", "--seed", "3", "--hyperprune-steps", "4",
            "--hyperprune-end-to-end-steps", "4", "--hyperprune-end-to-end-holdout", "1",
            "--hyperprune-end-to-end-eval-every", "1", "--hyperprune-end-to-end-patience", "4",
            "--hyperprune-end-to-end-lr", "3e-2", "--output", str(out), "--quiet", *extra]


def test_the_end_to_end_phase_runs_in_prune_and_never_ends_worse_held_out(tmp_path, tiny_model_dir, calib_file):
    out = tmp_path / "out"
    assert main(_route_b_args(tiny_model_dir, calib_file, out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["nm_valid"]
    phase = report["blocks"][0]["info"]["whole_model_pass"]
    checks = phase["end_to_end"]["holdout_kl"]
    assert phase["end_to_end"]["steps"] == 4 and [step for step, _ in checks] == [0, 1, 2, 3, 4]
    best = min(kl for _, kl in checks)
    assert dict(checks)[phase["end_to_end"]["best_step"]] == best <= checks[0][1]
    assert phase["train_windows"] == 3 and phase["holdout_windows"] == 1
    assert all("changed_vs_layerwise" in layer["info"] for layer in report["layers"])
    # Frozen weights: every kept weight is the dense one.
    dense = dict(tiny_model("llama").named_parameters())
    pruned = {k: t for k, t in tensors_of(out).items() if k.startswith("model")}  # not masks.safetensors
    for layer in report["layers"]:
        weight = next(t for k, t in pruned.items() if k.endswith(":" + layer["name"]))
        kept = weight != 0
        assert torch.equal(weight[kept], dense[layer["name"]].detach()[kept])
    assert not any(p.name == "whole-model" for p in out.iterdir())


def test_the_end_to_end_phase_with_refit_refits_every_layer_to_its_masks(tmp_path, tiny_model_dir, calib_file):
    out = tmp_path / "out"
    assert main([*_route_b_args(tiny_model_dir, calib_file, out, "--refit-method", "lstsq"), "--method",
                 "hyperprune+refit"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["nm_valid"]
    dense = dict(tiny_model("llama").named_parameters())
    pruned = {k: t for k, t in tensors_of(out).items() if k.startswith("model")}  # not masks.safetensors
    changed = 0
    for layer in report["layers"]:
        weight = next(t for k, t in pruned.items() if k.endswith(":" + layer["name"]))
        kept = weight != 0
        changed += int((weight[kept] != dense[layer["name"]].detach()[kept]).sum())
        # Each layer's mask is the phase's (the layer loop only refits): it says how much it changed.
        assert 0 <= layer["info"]["changed_vs_layerwise"] <= 1
    kept_total = sum(int((t != 0).sum()) for k, t in pruned.items() if any(k.endswith(":" + l["name"]) for l in report["layers"]))
    assert changed > 0.9 * kept_total  # nearly every kept weight moved in the refit


def test_a_kill_during_the_end_to_end_phase_resumes_bit_identically(tmp_path, tiny_model_dir, calib_file):
    reference = tmp_path / "reference"
    assert main(_route_b_args(tiny_model_dir, calib_file, reference)) == 0
    out = tmp_path / "killed"
    killed = run_subprocess(_route_b_args(tiny_model_dir, calib_file, out), {"HYPERPRUNE_FAULT": "2:end_to_end_step"})
    assert killed.returncode == -9, killed.stderr[-500:]
    assert (partial_dir_for(out) / "whole-model" / "hyperprune-end-to-end.pt").is_file()
    assert main(_route_b_args(tiny_model_dir, calib_file, out, "--resume")) == 0
    assert_bit_identical(reference, out)
    ours, theirs = (json.loads((d / "report.json").read_text()) for d in (out, reference))
    assert ours["blocks"][0]["info"]["whole_model_pass"]["end_to_end"]["holdout_kl"] == \
        theirs["blocks"][0]["info"]["whole_model_pass"]["end_to_end"]["holdout_kl"]


def test_step_zero_is_the_masks_the_layer_wise_pass_applied(trained):
    model, method = trained
    network, layers = copy.deepcopy(method.network), method.network_layers
    applied = {layer.name: layer.applied for layer in layers}
    ids = calib_ids(3, 16, seed=5)
    settings = FineTuningSettings(steps=0, lr=1e-3, tau=0.5, batch_size=1, eval_every=1, patience=2, seed=0)
    training = NetworkFineTuning(model, network, layers, PATTERNS, ids[:2], ids[2:], settings)
    assert training.stopping.history[0][1] == pytest.approx(masked_kl(model, network, layers, PATTERNS, ids[2:], applied))
    run = training.train(progress=False)
    assert run.steps == 0 and run.best_step == 0
    # The network's own argmax has drifted for the first block; what is kept is what was applied.
    drifted = hard_keeps(network, layers, PATTERNS)
    assert any(not torch.equal(drifted[name], keep) for name, keep in applied.items())
    assert all(torch.equal(training.final_masks()[name], keep) for name, keep in applied.items())
    assert training.changed_groups() == 0.0
