"""The exact mask objective, the pattern-delta features and the least-squares refit."""

import pytest
import torch

from hyperprune.config import SparsityTarget
from hyperprune.masks import count_nm_violations, nm_patterns
from hyperprune.methods.hyperprune import objectives as obj
from hyperprune.numerics.refit import damped_hessian, lstsq_refit, quadratic_output_error
from hyperprune.methods.sparsegpt import sparsegpt_prune


def problem(rows=6, cols=16, samples=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, cols, generator=gen) @ torch.randn(cols, cols, generator=gen) * 0.3
    hessian = 2 * x.T @ x / samples
    weight = torch.randn(rows, cols, generator=gen)
    return weight, hessian, gen


def test_exact_objective_equals_the_monte_carlo_mean_of_hard_mask_losses():
    weight, hessian, gen = problem()
    patterns = nm_patterns(2, 4)
    blocks = obj.diagonal_blocks(hessian, 4)
    base = torch.randn(weight.shape, generator=gen) * 0.1
    probs = torch.softmax(torch.randn(weight.numel() // 4, 6, generator=gen) * 2, dim=1)
    costs = obj.pattern_costs(weight, blocks, patterns)
    exact = obj.expected_quadratic_error(weight, hessian, blocks, probs, patterns, costs, base)
    draws = 20000
    choice = torch.multinomial(probs, draws, replacement=True, generator=gen).T  # [draws, G]
    keep = patterns[choice].reshape(draws, *weight.shape)
    error = base + weight * (1 - keep)
    losses = torch.einsum("dri,ij,drj->d", error, hessian, error)
    mean, stderr = losses.mean(), losses.std() / draws**0.5
    assert abs(float(exact - mean)) < 4 * float(stderr)
    # The loss at E[M] (Theorem 1) misses the variance term: it is strictly smaller here.
    expected_mask = (probs @ patterns).reshape(weight.shape)
    at_mean = obj.quadratic_error(base + weight * (1 - expected_mask), hessian)
    assert at_mean < mean - 4 * stderr


def test_exact_objective_on_hard_probabilities_is_the_hard_loss():
    weight, hessian, gen = problem()
    patterns = nm_patterns(2, 4)
    blocks = obj.diagonal_blocks(hessian, 4)
    index = torch.randint(6, (weight.numel() // 4,), generator=gen)
    probs = torch.nn.functional.one_hot(index, 6).float()
    keep = patterns[index].reshape(weight.shape)
    exact = obj.expected_quadratic_error(weight, hessian, blocks, probs, patterns, obj.pattern_costs(weight, blocks, patterns))
    assert float(exact) == pytest.approx(float(obj.quadratic_error(weight * (1 - keep), hessian)), rel=1e-5)


def test_free_logits_on_the_exact_objective_end_with_no_fractional_group():
    weight, hessian, gen = problem(rows=8, cols=32)
    patterns = nm_patterns(2, 4)
    blocks = obj.diagonal_blocks(hessian, 4)
    costs = obj.pattern_costs(weight, blocks, patterns)
    logits = (torch.randn(weight.numel() // 4, 6, generator=gen) * 0.01).requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(600):
        probs = torch.softmax(logits, dim=1)
        loss = obj.expected_quadratic_error(weight, hessian, blocks, probs, patterns, costs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probs = torch.softmax(logits.detach(), dim=1)
    assert float(probs.max(dim=1).values.min()) > 0.99  # every group picked one pattern
    # and that hard mask is no worse than the magnitude mask
    keep = obj.hard_mask(logits.detach(), patterns).reshape(weight.shape)
    magnitude = torch.zeros_like(weight, dtype=torch.bool).view(-1, 4)
    magnitude.scatter_(1, weight.abs().view(-1, 4).topk(2, dim=1).indices, True)
    hard = obj.quadratic_error(weight * ~keep, hessian)
    assert hard <= obj.quadratic_error(weight * ~magnitude.view(weight.shape), hessian)


def test_pattern_deltas_are_the_exact_loss_changes_of_one_group():
    weight, hessian, gen = problem()
    patterns = nm_patterns(2, 4)
    blocks = obj.diagonal_blocks(hessian, 4)
    base = torch.randn(weight.shape, generator=gen) * 0.1
    index = torch.randint(6, (weight.numel() // 4,), generator=gen)
    keep = patterns[index].reshape(weight.shape).bool()
    delta = obj.pattern_delta_losses(weight, hessian, blocks, keep, patterns, base)

    def loss(k):
        e = base + weight * (~k)
        return ((e @ hessian) * e).sum(dim=1)

    now = loss(keep)
    for row, group, j in [(0, 0, 3), (2, 1, 5), (5, 3, 0), (1, 2, int(index[1 * 4 + 2]))]:
        changed = keep.clone()
        changed[row, group * 4 : group * 4 + 4] = patterns[j].bool()
        assert float(delta[row, group, j]) == pytest.approx(float(loss(changed)[row] - now[row]), rel=1e-4, abs=1e-5)
    assert torch.allclose(delta.gather(2, index.view(weight.shape[0], -1, 1)), torch.zeros(1), atol=1e-5)


def test_lstsq_refit_equals_torch_lstsq_per_row():
    weight, hessian, gen = problem(rows=5, cols=12, samples=200)
    keep = torch.rand(weight.shape, generator=gen) > 0.4
    keep[3] = False  # a row that keeps nothing
    damp = 0.05
    refit = lstsq_refit(weight, hessian, keep, damp)
    H = damped_hessian(hessian, damp)
    factor = torch.linalg.cholesky(H).T  # H = FᵀF, so (w − w′)ᵀH(w − w′) = ‖F(w − w′)‖²
    for row in range(weight.shape[0]):
        kept = keep[row].nonzero().squeeze(1)
        assert torch.all(refit[row][~keep[row]] == 0)
        if len(kept) == 0:
            continue
        direct = torch.linalg.lstsq(factor[:, kept], factor @ weight[row]).solution
        assert torch.allclose(refit[row, kept], direct, atol=1e-4)


def test_lstsq_refit_gives_the_same_weights_however_the_rows_are_chunked(monkeypatch):
    import hyperprune.numerics.refit as refit_module

    weight, hessian, gen = problem(rows=9, cols=16, samples=128)
    keep = torch.rand(weight.shape, generator=gen) > 0.5  # rows keep different counts
    whole = lstsq_refit(weight, hessian, keep, 0.05)
    monkeypatch.setattr(refit_module, "_SOLVE_BYTES", 8 * 8 * 4 * 2)  # two 8×8 systems at a time
    chunked = lstsq_refit(weight, hessian, keep, 0.05)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert whole.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lstsq_refit_is_never_worse_than_obs_on_the_same_mask(seed):
    weight, hessian, _ = problem(rows=16, cols=32, samples=256, seed=seed)
    target = SparsityTarget(pattern="2:4")
    obs = sparsegpt_prune(weight, hessian, target)
    refit = lstsq_refit(weight, hessian, obs.mask, 0.01)
    assert count_nm_violations(refit, 2, 4) == 0
    H = damped_hessian(hessian, 0.01)  # the objective both minimize
    obs_error = quadratic_output_error(weight, obs.weight, H)
    lstsq_error = quadratic_output_error(weight, refit, H)
    assert torch.all(lstsq_error <= obs_error * (1 + 1e-5))
    assert lstsq_error.sum() < obs_error.sum() * 0.99


def test_gumbel_noise_makes_relaxed_masks_reproducible():
    logits = torch.randn(10, 6)
    noise = obj.gumbel_noise(logits.shape, torch.Generator().manual_seed(3), logits.device)
    a = obj.relaxed_mask(logits, nm_patterns(2, 4), 0.5, noise=noise)
    b = obj.relaxed_mask(logits, nm_patterns(2, 4), 0.5, gumbel=True, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b)
