"""HyperPrune priced at updated weights (issue 27, route A), held-out selection, and saved networks."""

import copy

import pytest
import torch

from conftest import tiny_model
from hyperprune.config import ADMMOptions, HessianOptions, HyperPruneOptions, PruneConfig, SparsityTarget
from hyperprune.engine import run_layerwise
from hyperprune.errors import HyperpruneError
from hyperprune.masks import count_nm_violations, nm_patterns
from hyperprune.methods import get_method
from hyperprune.methods.hyperprune import objectives as obj
from hyperprune.methods.hyperprune.problem import build_problem, input_terms, pattern_index
from hyperprune.methods.hyperprune.storage import depth_map, load_hypernet
from hyperprune.models import layout_for
from hyperprune.numerics.refit import exact_refit
from hyperprune.numerics.statistics import InputStatistics, StatisticsKind
from test_hyperprune import FAST, calib_ids, run

CPU = torch.device("cpu")
TARGET = SparsityTarget(pattern="2:4")


def _layer(seed=0, d_out=12, d_in=32, tokens=200):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=g) @ torch.randn(d_in, d_in, generator=g) * 0.3
    stats = InputStatistics(d_in, StatisticsKind.HESSIAN)
    stats.add(x)
    return torch.randn(d_out, d_in, generator=g), stats


@pytest.mark.parametrize("prior", ["sparsegpt", "admm"])
def test_the_loss_at_the_refit_weights_is_the_error_the_refit_leaves(prior):
    weight, stats = _layer()
    patterns = nm_patterns(2, 4)
    terms = input_terms(stats, HessianOptions(), 4, "test", ADMMOptions())
    problem = build_problem("q", weight, stats, terms, TARGET, prior, patterns, HessianOptions(), values="prior-update")
    keep = problem.prior_keep
    refit = exact_refit(weight, problem.hessian, keep, 0.1, "lstsq")
    problem.rebase(refit.weight, keep, problem.values)
    # One-hot pattern probabilities at ``keep``: the exact relaxation's loss of the hard mask.
    probs = torch.nn.functional.one_hot(pattern_index(keep, patterns).long(), patterns.shape[0]).float()
    rows = torch.arange(weight.shape[0])
    loss = obj.expected_quadratic_error(problem.values, problem.hessian, problem.terms.hessian_blocks, probs, patterns,
                                        problem.costs_for(rows), problem.base)
    assert loss.item() == pytest.approx(refit.error.sum().item(), rel=1e-4)
    # At any other mask the loss is an upper bound on what that mask's refit leaves.
    other = torch.roll(keep.view(-1, 4), 1, dims=1).view_as(keep)
    other_probs = torch.nn.functional.one_hot(pattern_index(other, patterns).long(), patterns.shape[0]).float()
    bound = obj.expected_quadratic_error(problem.values, problem.hessian, problem.terms.hessian_blocks, other_probs,
                                         patterns, problem.costs_for(rows), problem.base)
    assert exact_refit(weight, problem.hessian, other, 1e-9, "lstsq").error.sum() <= bound * (1 + 1e-4)


def test_admm_values_make_the_prior_mask_price_admms_own_output():
    weight, stats = _layer(1)
    terms = input_terms(stats, HessianOptions(), 4, "test", ADMMOptions())
    problem = build_problem("q", weight, stats, terms, TARGET, "admm", nm_patterns(2, 4), HessianOptions(),
                            values="prior-update")
    assert problem.base is not None
    # keep ⊙ V at the prior's mask is ADMM's (W + U) ⊙ M.
    from hyperprune.numerics.admm_solver import admm_factor, admm_prune
    admm = admm_prune(weight, admm_factor(stats.hessian(), 0.1, 1.0), TARGET)
    assert torch.equal(problem.prior_keep, admm.mask)
    assert torch.allclose(problem.values * admm.mask, admm.weight, atol=1e-6)


def _run_with(method, model, **options):
    config = PruneConfig(method=method, target=TARGET, nsamples=8, seed=0,
                         hyperprune=HyperPruneOptions(**{**FAST, **options}))
    instance = get_method(method)(config)
    result = run_layerwise(model, layout_for("llama"), instance, calib_ids(8), CPU, config.engine_settings(), progress=False)
    return result, instance


def test_an_admm_prior_with_no_training_reproduces_the_admm_method():
    # steps 0: the argmax is the prior's pattern, and the output is its mask on ADMM's weights.
    hyper = tiny_model("llama", seed=0, num_hidden_layers=2)
    admm = copy.deepcopy(hyper)
    _run_with("hyperprune", hyper, steps=0, prior="admm", values="prior-update")
    config = PruneConfig(method="admm", target=TARGET, nsamples=8, seed=0)
    run_layerwise(admm, layout_for("llama"), get_method("admm")(config), calib_ids(8), CPU, config.engine_settings(),
                  progress=False)
    for (name, a), b in zip(hyper.named_parameters(), admm.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_held_out_statistics_subtract_to_those_of_the_other_windows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, generator=g)
    every, part, rest = (InputStatistics(6, StatisticsKind.HESSIAN) for _ in range(3))
    every.add(x)
    part.add(x[7:])
    rest.add(x[:7])
    less = every.without(part)
    assert less.n_tokens == 7
    assert torch.allclose(less.hessian(), rest.hessian(), atol=1e-5)
    assert torch.allclose(less.column_norms, rest.column_norms, atol=1e-5)
    with pytest.raises(ValueError, match="nothing would be left"):
        part.without(every)


def test_selection_on_held_out_windows_chooses_row_by_row_and_refits_on_all():
    model, result, _ = run("hyperprune+refit", steps=8, layers=1, nsamples=8, prior="admm", values="prior-update",
                           selection_windows=2, refit_rounds=1, round_steps=4)
    params = dict(model.named_parameters())
    for record in result.layers:
        info = record.info
        # The chosen rows are the best of the candidates on the held-out windows.
        assert info["holdout_error"] <= min(info["prior_holdout_error"], info["learned_holdout_error"]) * (1 + 1e-6)
        assert info["refit_error"] < info["mask_error"]
    for name, keep in result.masks.items():
        assert torch.all(params[name][~keep] == 0)
        assert count_nm_violations(params[name].detach(), 2, 4) == 0


def test_selection_needs_windows_left_to_learn_from():
    with pytest.raises(HyperpruneError, match="leaves none"):
        run("hyperprune+refit", steps=2, layers=1, nsamples=4, selection_windows=4)
    with pytest.raises(HyperpruneError, match="hyperprune\\+refit"):
        run("hyperprune", steps=2, layers=1, selection_windows=2)


def test_values_prior_update_needs_an_updating_prior():
    with pytest.raises(ValueError, match="updating prior"):
        HyperPruneOptions(prior="wanda", values="prior-update")


def test_a_saved_network_reloads_bit_identically_and_gives_the_same_masks(tmp_path):
    path = tmp_path / "net.safetensors"
    _, _, trained = run(layers=2, save_hypernet=str(path))
    loaded = load_hypernet(path, trained.options, "2:4", *trained.shape)
    for (name, a), b in zip(trained.network.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # Zero steps from the file against zero steps from the trained network itself.
    from_file, _ = _run_with("hyperprune", tiny_model("llama", seed=5, num_hidden_layers=2), steps=0, hypernet=str(path))
    config = PruneConfig(method="hyperprune", target=TARGET, nsamples=8, seed=0,
                         hyperprune=HyperPruneOptions(**{**FAST, "steps": 0}))
    direct = get_method("hyperprune")(config)
    direct.network, direct.shape = copy.deepcopy(trained.network), trained.shape
    same = run_layerwise(tiny_model("llama", seed=5, num_hidden_layers=2), layout_for("llama"), direct, calib_ids(8),
                         CPU, config.engine_settings(), progress=False)
    assert all(torch.equal(from_file.masks[k], same.masks[k]) for k in same.masks)
    # The flags' architecture gives way to the file's.
    assert get_method("hyperprune")(PruneConfig(method="hyperprune", target=TARGET, hyperprune=HyperPruneOptions(
        hidden_dim=7, hypernet=str(path)))).options.hidden_dim == FAST["hidden_dim"]


def test_a_saved_network_transfers_to_another_depth_by_relative_position(tmp_path):
    path = tmp_path / "net.safetensors"
    _, _, trained = run(layers=3, save_hypernet=str(path))
    assert depth_map(3, 5).tolist() == [0, 0, 1, 2, 2]  # halves round to even
    assert depth_map(30, 18)[[0, -1]].tolist() == [0, 29]
    in_features, patterns, _, components = trained.shape
    deeper = load_hypernet(path, trained.options, "2:4", in_features, patterns, 5, components)
    assert torch.equal(deeper.layer_embedding[4], trained.network.layer_embedding[2])
    result, _ = _run_with("hyperprune", tiny_model("llama", seed=1, num_hidden_layers=5), steps=0, hypernet=str(path))
    assert len(result.masks) == 35


def test_a_missing_or_mismatched_network_file_is_one_clear_error(tmp_path):
    with pytest.raises(HyperpruneError, match="no such file"):
        get_method("hyperprune")(PruneConfig(method="hyperprune", target=TARGET,
                                             hyperprune=HyperPruneOptions(hypernet=str(tmp_path / "x"))))
    path = tmp_path / "net.safetensors"
    run(layers=1, save_hypernet=str(path))
    with pytest.raises(HyperpruneError, match="trained for 2:4"):
        run(layers=1, pattern="4:8", hypernet=str(path))


def test_a_saved_network_alone_with_the_refit(tmp_path):
    # What route B's "+refit" rows run: the saved network's masks, no prior, no training, then the refit.
    path = tmp_path / "net.safetensors"
    run(layers=2, save_hypernet=str(path))
    _, frozen, _ = run("hyperprune", layers=2, steps=0, prior="none", hypernet=str(path))
    model, refit, _ = run("hyperprune+refit", layers=2, steps=0, prior="none", hypernet=str(path))
    params = dict(model.named_parameters())
    first = [name for name in refit.masks if ".layers.0." in name]  # later blocks see other inputs
    assert first and all(torch.equal(refit.masks[name], frozen.masks[name]) for name in first)
    for name, keep in refit.masks.items():
        assert torch.all(params[name][~keep] == 0)
    assert sum(r.rel_error for r in refit.layers[:7]) < sum(r.rel_error for r in frozen.layers[:7])


def test_auto_values_follow_the_prior():
    # hyperprune+refit's default: priced at the prior's updated weights when the prior updates any.
    assert HyperPruneOptions(prior="admm", values="auto").values == "prior-update"
    assert HyperPruneOptions(prior="sparsegpt", values="auto").values == "prior-update"
    assert HyperPruneOptions(prior="wanda", values="auto").values == "dense"
    assert HyperPruneOptions(prior="none", values="auto").values == "dense"


def test_a_large_layers_errors_go_a_slice_of_rows_at_a_time_and_equal_the_whole_product(monkeypatch):
    import hyperprune.methods.hyperprune.problem as problem_module

    weight, stats = _layer(2, d_out=24)
    terms = input_terms(stats, HessianOptions(), 4, "test", ADMMOptions())
    problem = build_problem("q", weight, stats, terms, TARGET, "admm", nm_patterns(2, 4), HessianOptions(),
                            values="prior-update")
    keep = problem.prior_keep
    whole_mask = problem.relative_error(keep)
    whole_update = problem.relative_error_of(lambda rows: problem.error(keep[rows].float(), rows))
    seen = []
    quadratic_error = obj.quadratic_error
    monkeypatch.setattr(obj, "quadratic_error", lambda delta, h: seen.append(delta.shape[0]) or quadratic_error(delta, h))
    # Every layer "7B-sized", and 5 rows a slice: 24 rows go as 5+5+5+5+4.
    monkeypatch.setattr(problem_module, "_COMPACT_ABOVE", 0)
    monkeypatch.setattr(problem_module, "_FEATURE_ROWS_BYTES", 5 * weight.shape[1] * 4)
    assert problem.relative_error(keep) == pytest.approx(whole_mask, rel=1e-6)
    assert seen == [5, 5, 5, 5, 4]
    assert problem.relative_error_of(lambda rows: problem.error(keep[rows].float(), rows)) == pytest.approx(whole_update, rel=1e-6)
    expected = ((weight * ~keep) @ problem.hessian * (weight * ~keep)).sum() / problem.dense_energy.sum()
    assert whole_mask == pytest.approx(float(expected), rel=1e-5)
