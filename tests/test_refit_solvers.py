"""The exact refit by masked CG and by Cholesky, and ADMM (as a method and as an update for a mask)."""

from __future__ import annotations

import json

import pytest
import torch

from hyperprune.cli import main
from hyperprune.config import HessianOptions, SparsityTarget
from hyperprune.masks import count_nm_violations
from hyperprune.methods.sparsegpt import sparsegpt_prune
from hyperprune.numerics.admm_solver import admm_factor, admm_prune, cubic_sparsity, gradual_keep_mask
from hyperprune.numerics.least_squares import damped_hessian
from hyperprune.numerics.refit import (
    exact_refit,
    lstsq_refit,
    masked_cg_refit,
    quadratic_output_error,
    stacked_exact_refit,
)


def masked_problem(rows=12, cols=32, tokens=256, seed=0, outliers=True):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * 0.4 + torch.eye(cols)
    scale = torch.exp(torch.randn(cols, generator=g))
    if outliers:  # LLM-like: a few massive channels make H badly conditioned
        scale[:2] *= 20
    X = torch.randn(tokens, cols, generator=g) @ mix * scale
    W = torch.randn(rows, cols, generator=g)
    H = 2 * X.T @ X / tokens
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    keep.view(rows, -1, 4).scatter_(2, torch.rand(rows, cols // 4, 4, generator=g).argsort(-1)[..., :2], True)
    return W, H, keep


def direct_solution(W, H, keep, damp):
    """Per row, torch.linalg.lstsq on the kept set of the damped normal equations, in float64."""
    Hd = damped_hessian(H, damp).double()
    out = torch.zeros_like(W, dtype=torch.float64)
    for r in range(W.shape[0]):
        S = keep[r]
        rhs = (W[r].double() @ Hd)[S]
        out[r, S] = torch.linalg.lstsq(Hd[S][:, S], rhs.unsqueeze(1)).solution.squeeze(1)
    return out


@pytest.mark.parametrize("outliers", [False, True])
def test_cg_matches_a_direct_solve_within_its_tolerance_and_keeps_pruned_weights_zero(outliers):
    W, H, keep = masked_problem(outliers=outliers)
    reference = direct_solution(W, H, keep, 0.01)
    result = masked_cg_refit(W, H, keep, 0.01, tol=1e-6, max_iter=500)
    assert result.iterations < 500 and result.residual <= 1e-6
    assert torch.all(result.weight[~keep] == 0)
    assert torch.allclose(result.weight.double(), reference, rtol=1e-3, atol=1e-4 * float(reference.abs().max()))
    # The error from the residual equals the one computed from the weights.
    assert torch.allclose(result.error, quadratic_output_error(W, result.weight, H), rtol=1e-3)
    # Cholesky gives the same solution.
    assert torch.allclose(lstsq_refit(W, H, keep, 0.01).double(), reference, rtol=1e-3, atol=1e-4 * float(reference.abs().max()))


def test_the_inverse_preconditioner_needs_fewer_iterations_for_the_same_solution():
    W, H, keep = masked_problem(rows=16, cols=64, tokens=512)
    jacobi = masked_cg_refit(W, H, keep, 0.01, tol=1e-6, max_iter=500, preconditioner="jacobi")
    inverse = masked_cg_refit(W, H, keep, 0.01, tol=1e-6, max_iter=500, preconditioner="inverse")
    assert inverse.iterations < jacobi.iterations
    assert float(inverse.error.sum()) == pytest.approx(float(jacobi.error.sum()), rel=1e-4)
    assert torch.allclose(inverse.weight, jacobi.weight, rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="inverse or jacobi"):
        masked_cg_refit(W, H, keep, 0.01, preconditioner="ilu")


def test_a_loose_tolerance_stops_early_and_the_cap_is_respected():
    W, H, keep = masked_problem()
    loose = masked_cg_refit(W, H, keep, 0.01, tol=1e-1, max_iter=500)
    tight = masked_cg_refit(W, H, keep, 0.01, tol=1e-6, max_iter=500)
    capped = masked_cg_refit(W, H, keep, 0.01, tol=1e-12, max_iter=3)
    assert loose.iterations < tight.iterations and loose.residual <= 1e-1
    assert capped.iterations == 3 and capped.residual > 1e-12
    assert float(tight.error.sum()) <= float(loose.error.sum())


def test_a_warm_start_from_sparsegpt_begins_closer_and_ends_at_the_same_solution():
    W, H, keep = masked_problem(rows=16, cols=64)
    target = SparsityTarget(pattern="2:4")
    obs = sparsegpt_prune(W, H, target, HessianOptions(blocksize=16))
    one_cold = masked_cg_refit(W, H, obs.mask, 0.01, tol=1e-9, max_iter=1)
    one_warm = masked_cg_refit(W, H, obs.mask, 0.01, tol=1e-9, max_iter=1, start=obs.weight)
    assert one_warm.residual < one_cold.residual
    cold = masked_cg_refit(W, H, obs.mask, 0.01, tol=1e-6, max_iter=500)
    warm = masked_cg_refit(W, H, obs.mask, 0.01, tol=1e-6, max_iter=500, start=obs.weight)
    assert torch.allclose(warm.weight, cold.weight, rtol=1e-3, atol=1e-4)


def test_stacked_layers_solve_as_one_problem_with_the_same_answer():
    W, H, keep = masked_problem(rows=24)
    parts = stacked_exact_refit([W[:8], W[8:]], H, [keep[:8], keep[8:]], 0.01, "cg", 1e-7, 500)
    alone = exact_refit(W, H, keep, 0.01, "cg", 1e-7, 500)
    assert [p.weight.shape[0] for p in parts] == [8, 16]
    assert torch.allclose(torch.cat([p.weight for p in parts]), alone.weight, rtol=1e-4, atol=1e-5)
    assert parts[0].iterations == parts[1].iterations == alone.iterations
    cholesky = stacked_exact_refit([W[:8], W[8:]], H, [keep[:8], keep[8:]], 0.01, "lstsq")
    assert cholesky[0].iterations is None
    with pytest.raises(ValueError, match="cg or lstsq"):
        exact_refit(W, H, keep, 0.01, "qr")


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_admm_is_exactly_n_m_and_no_worse_than_sparsegpt(pattern):
    W, H, _ = masked_problem(rows=16, cols=64, tokens=512, outliers=False)
    target = SparsityTarget(pattern=pattern)
    result = admm_prune(W, admm_factor(H, 0.1, 1.0), target)
    n, m = target.pattern.n, target.pattern.m
    assert count_nm_violations(result.weight, n, m) == 0
    assert torch.all(result.mask.view(-1, m).sum(1) == n)
    assert torch.all(result.weight[~result.mask] == 0)
    sparsegpt = sparsegpt_prune(W, H, target, HessianOptions(blocksize=16))
    admm_error = float(quadratic_output_error(W, result.weight, H).sum())
    sparsegpt_error = float(quadratic_output_error(W, sparsegpt.weight, H).sum())
    assert admm_error <= sparsegpt_error


def test_admm_as_an_update_keeps_the_mask_and_improves_on_masking():
    W, H, keep = masked_problem(rows=16, cols=64, tokens=512)
    updated = admm_prune(W, admm_factor(H, 0.1, 1.0), SparsityTarget(pattern="2:4"), keep=keep)
    assert torch.equal(updated.mask, keep) and torch.all(updated.weight[~keep] == 0)
    assert float(quadratic_output_error(W, updated.weight, H).sum()) < float(quadratic_output_error(W, W * keep, H).sum())


def test_the_gradual_schedule_protects_the_n_largest_and_ends_at_the_pattern():
    assert cubic_sparsity(14, 15, 0.5) == pytest.approx(0.5)
    assert 0 < cubic_sparsity(0, 15, 0.5) < cubic_sparsity(5, 15, 0.5) < 0.5
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.1, 0.2, 9.0, 8.0]])
    target = SparsityTarget(pattern="2:4")
    # 2 of 8 pruned: the globally smallest unprotected (0.1 and 0.2), though 1.0 and 2.0 are unprotected too
    assert gradual_keep_mask(scores, target, 0.25).tolist() == [[True, True, True, True, False, False, True, True]]
    assert gradual_keep_mask(scores, target, 0.375).tolist() == [[True, True, True, False, False, False, True, True]]
    assert gradual_keep_mask(scores, target, 0.5).tolist() == [[True, True, False, False, False, False, True, True]]
    unstructured = gradual_keep_mask(scores, SparsityTarget(sparsity=0.5), 0.5)
    assert unstructured.sum() == 4 and unstructured[0, 6] and not unstructured[0, 4]


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_refit_methods_from_the_cli_reach_the_report(tmp_path, tiny_model_dir, calib_file, capsys):
    base = ["prune", "--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "4", "--seqlen", "32",
            "--quiet"]
    weights = {}
    for name, extra in (("cg", ["--method", "sparsegpt+lstsq"]),
                        ("lstsq", ["--method", "sparsegpt+lstsq", "--refit-method", "lstsq"]),
                        ("admm", ["--method", "admm", "--admm-final-refit", "lstsq", "--refit-tol", "1e-5"]),
                        ("sparsegpt-admm", ["--method", "sparsegpt+admm"])):
        out = tmp_path / name
        assert main([*base, *extra, "--output", str(out)]) == 0, capsys.readouterr().err
        report = _report(out)
        assert report["nm_valid"] is True
        weights[name] = report
    cg_layers = weights["cg"]["layers"]
    assert all(layer["info"]["refit_iterations"] >= 1 for layer in cg_layers)
    assert weights["cg"]["config"]["refit"]["method"] == "cg"
    assert "refit_iterations" not in weights["lstsq"]["layers"][0]["info"]
    assert weights["admm"]["config"]["refit"]["tol"] == 1e-5
    assert weights["admm"]["config"]["options"]["admm"]["final_refit"] == "lstsq"
    assert weights["sparsegpt-admm"]["config"]["options"]["sparsegpt"]["refit"] == "admm"
    # CG and Cholesky solve the same problem: the block errors agree closely.
    for a, b in zip(weights["cg"]["blocks"], weights["lstsq"]["blocks"]):
        assert a["rel_output_error"] == pytest.approx(b["rel_output_error"], rel=1e-2, abs=1e-6)


def test_refit_flags_are_refused_for_methods_without_a_refit(tmp_path, tiny_model_dir, calib_file, capsys):
    out = tmp_path / "out"
    code = main(["prune", "--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "2", "--seqlen", "32",
                 "--quiet", "--method", "wanda", "--refit-method", "cg", "--output", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "--refit-method applies to methods that refit" in err and not out.exists()
