"""HyperPrune's network trained end to end on the KL between the dense and the pruned model (route B)."""

import copy

import pytest
import torch

from hyperprune.numerics.masked_training import logit_kl
from hyperprune.masks import count_nm_violations, nm_patterns
from hyperprune.methods.hyperprune.network_finetune import (accumulate_network_gradient, end_to_end_step, hard_keeps,
                                                      kl_and_weight_gradients, masked_kl)
from hyperprune.methods.hyperprune.method import HyperPrune
from hyperprune.numerics.end_to_end import substituted
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
    for layer in layers:
        assert layer.values.shape == params[layer.name].shape
        assert layer.features.shape == (layer.values.numel() // 4, 36)


def test_the_layer_by_layer_network_gradient_equals_autograd_through_every_mask_at_once(trained):
    model, method = trained
    network, layers = method.network, method.network_layers
    ids, tau = calib_ids(2, 16, seed=3), 0.5
    # Reference: straight-through masks of every layer in one graph, one backward.
    network.zero_grad(set_to_none=True)
    weights = {}
    for layer in layers:
        bias = network.context_bias(torch.tensor(layer.block), torch.tensor(layer.component))
        logits = network(layer.features.float(), bias)
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
