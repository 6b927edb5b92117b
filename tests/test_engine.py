import pytest
import torch

from conftest import tiny_model
from hyperprune.config import EngineSettings, PruneConfig, SparsityTarget
from hyperprune.engine import run_layerwise
from hyperprune.masks import count_nm_violations
from hyperprune.methods import METHODS, get_method
from hyperprune.models import COMPONENTS, layout_for, prunable_weight_names

CPU = torch.device("cpu")


def calib_ids(nsamples=4, seqlen=24, vocab=256, seed=0):
    return torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def run(model, method, target="2:4", nsamples=4, **kwargs):
    target = SparsityTarget(pattern=target) if ":" in str(target) else SparsityTarget(sparsity=float(target))
    config = PruneConfig(method=method, target=target, nsamples=nsamples)
    layout = layout_for(model.config.model_type)
    return run_layerwise(model, layout, get_method(method)(config), calib_ids(nsamples), CPU, config.engine_settings(),
                         progress=False, **kwargs)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_pass_through_reproduces_the_models_hidden_states(model_type):
    """Pruning nothing must reproduce the model exactly, for every sample. This fails if
    state leaks between samples (e.g. a KV cache shared across replayed samples)."""
    model = tiny_model(model_type)
    ids = calib_ids(5)
    with torch.no_grad():
        expected = model.model(input_ids=ids, use_cache=False).last_hidden_state
    layout = layout_for(model_type)
    result = run_layerwise(model, layout, get_method("dense")(PruneConfig(method="dense")), ids, CPU, EngineSettings(), progress=False)
    with torch.no_grad():
        got = model.model.norm(result.final_hidden)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert all(b.rel_output_error == 0 for b in result.blocks)


def test_pass_through_detects_a_leaking_cache():
    """Guard for the guard: replaying blocks with a shared cache really changes the result,
    so the test above can fail."""
    from transformers import DynamicCache

    from hyperprune.engine.capture import capture_block_inputs

    model = tiny_model("llama")
    layout = layout_for("llama")
    ids = calib_ids(3)
    captured = capture_block_inputs(model, layout, ids, CPU, CPU)
    block = model.model.layers[0]
    clean = block(captured.hidden[1:2], **captured.kwargs)
    cache = DynamicCache(config=model.config)
    # The cache argument is `cache` from transformers 5.24 on, `past_key_values` before.
    cache_key = "cache" if "cache" in captured.kwargs else "past_key_values"
    leaky_kwargs = {**captured.kwargs, cache_key: cache, "use_cache": True}
    block(captured.hidden[0:1], **leaky_kwargs)
    leaky = block(captured.hidden[1:2], **leaky_kwargs)
    clean = clean[0] if isinstance(clean, tuple) else clean
    leaky = leaky[0] if isinstance(leaky, tuple) else leaky
    assert not torch.allclose(clean, leaky, atol=1e-4)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_every_method_yields_exact_nm_everywhere(method, pattern):
    model = tiny_model("llama")
    result = run(model, method, pattern)
    n, m = map(int, pattern.split(":"))
    params = dict(model.named_parameters())
    names = prunable_weight_names(model, layout_for("llama"))
    assert set(result.masks) == set(names)
    for name in names:
        weight = params[name].detach()
        assert count_nm_violations(weight, n, m) == 0, name
        assert torch.all(weight[~result.masks[name]] == 0)
        assert result.masks[name].sum() == weight.numel() * n // m
    assert len(result.layers) == 3 * len(COMPONENTS)
    for record in result.layers:
        assert record.sparsity == pytest.approx(1 - n / m, abs=1e-6)
        assert 0 < record.rel_error < 1


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_sparsity(method):
    model = tiny_model("llama")
    result = run(model, method, "0.6")
    for record in result.layers:
        assert record.sparsity == pytest.approx(0.6, abs=0.02)


def test_methods_rank_as_expected_on_block_error():
    """On the calibration data itself, data-aware methods reconstruct better than magnitude,
    and SparseGPT (which updates weights) best of all."""
    errors = {}
    for method in ["magnitude", "wanda", "sparsegpt"]:
        result = run(tiny_model("llama", seed=1), method, nsamples=8)
        errors[method] = sum(b.rel_output_error for b in result.blocks)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]


def test_wanda_uses_input_norms():
    """Scaling one input channel up must make Wanda keep its weights."""
    from hyperprune.numerics.statistics import InputStatistics, StatisticsKind
    from hyperprune.methods.wanda import Wanda

    linear = torch.nn.Linear(8, 4, bias=False)
    torch.nn.init.constant_(linear.weight, 1.0)
    linear.weight.data[:, 0] = 0.5  # smallest magnitude in its group...
    stats = InputStatistics(8, StatisticsKind.NORMS)
    x = torch.ones(10, 8)
    x[:, 0] = 100.0  # ...but the largest input
    stats.add(x)
    mask = Wanda(PruneConfig(method="wanda")).prune_linear(linear, stats, SparsityTarget(pattern="2:4"), "t")
    assert mask[:, 0].all()


def test_statistics_moments_and_hessian():
    from hyperprune.numerics.statistics import InputStatistics, StatisticsKind

    x = torch.randn(2, 50, 6)
    stats = InputStatistics(6, StatisticsKind.HESSIAN)
    stats.add(x[0])
    stats.add(x[1])
    flat = x.reshape(-1, 6)
    assert stats.n_tokens == 100
    assert torch.allclose(stats.hessian(), 2 * flat.T @ flat / 100, atol=1e-5)
    assert torch.allclose(stats.mean, flat.mean(0), atol=1e-6)
    assert torch.allclose(stats.variance, flat.var(0, unbiased=False), atol=1e-5)
    assert torch.allclose(stats.column_norms, flat.norm(dim=0), atol=1e-5)


def test_same_seed_same_masks():
    a = run(tiny_model("llama"), "sparsegpt")
    b = run(tiny_model("llama"), "sparsegpt")
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_registry_has_the_baselines_and_rejects_duplicates():
    from hyperprune.methods import register_method
    from hyperprune.methods.base import PruningMethod

    assert {"dense", "magnitude", "wanda", "sparsegpt"} <= set(METHODS)
    with pytest.raises(ValueError, match="twice"):
        register_method("wanda")(type("Again", (PruningMethod,), {}))


def test_activations_on_disk_give_the_same_result(tmp_path):
    in_memory = run(tiny_model("llama"), "sparsegpt")
    on_disk = run(tiny_model("llama"), "sparsegpt", activation_dir=tmp_path / "acts")
    assert {p.name for p in (tmp_path / "acts").iterdir()} == {"inputs.bin", "outputs.bin"}
    assert (tmp_path / "acts" / "inputs.bin").stat().st_size == 4 * 24 * 64 * 4  # nsamples x seqlen x hidden x fp32
    assert all(torch.equal(in_memory.masks[k], on_disk.masks[k]) for k in in_memory.masks)
    assert torch.equal(in_memory.final_hidden, on_disk.final_hidden)


def test_layer_errors_metered_on_the_first_windows_only_change_the_report():
    """The per-layer error is metered on the first ``layer_error_windows`` windows: the weights do
    not change, the subset's errors differ from all windows', and 0 meters every window."""

    results = {}
    for windows in (0, 1, 4):
        model = tiny_model("llama")
        config = PruneConfig(method="sparsegpt", nsamples=4)
        settings = EngineSettings(target=config.target, layer_error_windows=windows)
        result = run_layerwise(model, layout_for("llama"), get_method("sparsegpt")(config), calib_ids(4), CPU, settings,
                               progress=False)
        results[windows] = (result, {k: v.clone() for k, v in model.state_dict().items()})
    all_windows, one_window, four = results[0][0], results[1][0], results[4][0]
    for key, value in results[0][1].items():
        assert torch.equal(value, results[1][1][key]), key
    errors = lambda r: [layer.rel_error for layer in r.layers]  # noqa: E731
    assert errors(four) == errors(all_windows)  # 4 of 4 windows is every window
    assert errors(one_window) != errors(all_windows) and all(e > 0 for e in errors(one_window))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_finite_check_finds_one_bad_value_anywhere(dtype, bad):
    from hyperprune.engine.layerwise import NonFiniteError, all_finite, check_finite

    tensor = torch.randn(3, 5, 8).to(dtype)
    assert all_finite(tensor) and all_finite(torch.arange(4)) and all_finite(torch.empty(0))
    tensor[2, 4, 7] = bad
    assert not all_finite(tensor)
    with pytest.raises(NonFiniteError, match="block 3 component q"):
        check_finite(tensor, "weights", 3, "q")


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v carry a bias, which the energy leaves out
def test_the_output_energy_is_the_dense_layers_w_h_wt_diagonal(family):
    from hyperprune.methods.base import PruningMethod
    from hyperprune.numerics.statistics import StatisticsKind

    seen = []

    class Probe(PruningMethod):
        name = "probe"
        statistics = StatisticsKind.HESSIAN

        def prune_block(self, ctx):
            for role, linear in ctx.linears.items():
                W, H = linear.weight.detach().float(), ctx.statistics[role].hessian()
                seen.append((ctx.output_energy[role], ((W @ H) * W).sum(dim=1)))
            return {role: torch.ones_like(linear.weight, dtype=torch.bool) for role, linear in ctx.linears.items()}

    model = tiny_model(family, num_hidden_layers=2)
    with torch.no_grad():  # biases start at zero: give them values, so that leaving them out is tested
        for name, param in model.named_parameters():
            if name.endswith("proj.bias"):
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    config = PruneConfig(method="dense", target=SparsityTarget(pattern="2:4"))
    ids = torch.randint(0, model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    run_layerwise(model, layout_for(family), Probe(config), ids, torch.device("cpu"), config.engine_settings(),
                  progress=False)
    assert len(seen) == 14
    for hooked, product in seen:
        assert torch.allclose(hooked, product, rtol=1e-3, atol=1e-6)


def test_a_method_that_fails_leaves_the_block_exactly_dense_with_the_compact_copy():
    """The engine's copy to restore from is bf16 when that holds the weights exactly (a bf16
    checkpoint computed in float32), float32 otherwise; either way a failing method leaves the
    block's weights bit for bit as they were."""
    from hyperprune.engine.layerwise import _lossless_copy

    exact = torch.randn(8, 16).to(torch.bfloat16).float()
    assert _lossless_copy(exact).dtype == torch.bfloat16 and torch.equal(_lossless_copy(exact).float(), exact)
    inexact = exact + 1e-4
    assert _lossless_copy(inexact).dtype == torch.float32 and torch.equal(_lossless_copy(inexact), inexact)

    for rounded in (True, False):
        model = tiny_model("llama", seed=3)
        if rounded:
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.to(torch.bfloat16).float())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        config = PruneConfig(method="magnitude", target=SparsityTarget(pattern="2:4"), nsamples=2)
        method = get_method("magnitude")(config)

        def broken(ctx):
            for lin in ctx.linears.values():
                lin.weight.data.mul_(0.5)  # half done, then a failure
            raise RuntimeError("method failed")

        method.prune_block = broken
        with pytest.raises(RuntimeError, match="method failed"):
            run_layerwise(model, layout_for("llama"), method, torch.randint(0, 256, (2, 16)), torch.device("cpu"),
                          config.engine_settings(), progress=False)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
