import logging

import pytest
import torch

from hyperprune.config import HessianOptions, SparseGPTOptions, SparsityTarget
from hyperprune.errors import HyperpruneError
from hyperprune.masks import count_nm_violations
from hyperprune.methods.sparsegpt import inverse_hessian_cholesky, sparsegpt_prune


def layer_problem(rows=6, cols=16, tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs, so the weight update has something to exploit.
    mix = torch.randn(cols, cols, generator=g) * 0.5 + torch.eye(cols)
    X = torch.randn(tokens, cols, generator=g) @ mix
    W = torch.randn(rows, cols, generator=g)
    H = 2 * X.T @ X / tokens
    return W, X, H


def output_error(W, W_hat, X):
    return float(((X @ (W - W_hat).T) ** 2).sum())


def optimal_error_for_mask(W, X, mask):
    """Brute-force optimum: per row, least squares over the kept weights only."""
    total = 0.0
    for r in range(W.shape[0]):
        keep = mask[r]
        target = X @ W[r]
        coef = torch.linalg.lstsq(X[:, keep].double(), target.double().unsqueeze(1)).solution.squeeze(1)
        total += float(((X[:, keep].double() @ coef - target.double()) ** 2).sum())
    return total


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_update_beats_masking_and_respects_the_pattern(pattern):
    W, X, H = layer_problem()
    target = SparsityTarget(pattern=pattern)
    result = sparsegpt_prune(W, H, target, HessianOptions(blocksize=8, percdamp=1e-6))
    n, m = target.pattern.n, target.pattern.m
    assert count_nm_violations(result.weight, n, m) == 0
    assert torch.all(result.weight[~result.mask] == 0)
    assert torch.all(result.mask.reshape(-1, m).sum(dim=1) == n)
    with_update = output_error(W, result.weight, X)
    masked_only = output_error(W, W * result.mask, X)
    optimum = optimal_error_for_mask(W, X, result.mask)
    assert optimum <= with_update * (1 + 1e-4)
    assert with_update < masked_only
    # The summed OBS losses predict the layer's output error: ½·tr(ΔW H ΔWᵀ) = ‖ΔW X‖² / n.
    assert result.loss == pytest.approx(with_update / X.shape[0], rel=1e-3)


def test_mask_selection_beats_magnitude_on_the_layer_objective():
    W, X, H = layer_problem(seed=3)
    result = sparsegpt_prune(W, H, SparsityTarget(pattern="2:4"))
    from hyperprune.masks import nm_mask_from_scores

    magnitude_mask = nm_mask_from_scores(W.abs(), 2, 4)
    assert output_error(W, result.weight, X) < output_error(W, W * magnitude_mask, X)


def test_unstructured_sparsity_fraction():
    W, X, H = layer_problem(rows=8, cols=32)
    result = sparsegpt_prune(W, H, SparsityTarget(sparsity=0.5), HessianOptions(blocksize=16))
    assert float((result.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert output_error(W, result.weight, X) < output_error(W, W * result.mask, X)


def test_blocksize_does_not_change_the_result_much():
    W, X, H = layer_problem()
    target = SparsityTarget(pattern="2:4")
    a = sparsegpt_prune(W, H, target, HessianOptions(blocksize=4))
    b = sparsegpt_prune(W, H, target, HessianOptions(blocksize=128))
    # Lazy batching is an exact reordering of the same updates.
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.weight, b.weight, atol=1e-4)


def test_dead_inputs_are_pruned_without_breaking_the_factorisation():
    W, X, H = layer_problem()
    X[:, 3] = 0
    H = 2 * X.T @ X / X.shape[0]
    result = sparsegpt_prune(W, H, SparsityTarget(pattern="2:4"))
    assert torch.all(result.weight[:, 3] == 0)
    assert torch.isfinite(result.weight).all()


def test_cholesky_failure_retries_with_more_dampening(caplog):
    # An indefinite matrix: 1% dampening cannot fix a -0.5 eigenvalue, 10%... neither, 100% can.
    H = torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.5]))
    with caplog.at_level(logging.WARNING):
        _, used = inverse_hessian_cholesky(H, percdamp=0.01, max_retries=4, where="block 0 q")
    assert used == pytest.approx(1.0)
    assert "Cholesky decomposition failed for block 0 q" in caplog.text


def test_cholesky_failure_gives_a_clear_error_when_retries_run_out():
    H = torch.diag(torch.tensor([1.0, 1.0, -5.0, 1.0]))
    with pytest.raises(HyperpruneError, match="--nsamples.*--percdamp"):
        inverse_hessian_cholesky(H, percdamp=0.01, max_retries=1, where="block 2 down")


def test_sparsegpt_with_the_lstsq_refit_keeps_its_mask_and_reaches_the_optimum():
    from torch import nn

    from hyperprune.config import PruneConfig
    from hyperprune.numerics.statistics import InputStatistics, StatisticsKind
    from hyperprune.methods import get_method

    W, X, H = layer_problem(rows=8, cols=16, tokens=400)
    target = SparsityTarget(pattern="2:4")
    stats = InputStatistics(16, StatisticsKind.HESSIAN)
    stats.add(X.unsqueeze(0))
    results = {}
    for name in ("sparsegpt", "sparsegpt+lstsq"):
        linear = nn.Linear(16, 8, bias=False)
        linear.weight.data.copy_(W)
        options = SparseGPTOptions(lstsq_damp=1e-6)
        method = get_method(name)(PruneConfig(method=name, sparsegpt=options))
        mask = method.prune_linear(linear, stats, target, "test")
        results[name] = (mask, linear.weight.detach().clone())
    assert torch.equal(results["sparsegpt"][0], results["sparsegpt+lstsq"][0])  # the same mask
    mask, refit = results["sparsegpt+lstsq"]
    assert torch.all(refit[~mask] == 0)
    optimum = optimal_error_for_mask(W, X, mask)
    assert output_error(W, refit, X) == pytest.approx(optimum, rel=1e-3)
    assert output_error(W, results["sparsegpt"][1], X) > optimum * 1.01
