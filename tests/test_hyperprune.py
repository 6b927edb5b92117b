"""HyperPrune: the pure math, the method on tiny random models, ablations and resume."""

import math

import pytest
import torch

from conftest import tiny_model
from hyperprune.config import HyperPruneOptions, PruneConfig, SparsityTarget
from hyperprune.engine import run_layerwise
from hyperprune.errors import HyperpruneError
from hyperprune.masks import count_nm_violations, nm_patterns
from hyperprune.methods import get_method
from hyperprune.methods.hyperprune import objectives as obj
from hyperprune.methods.hyperprune.network import HyperNetwork
from hyperprune.models import layout_for, prunable_weight_names

CPU = torch.device("cpu")
FAST = dict(steps=15, hidden_dim=32, depth=3)


def calib_ids(nsamples=4, seqlen=24, seed=0):
    return torch.randint(0, 256, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def run(method="hyperprune", pattern="2:4", seed=0, model_seed=0, nsamples=4, layers=3, **options):
    model = tiny_model("llama", seed=model_seed, num_hidden_layers=layers)
    config = PruneConfig(method=method, target=SparsityTarget(pattern=pattern), nsamples=nsamples, seed=seed,
                         hyperprune=HyperPruneOptions(**{**FAST, **options}))
    instance = get_method(method)(config)
    result = run_layerwise(model, layout_for("llama"), instance, calib_ids(nsamples), CPU, config.engine_settings(), progress=False)
    return model, result, instance


# ---------------------------------------------------------------- pure math
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8), (1, 2)])
def test_patterns_are_all_distinct_n_hot_vectors(n, m):
    patterns = nm_patterns(n, m)
    assert patterns.shape == (math.comb(m, n), m)
    assert torch.all(patterns.sum(1) == n)
    assert set(patterns.unique().tolist()) <= {0.0, 1.0}
    assert len({tuple(row.tolist()) for row in patterns}) == math.comb(m, n)


def test_relaxation_tends_to_the_argmax_as_tau_goes_to_zero():
    patterns = nm_patterns(2, 4)
    logits = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    hard = obj.hard_mask(logits, patterns).float()
    gaps = [(obj.relaxed_mask(logits, patterns, tau) - hard).abs().mean().item() for tau in (1.0, 0.1, 0.01, 1e-6)]
    assert gaps[0] > 0.1 and gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert (obj.relaxed_mask(logits, patterns, 1e-6) - hard).abs().max() < 1e-4
    # Gumbel samples become exact patterns (one-hot z) as τ → 0 ...
    sample = obj.relaxed_mask(logits, patterns, 1e-4, gumbel=True, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sample.sum(1), torch.full((500,), 2.0)) and torch.all((sample < 1e-4) | (sample > 1 - 1e-4))
    # ... and with a dominant logit they are the argmax itself.
    dominant = torch.nn.functional.one_hot(logits.argmax(1), 6).float() * 50
    sharp = obj.relaxed_mask(dominant, patterns, 1e-4, gumbel=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sharp.round().bool(), obj.hard_mask(logits, patterns))


def test_straight_through_is_hard_forward_and_soft_backward():
    patterns = nm_patterns(2, 4)
    logits = torch.randn(8, 6, requires_grad=True)
    mask = obj.relaxed_mask(logits, patterns, 1.0, straight_through=True)
    assert torch.allclose(mask, obj.hard_mask(logits.detach(), patterns).float(), atol=1e-6)
    (mask * torch.randn(8, 4)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_outlier_term_from_moments_equals_the_sample_expectation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 16, generator=gen) * torch.linspace(0.1, 3, 16) + torch.linspace(-2, 2, 16)
    weight = torch.randn(8, 16, generator=gen)
    keep = torch.rand(8, 16, generator=gen)  # a relaxed mask
    masked = weight * keep
    direct = (masked.unsqueeze(0) * x.unsqueeze(1)).pow(2).sum(dim=(1, 2)).mean()  # E_x ‖Ŵ·Diag(x)‖²
    mean, variance = x.mean(0), x.var(0, unbiased=False)
    assert obj.outlier_energy(masked, mean, variance).item() == pytest.approx(direct.item(), rel=1e-4)


def test_prior_log_probs_prefer_the_prior_pattern():
    patterns = nm_patterns(2, 4)
    table = obj.prior_log_probs(patterns, patterns, beta=10.0)
    assert torch.equal(table.argmax(1), torch.arange(6))
    assert torch.allclose(table.exp().sum(1), torch.ones(6))


def test_schedules():
    assert obj.temperature(0, 1.0, 0.5, 1e-4) == 1.0
    assert obj.temperature(10**6, 1.0, 0.5, 1e-4) == 0.5
    eta = obj.decay_to_reach(1.0, 0.1, 150)
    assert obj.temperature(150, 1.0, 0.1, eta) == pytest.approx(0.1)
    assert obj.prior_weight(0, 100, 3.0, 2.0) == 3.0
    assert obj.prior_weight(100, 100, 3.0, 2.0) == pytest.approx(3.0 * math.exp(-2))


def test_group_features_shape_and_locality():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 16, generator=gen)
    names = ("weight", "wanda", "saliency", "hdiag", "hinv", "coupling")
    feats = obj.group_features(weight, torch.randn(6, 16, generator=gen), torch.rand(16) + 0.1, torch.rand(16) + 0.1,
                               torch.rand(16) + 0.1, 4, names)
    assert feats.shape == (6 * 4, 4 * len(names)) and torch.isfinite(feats).all()
    # the first 4 inputs of group (row 1, group 2) are row 1's weights 8..11, row-normalized
    rms = weight[1].pow(2).mean().sqrt()
    assert torch.allclose(feats[1 * 4 + 2, :4], weight[1, 8:12] / rms)


def test_an_input_never_seen_leaves_every_feature_finite():
    """Gemma-3 270M has inputs whose ‖x‖ is exactly 0; the log Wanda feature once made every row
    NaN there, and the network trained into NaN without a word."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 16, generator=gen)
    norms = torch.rand(16, generator=gen) + 0.1
    norms[5] = 0.0
    names = ("weight", "wanda", "saliency", "hdiag", "hinv", "coupling")
    feats = obj.group_features(weight, torch.randn(6, 16, generator=gen), norms, torch.rand(16) + 0.1,
                               torch.rand(16) + 0.1, 4, names)
    assert torch.isfinite(feats).all()
    # the dead input ranks lowest in its group on the Wanda feature (columns 4..7 of group 1)
    assert (feats.view(6, 4, -1)[:, 1, 4:8].argmin(dim=1) == 1).all()


def test_a_model_with_a_dead_input_channel_trains_to_finite_masks():
    model = tiny_model("llama", seed=0, num_hidden_layers=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.post_attention_layernorm.weight[3] = 0.0  # gate/up never see input 3
    config = PruneConfig(method="hyperprune", target=SparsityTarget(pattern="2:4"), nsamples=4, seed=0,
                         hyperprune=HyperPruneOptions(**FAST))
    instance = get_method("hyperprune")(config)
    result = run_layerwise(model, layout_for("llama"), instance, calib_ids(4), CPU, config.engine_settings(), progress=False)
    assert all(math.isfinite(info) for block in result.blocks for key, info in block.info.items()
               if key == "final_reconstruction")
    assert all(math.isfinite(rec.rel_error) and rec.info["changed_vs_prior"] < 0.5 for rec in result.layers)


def test_a_network_giving_nan_logits_is_refused_in_one_line():
    model = tiny_model("llama", seed=0, num_hidden_layers=1)
    config = PruneConfig(method="hyperprune", target=SparsityTarget(pattern="2:4"), nsamples=4, seed=0,
                         hyperprune=HyperPruneOptions(**{**FAST, "steps": 0}))
    instance = get_method("hyperprune")(config)
    instance._start_network(obj.feature_width(instance.options.features, 2, 4), 6, 1, 7)
    with torch.no_grad():
        instance.network.first.weight.fill_(float("nan"))
    with pytest.raises(HyperpruneError, match="NaN or Inf logits in block 0"):
        run_layerwise(model, layout_for("llama"), instance, calib_ids(4), CPU, config.engine_settings(), progress=False)


# ---------------------------------------------------------------- the method
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("method", ["hyperprune", "hyperprune+refit"])
def test_final_masks_are_exactly_nm(pattern, method):
    model, result, _ = run(method, pattern, steps=5)
    n, m = map(int, pattern.split(":"))
    params = dict(model.named_parameters())
    for name in prunable_weight_names(model, layout_for("llama")):
        weight = params[name].detach()
        assert count_nm_violations(weight, n, m) == 0, name
        assert torch.all(weight[~result.masks[name]] == 0)
        assert result.masks[name].sum() == weight.numel() * n // m


@pytest.mark.parametrize("prior", ["sparsegpt", "wanda"])
def test_a_dominant_prior_gives_the_prior_mask(prior):
    _, result, _ = run(prior=prior, prior_gamma=1e4, prior_decay=0.0, steps=10, lr=1e-2)
    _, reference, _ = run(prior, "2:4")
    # SparseGPT updates weights, so later blocks see other inputs: compare block 0 there.
    names = [k for k in result.masks if prior == "wanda" or ".layers.0." in k]
    for name in names:
        assert torch.equal(result.masks[name], reference.masks[name]), name
    for record in result.layers:
        assert record.info["changed_vs_prior"] == 0.0


def test_training_beats_the_prior_mask_on_the_layer_objective():
    """With a weak prior (Wanda), the learned masks reconstruct each layer better than it."""
    _, result, _ = run(prior="wanda", steps=150, lr=5e-3, tau_final=0.05, hidden_dim=64, layers=2, nsamples=8)
    learned = sum(r.info["mask_error"] for r in result.layers)
    prior = sum(r.info["prior_error"] for r in result.layers)
    assert learned < 0.97 * prior, (learned, prior)


def test_training_beats_the_prior_mask_on_the_block_objective():
    _, trained, _ = run(prior="wanda", objective="block", steps=40, lr=5e-3, tau_final=0.05, layers=1, nsamples=8)
    _, untrained, _ = run(prior="wanda", objective="block", steps=0, layers=1, nsamples=8)
    assert trained.blocks[0].rel_output_error < untrained.blocks[0].rel_output_error


@pytest.mark.parametrize("refit_method", ["obs", "lstsq"])
def test_refit_keeps_the_mask_and_lowers_the_error(refit_method):
    # Without a prior the learned mask is the only candidate, so the refit must keep it.
    _, plain, _ = run("hyperprune", steps=10, prior="none")
    # The preset's own row fraction (0.05) overridden: the same training as the plain run's.
    _, refit, _ = run("hyperprune+refit", steps=10, prior="none", refit_method=refit_method, row_fraction=0.25)
    for name in [k for k in plain.masks if ".layers.0." in k]:  # later blocks see other inputs
        assert torch.equal(plain.masks[name], refit.masks[name])
    assert sum(r.rel_error for r in refit.layers[:7]) < sum(r.rel_error for r in plain.layers[:7])


def test_refit_aware_masks_are_no_worse_than_the_prior_mask_refit():
    model, result, _ = run("hyperprune+refit", steps=10, layers=1, refit_rounds=2, round_steps=5, nsamples=8)
    params = dict(model.named_parameters())
    for record in result.layers:
        info = record.info
        assert "changed_round_1" in info and "changed_round_2" in info
        # Row by row the best candidate is kept: never worse than the prior's or the learned mask's refit.
        assert info["refit_error"] <= info["prior_refit_error"] * (1 + 1e-6)
        assert info["refit_error"] <= info["learned_refit_error"] * (1 + 1e-6)
        assert info["refit_error"] < info["mask_error"]
    assert sum(r.info["refit_error"] for r in result.layers) < sum(r.info["prior_refit_error"] for r in result.layers)
    for name, keep in result.masks.items():
        assert torch.all(params[name][~keep] == 0)
        assert count_nm_violations(params[name].detach(), 2, 4) == 0


def test_same_seed_same_masks_and_another_seed_differs():
    _, a, _ = run(seed=3, relaxation="gumbel")
    _, b, _ = run(seed=3, relaxation="gumbel")
    _, c, _ = run(seed=4, relaxation="gumbel")
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert any(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


def test_continual_term_is_zero_after_the_copy_and_rises_when_the_network_moves():
    _, _, method = run(layers=2)
    assert method.cache_features.shape[0] == 2 * 7 * method.options.continual_groups
    network = method.network
    assert method._continual_term(network).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        network.last.weight.add_(0.01)
    assert method._continual_term(network).item() > 1e-6


def _parameter_count(**options):
    opts = HyperPruneOptions(**{**FAST, **options})
    return sum(p.numel() for p in HyperNetwork(8, 6, 10, opts).parameters())


def test_embedding_switches_remove_exactly_their_parameters():
    full = _parameter_count()
    d, width = 64, FAST["hidden_dim"]
    assert full - _parameter_count(layer_embedding=False) == 10 * d + d * width
    assert full - _parameter_count(component_embedding=False) == 7 * d + d * width
    assert full - _parameter_count(layer_embedding=False, component_embedding=False) == 17 * d + 2 * d * width


def test_loss_switches_remove_exactly_their_terms():
    def terms(**options):
        _, result, _ = run(layers=2, **options)
        block1 = result.blocks[1].info
        return {k for k in block1 if k.startswith("final_") and k != "final_tau"}, result

    full, _ = terms(lambda_outlier=0.1)
    assert full == {"final_reconstruction", "final_outlier", "final_continual"}
    assert terms(lambda_outlier=0.1, outlier=False)[0] == full - {"final_outlier"}
    assert terms(lambda_outlier=0.0)[0] == full - {"final_outlier"}  # the default: λ1 = 0, not computed
    assert terms(lambda_outlier=0.1, continual=False)[0] == full - {"final_continual"}
    _, no_prior = terms(prior="none")
    assert all("prior_error" not in r.info for r in no_prior.layers)


def test_unstructured_sparsity_is_refused():
    assert not get_method("hyperprune").supports_unstructured


def test_state_dict_round_trip_reproduces_the_network():
    _, _, method = run(layers=2)
    state = method.state_dict()
    fresh = get_method("hyperprune")(method.config)
    fresh.load_state_dict(state)
    features = torch.randn(5, fresh.shape[0])
    bias = fresh.network.context_bias(torch.tensor([1] * 5), torch.tensor([2] * 5))
    assert torch.equal(fresh.network(features, bias), method.network(features, method.network.context_bias(
        torch.tensor([1] * 5), torch.tensor([2] * 5))))
    assert torch.equal(fresh.cache_targets, method.cache_targets)


def test_gumbel_gradient_with_checkpointing_equals_the_gradient_without():
    """The checkpointed recomputation must see the same Gumbel sample as the forward."""
    from types import SimpleNamespace

    options = HyperPruneOptions(**FAST, relaxation="gumbel", objective="block")
    config = PruneConfig(method="hyperprune", hyperprune=options)
    patterns = nm_patterns(2, 4)
    features = torch.randn(64, 4 * len(options.features) + 6 + 6, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(8, 32)
    problem = SimpleNamespace(weight=weight, m=4, component=0, features=lambda rows, names: features,
                              prior_logits=lambda rows, table: None)
    target = torch.randn(8, 32)

    def gradient(checkpoint_groups):
        method = get_method("hyperprune")(config)
        method.checkpoint_groups = checkpoint_groups
        network = method._build_network(features.shape[1], 6, 3, 7)
        torch.nn.init.normal_(network.last.weight, generator=torch.Generator().manual_seed(1))
        keep = method._full_relaxed_mask(network, 1, problem, patterns, None, 0.5, 0.0,
                                         torch.Generator().manual_seed(7))
        (keep * target).sum().backward()
        return [p.grad.clone() for p in network.parameters() if p.grad is not None]

    plain, checkpointed = gradient(1 << 30), gradient(0)
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6)


def test_embeddings_train_from_a_zero_projection():
    _, _, method = run(layers=3)
    network = method.network
    assert network.layer_projection.weight.abs().sum() > 0  # the projections left zero
    # each block's one-hot embedding moved away from its initial value
    initial = HyperNetwork(network.first.in_features, 6, 3, method.options,
                           torch.Generator().manual_seed(method.config.seed)).layer_embedding
    moved = (network.layer_embedding.detach() - initial).norm(dim=1)
    assert torch.all(moved > 0)


def test_one_hot_layer_embeddings_do_not_collide_in_deep_models():
    options = HyperPruneOptions(embed_dim=8)
    network = HyperNetwork(8, 6, 20, options, torch.Generator().manual_seed(0))
    emb = torch.nn.functional.normalize(network.layer_embedding.detach(), dim=1)
    similarity = emb @ emb.T - torch.eye(20)
    assert similarity.max() < 0.99


def test_the_compact_path_for_large_layers_runs_and_stays_close(monkeypatch):
    """7B-sized layers keep features in bf16 and price patterns per step; force that path here."""
    import hyperprune.methods.hyperprune.method as method_module
    import hyperprune.methods.hyperprune.problem as problem_module

    _, full, _ = run(layers=1, steps=10)
    monkeypatch.setattr(problem_module, "_COMPACT_ABOVE", 0)
    monkeypatch.setattr(method_module, "_FEATURE_CACHE_BYTES", 0)  # features recomputed every step
    monkeypatch.setattr(method_module, "_COMPACT_STEP_GROUPS", 8)  # a few rows a step
    model, compact, _ = run(layers=1, steps=10)
    params = dict(model.named_parameters())
    for name, keep in compact.masks.items():
        assert count_nm_violations(params[name].detach(), 2, 4) == 0
    learned = sum(r.info["mask_error"] for r in compact.layers)
    prior = sum(r.info["prior_error"] for r in compact.layers)
    assert learned <= prior * 1.05  # training from the prior on few rows does not wreck it
    assert abs(learned - sum(r.info["mask_error"] for r in full.layers)) < 0.2 * prior


def test_continual_term_gradient_is_bit_identical_run_to_run():
    """Issue 14: the continual cache indexes the embeddings with thousands of repeated layer and
    component ids. ``table[index]`` accumulated its gradient in parallel in no fixed order on
    the CPU (about every repeat differed in the last bits), so two runs trained two different
    hypernetworks. Every repeat must now give the same gradient, bit for bit."""
    options = HyperPruneOptions()
    network = HyperNetwork(24, 6, 30, options, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    rows = 3500  # 10 finished blocks × 7 layers × 50 cached groups
    features = torch.randn(rows, 24, generator=generator)
    targets = torch.randn(rows, 6, generator=generator)
    layers = torch.randint(0, 10, (rows,), generator=generator)
    components = torch.randint(0, 7, (rows,), generator=generator)
    gradients = []
    for _ in range(8):
        network.zero_grad(set_to_none=True)
        logits = network(features, network.context_bias(layers, components))
        obj.continual_penalty(logits, targets).backward()
        gradients.append({name: p.grad.clone() for name, p in network.named_parameters()})
    for repeat in gradients[1:]:
        for name, grad in repeat.items():
            assert torch.equal(grad, gradients[0][name]), name
