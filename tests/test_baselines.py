"""The paper's other one-shot baselines: RIA and Pruner-Zero."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import load_benchmark, tiny_model
from hyperprune.cli import main
from hyperprune.numerics.gradients import weight_gradient_norms
from hyperprune.masks import count_nm_violations
from hyperprune.methods.scoring import minmax, pruner_zero_scores, ria_scores
from hyperprune.models import layout_for
from test_resume import NLAYERS, assert_bit_identical, model_dir, prune_args, run_subprocess  # noqa: F401


def test_ria_scores_by_hand():
    weight = torch.tensor([[1.0, -3.0], [2.0, 2.0]])
    norms = torch.tensor([4.0, 9.0])
    # |W|/row sums: [[1/4, 3/4], [1/2, 1/2]]; |W|/column sums: [[1/3, 3/5], [2/3, 2/5]]; ‖x‖^0.5 = [2, 3]
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2, (3 / 4 + 3 / 5) * 3], [(1 / 2 + 2 / 3) * 2, (1 / 2 + 2 / 5) * 3]])
    assert torch.allclose(ria_scores(weight, norms, 0.5), expected)


def test_ria_differs_from_wanda_where_a_row_is_heavy():
    """A weight that is small in absolute terms but large within its light row is kept by RIA."""
    from hyperprune.methods.scoring import wanda_scores

    weight = torch.tensor([[10.0, 9.0, 8.0, 7.0], [0.1, 0.4, 0.3, 0.2]])
    norms = torch.ones(4)
    assert torch.equal(ria_scores(weight, norms).argsort(dim=1), weight.abs().argsort(dim=1))  # rows keep their order
    column_share = ria_scores(weight, norms)[1] - weight[1].abs() / weight[1].abs().sum()
    assert torch.all(column_share > 0) and not torch.equal(ria_scores(weight, norms), wanda_scores(weight, norms))


def test_minmax_and_pruner_zero_scores():
    assert torch.equal(minmax(torch.tensor([2.0, 4.0, 3.0])), torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(minmax(torch.full((3,), 7.0)), torch.zeros(3))
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    gradient = torch.tensor([[0.0, -1.0, 0.5, 1.0]])
    assert torch.allclose(pruner_zero_scores(weight, gradient), torch.tensor([[0.0, 4.0, 4.5, 0.25]]))


def test_gradient_norms_are_the_l2_norm_over_windows_of_per_window_gradients():
    model = tiny_model("llama")
    layout = layout_for("llama")
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))
    norms = weight_gradient_norms(model, layout, ids, torch.device("cpu"), progress=False)
    assert len(norms) == 3 * 7 and all(p.grad is None for p in model.parameters()) and not model.training
    name = "model.layers.1.mlp.down_proj.weight"
    weight = dict(model.named_parameters())[name]
    total = torch.zeros_like(weight)
    for s in range(3):
        model.zero_grad()
        model(input_ids=ids[s : s + 1], labels=ids[s : s + 1]).loss.backward()
        total += weight.grad.pow(2)
    assert torch.allclose(norms[name], total.sqrt(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["ria", "pruner-zero"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
def test_new_baselines_prune_exact_nm(tmp_path, tiny_model_dir, calib_file, method, pattern):
    out = tmp_path / "out"
    assert main(["prune", "--model", str(tiny_model_dir), "--method", method, "--pattern", pattern, "--calib",
                 str(calib_file), "--nsamples", "4", "--seqlen", "32", "--no-stream", "--output", str(out), "--quiet"]) == 0
    assert main(["verify", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    n, m = map(int, pattern.split(":"))
    assert report["nm_valid"] and report["global_sparsity"] == pytest.approx(1 - n / m, abs=1e-6)


def test_new_baselines_rank_on_block_error(tmp_path, tiny_model_dir, calib_file):
    out = tmp_path / "c.json"
    assert main(["compare", "--model", str(tiny_model_dir), "--methods", "magnitude,ria,pruner-zero,wanda",
                 "--calib", str(calib_file), "--nsamples", "8", "--seqlen", "32", "--eval", str(calib_file),
                 "--eval-windows", "2", "--quiet", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["methods"]
    # Activation-aware scores beat plain magnitude on the calibration data.
    assert rows["ria"]["mean_block_rel_output_error"] < rows["magnitude"]["mean_block_rel_output_error"]
    assert rows["pruner-zero"]["mean_block_rel_output_error"] != rows["magnitude"]["mean_block_rel_output_error"]


def test_pruner_zero_refuses_to_stream(tmp_path, tiny_model_dir, calib_file, capsys):
    args = ["prune", "--model", str(tiny_model_dir), "--method", "pruner-zero", "--calib", str(calib_file),
            "--nsamples", "2", "--seqlen", "16", "--stream", "--output", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--no-stream" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- MaskPro
from hyperprune.config import MaskProOptions  # noqa: E402
from hyperprune.masks import nm_mask_from_scores  # noqa: E402
from hyperprune.methods.maskpro import row_errors, sample_without_replacement, train_mask_logits  # noqa: E402


def test_sampling_without_replacement_keeps_n_and_its_probabilities_sum_to_one():
    import itertools

    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0]], requires_grad=True)
    keep, log_prob = sample_without_replacement(logits, 2, torch.Generator().manual_seed(0))
    assert keep.sum() == 2 and log_prob.shape == (1,)
    # Every ordered draw's probability, from the same formula, sums to one.
    total = 0.0
    p = torch.softmax(logits.detach()[0], 0)
    for i, j in itertools.permutations(range(4), 2):
        total += float(p[i] * p[j] / (1 - p[i]))
    assert total == pytest.approx(1.0, abs=1e-6)
    # n = 1: the draw follows softmax(logits).
    many = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(20000, 1)
    keep, log_prob = sample_without_replacement(many, 1, torch.Generator().manual_seed(1))
    assert torch.allclose(keep.float().mean(0), torch.softmax(many[0], 0), atol=0.015)
    assert torch.allclose(log_prob, torch.log_softmax(many, 1)[keep])


def test_row_errors_is_the_quadratic_error_of_the_removed_weights():
    torch.manual_seed(0)
    x = torch.randn(50, 8)
    H = x.T @ x
    W = torch.randn(3, 8)
    keep = torch.rand(3, 8) > 0.5
    expected = ((x @ (W * ~keep).T) ** 2).sum(0)
    assert torch.allclose(row_errors(W, keep, H), expected, rtol=1e-4)


def test_policy_gradient_improves_on_a_poor_prior():
    torch.manual_seed(0)
    x = torch.randn(400, 16) @ torch.randn(16, 16)  # correlated inputs: magnitude is a poor mask here
    H = 2 * x.T @ x / 400
    W = torch.randn(8, 16)
    prior = torch.zeros(8, 16, dtype=torch.bool).view(-1, 4)
    prior.scatter_(1, W.abs().view(-1, 4).topk(2, dim=1).indices, True)
    prior = prior.view(8, 16)
    options = MaskProOptions(steps=150, samples=8, lr=0.3, init_scale=1.0)
    keep, info = train_mask_logits(W, H, prior, 2, 4, options, torch.Generator().manual_seed(0))
    assert keep.view(-1, 4).sum(dim=1).eq(2).all()
    assert info["rel_error"] < 0.9 * info["prior_rel_error"] and info["changed_from_prior"] > 0


def test_a_row_never_ends_worse_than_its_prior_even_when_the_policy_wanders():
    # A good prior and a learning rate high enough for Adam's steps to randomize the logits:
    # the learned mask is worse on most rows, and those rows keep the prior.
    torch.manual_seed(0)
    x = torch.randn(2000, 64) * torch.linspace(0.2, 3, 64)
    H = 2 * x.T @ x / 2000
    W = torch.randn(32, 64)
    prior = nm_mask_from_scores(W.abs() * H.diag().sqrt(), 2, 4)
    options = MaskProOptions(steps=10, samples=4, lr=0.5, init_scale=3.0)
    keep, info = train_mask_logits(W, H, prior, 2, 4, options, torch.Generator().manual_seed(0))
    assert info["learned_rel_error"] > info["prior_rel_error"]  # the wandering the guard is for
    assert info["rows_kept_prior"] > 0
    assert (row_errors(W, keep, H) <= row_errors(W, prior, H) * (1 + 1e-6)).all()
    assert info["rel_error"] <= info["prior_rel_error"]
    assert keep.view(-1, 4).sum(dim=1).eq(2).all()


def test_maskpro_in_the_engine_is_exact_nm_and_resumes_bit_identically(tmp_path, model_dir, calib_file):
    extra = ["--method", "maskpro", "--maskpro-steps", "4", "--maskpro-samples", "2"]
    reference = tmp_path / "reference"
    assert main([*prune_args(model_dir, calib_file, reference), *extra]) == 0
    assert main(["verify", str(reference)]) == 0
    report = json.loads((reference / "report.json").read_text())
    assert all("prior_rel_error" in layer["info"] for layer in report["layers"])
    out = tmp_path / "killed"
    block = random.randrange(NLAYERS)
    killed = run_subprocess([*prune_args(model_dir, calib_file, out), *extra], {"HYPERPRUNE_FAULT": f"{block}:mid_block"})
    assert killed.returncode == -9, killed.stderr[-500:]
    assert main([*prune_args(model_dir, calib_file, out), *extra, "--resume"]) == 0
    assert_bit_identical(reference, out)


# ---------------------------------------------------------------- MaskLLM
def _calibration_lm_loss(model, masks, ids):
    import copy

    pruned = copy.deepcopy(model)
    params = dict(pruned.named_parameters())
    with torch.no_grad():
        for name, keep in masks.items():
            params[name].mul_(keep)
        return sum(float(pruned(input_ids=ids[i : i + 1], labels=ids[i : i + 1]).loss) for i in range(ids.shape[0]))


def test_soft_pattern_mask_mixes_patterns_and_hardens_as_tau_falls():
    from hyperprune.masks import nm_patterns
    from hyperprune.methods.maskllm import logits_from_prior, soft_pattern_mask

    patterns = nm_patterns(2, 4)
    prior = torch.tensor([[True, False, True, False]])
    logits = logits_from_prior(prior, patterns, 3.0)
    assert int(logits.argmax()) == patterns.tolist().index([1.0, 0.0, 1.0, 0.0])
    soft = soft_pattern_mask(logits, torch.zeros_like(logits), 1.0, 1.0, patterns)
    assert soft.sum() == pytest.approx(2.0) and 0 < soft.min() and soft.max() < 1
    hard = soft_pattern_mask(logits, torch.zeros_like(logits), 0.01, 1.0, patterns)
    assert torch.allclose(hard, prior.float(), atol=1e-6)


def test_linear_anneal_by_hand():
    from hyperprune.methods.maskllm import linear_anneal

    assert [linear_anneal(1.0, 5.0, step, 5) for step in range(5)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert linear_anneal(1.0, 0.05, 0, 1) == 1.0  # a one-step run stays at the start


def test_maskllm_anneals_kappa_when_asked(monkeypatch):
    import hyperprune.methods.maskllm as maskllm
    from hyperprune.cli import build_parser
    from hyperprune.engine.whole_model_pass import whole_model_pass
    from hyperprune.config import MaskLLMOptions, PruneConfig

    from hyperprune.cli.main import config_from_args

    args = build_parser().parse_args(["prune", "--model", "m", "--output", "o", "--method", "maskllm",
                                      "--maskllm-logit-scale-final", "5"])
    assert maskllm.MaskLLM(config_from_args(args, "maskllm")).options.logit_scale_final == 5.0
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    kappas: list[float] = []
    real = maskllm.soft_pattern_mask
    monkeypatch.setattr(maskllm, "soft_pattern_mask", lambda *a: kappas.append(a[3]) or real(*a))
    for final, expected in ((None, [1.0, 1.0, 1.0]), (5.0, [1.0, 3.0, 5.0])):
        kappas.clear()
        config = PruneConfig(method="maskllm", nsamples=4, maskllm=MaskLLMOptions(steps=3, logit_scale_final=final))
        model = tiny_model("llama")
        method = maskllm.MaskLLM(config)
        method.compute_masks(whole_model_pass(config, model, layout_for("llama"), ids, torch.device("cpu"), False))
        per_step = len(kappas) // 3  # one call per prunable weight per step
        assert kappas[::per_step] == expected


def test_maskllm_starts_at_its_prior_and_training_lowers_the_lm_loss():
    from hyperprune.config import MaskLLMOptions, PruneConfig
    from hyperprune.methods.maskllm import MaskLLM
    from hyperprune.engine.whole_model_pass import one_shot_masks, whole_model_pass

    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    layout, cpu = layout_for("llama"), torch.device("cpu")
    model = tiny_model("llama")
    untrained = MaskLLM(PruneConfig(method="maskllm", nsamples=8, maskllm=MaskLLMOptions(steps=0)))
    prior = one_shot_masks("sparsegpt", untrained.config, model, layout, ids, cpu)
    start = untrained.compute_masks(whole_model_pass(untrained.config, model, layout, ids, cpu, False))
    assert all(torch.equal(start[name], prior[name]) for name in prior)
    trained = MaskLLM(PruneConfig(method="maskllm", nsamples=8, maskllm=MaskLLMOptions(steps=30, lr=0.3)))
    masks = trained.compute_masks(whole_model_pass(trained.config, model, layout, ids, cpu, False))
    assert all(m.reshape(-1, 4).sum(dim=1).eq(2).all() for m in masks.values())
    assert _calibration_lm_loss(model, masks, ids) < _calibration_lm_loss(model, prior, ids) - 0.5
    assert trained.whole_model_info["tokens"] == 30 * 32


def test_maskllm_read_off_at_every_step_starts_at_the_prior_and_ends_at_the_result():
    from hyperprune.config import MaskLLMOptions, PruneConfig
    from hyperprune.methods.maskllm import MaskLLM
    from hyperprune.engine.whole_model_pass import one_shot_masks, whole_model_pass

    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    layout, cpu = layout_for("llama"), torch.device("cpu")
    model = tiny_model("llama")
    method = MaskLLM(PruneConfig(method="maskllm", nsamples=8, maskllm=MaskLLMOptions(steps=4, lr=0.3)))
    seen: dict[int, dict[str, torch.Tensor]] = {}
    method.on_step = lambda step, read_off: seen.__setitem__(step, read_off())
    masks = method.compute_masks(whole_model_pass(method.config, model, layout, ids, cpu, False))
    assert sorted(seen) == [0, 1, 2, 3, 4]
    prior = one_shot_masks("sparsegpt", method.config, model, layout, ids, cpu)
    assert all(torch.equal(seen[0][name], prior[name]) for name in prior)
    assert all(torch.equal(seen[4][name], masks[name]) for name in masks)
    assert any(not torch.equal(seen[4][name], prior[name]) for name in prior)  # it did move


def test_maskllm_curve_script_ends_at_what_compare_measures(tmp_path, tiny_model_dir, calib_file):
    curve = load_benchmark("maskllm_curve")
    flags = ["--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "4", "--seqlen", "32",
             "--pattern", "2:4", "--maskllm-steps", "3", "--maskllm-lr", "0.3", "--eval", str(calib_file),
             "--eval-windows", "2", "--quiet"]
    assert curve.main([*flags, "--at", "0,3", "--json", str(tmp_path / "curve.json")]) == 0
    points = json.loads((tmp_path / "curve.json").read_text())["points"]
    assert [p["step"] for p in points] == [0, 3] and points[1]["tokens"] == 3 * 32
    assert points[0]["groups_changed_from_prior"] == 0 and 0 < points[1]["groups_changed_from_prior"] < 1
    assert main(["compare", "--methods", "maskllm", *flags, "--json", str(tmp_path / "compare.json")]) == 0
    measured = json.loads((tmp_path / "compare.json").read_text())["methods"]["maskllm"]["ppl_by_eval"]
    assert points[1]["ppl_by_eval"][str(calib_file)] == pytest.approx(measured[str(calib_file)], rel=1e-5)
    with pytest.raises(SystemExit):
        curve.main([*flags, "--at", "0,9"])


def test_gradient_agreement_by_hand():
    snr = load_benchmark("maskllm_gradient_snr")
    a = torch.tensor([1.0, -2.0, 0.0, 3.0])
    assert snr.agreement(a, 2 * a) == pytest.approx({"cosine": 1.0, "sign_agreement": 1.0})
    assert snr.agreement(a, -a) == pytest.approx({"cosine": -1.0, "sign_agreement": 0.0})
    # the zero is left out of the sign share: of the other three, two agree
    assert snr.agreement(a, torch.tensor([1.0, 2.0, 5.0, 1.0]))["sign_agreement"] == pytest.approx(2 / 3)


def test_maskllm_gradient_snr_script_on_a_tiny_model(tmp_path, tiny_model_dir, calib_file):
    snr = load_benchmark("maskllm_gradient_snr")
    flags = ["--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "4", "--seqlen", "32",
             "--pattern", "2:4", "--quiet"]
    assert snr.main([*flags, "--sizes", "1,2", "--json", str(tmp_path / "snr.json")]) == 0
    out = json.loads((tmp_path / "snr.json").read_text())
    assert [s["windows_per_set"] for s in out["sets"]] == [1, 2] and len(out["losses"]) == 4
    for row in out["sets"]:
        assert -1 <= row["cosine"] <= 1 and 0 <= row["sign_agreement"] <= 1 and row["cosine"] != 0
    with pytest.raises(SystemExit):  # two disjoint sets of 3 need 6 windows
        snr.main([*flags, "--sizes", "3"])


def test_maskllm_refuses_a_model_over_its_memory_limit(tmp_path, tiny_model_dir, calib_file, capsys):
    args = ["prune", "--model", str(tiny_model_dir), "--method", "maskllm", "--maskllm-max-memory-gib", "0.0001",
            "--calib", str(calib_file), "--nsamples", "2", "--seqlen", "16", "--no-stream", "--output", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "GiB" in err and "--maskllm-max-memory-gib" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method,flags", [("maskllm", ["--maskllm-steps", "3"]), ("pruner-zero", []),
                                          ("proxsparse", ["--proxsparse-steps", "3"])])
def test_whole_model_methods_resume_bit_identically(tmp_path, model_dir, calib_file, method, flags, monkeypatch):
    extra = ["--method", method, "--no-stream", *flags]
    reference = tmp_path / "reference"
    assert main([*prune_args(model_dir, calib_file, reference), *extra]) == 0
    assert main(["verify", str(reference)]) == 0
    out = tmp_path / "killed"
    block = random.randrange(NLAYERS)
    killed = run_subprocess([*prune_args(model_dir, calib_file, out), *extra], {"HYPERPRUNE_FAULT": f"{block}:after_checkpoint"})
    assert killed.returncode == -9, killed.stderr[-500:]
    from hyperprune.methods.whole_model import WholeModelMasks

    def never(*args, **kwargs):
        raise AssertionError("the whole-model pass ran again on --resume")

    monkeypatch.setattr(WholeModelMasks, "prepare", never)  # the masks come from the checkpoint
    assert main([*prune_args(model_dir, calib_file, out), *extra, "--resume"]) == 0
    assert_bit_identical(reference, out)


# ---------------------------------------------------------------- ProxSparse
def test_nm_penalty_is_zero_exactly_on_nm_groups_and_its_gradient_is_exact():
    from hyperprune.methods.proxsparse import competitor_index, nm_penalty, nm_penalty_gradient

    groups = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    penalty = nm_penalty(groups, 2)
    assert penalty[0] == 0 and penalty[1] == pytest.approx(6.0) and penalty[2] == pytest.approx(4 * 0.125)
    u = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    nm_penalty(u, 2).sum().backward()
    assert torch.allclose(nm_penalty_gradient(u.detach(), 2, competitor_index(4, 2)), u.grad, atol=1e-6)


def test_proximal_shrink_leaves_nm_groups_alone_and_clips_at_zero():
    from hyperprune.methods.proxsparse import competitor_index, proximal_shrink

    weight = torch.tensor([[0.0, -2.0, 0.0, 1.0, 3.0, -0.1, 2.0, 2.0]])
    proximal_shrink(weight, 2, 4, step=0.1, unit=1.0, index=competitor_index(4, 2))
    assert torch.equal(weight[0, :4], torch.tensor([0.0, -2.0, 0.0, 1.0]))
    assert weight[0, 5] == 0.0  # the small competitor of three large weights is zeroed, not flipped
    assert torch.all(weight[0, [4, 6, 7]] > 0) and torch.all(weight[0, [4, 6, 7]] < torch.tensor([3.0, 2.0, 2.0]))


def test_proxsparse_drives_groups_to_nm_and_beats_magnitude_on_its_data():
    from hyperprune.config import ProxSparseOptions, PruneConfig
    from hyperprune.methods.proxsparse import ProxSparse
    from hyperprune.engine.whole_model_pass import one_shot_masks, whole_model_pass

    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    layout, cpu = layout_for("llama"), torch.device("cpu")
    model = tiny_model("llama")
    fractions = []
    for lam in (0.0, 3.0):
        method = ProxSparse(PruneConfig(method="proxsparse", nsamples=8,
                                        proxsparse=ProxSparseOptions(steps=30, lr=1e-3, lambda_sparse=lam)))
        masks = method.compute_masks(whole_model_pass(method.config, model, layout, ids, cpu, False))
        fractions.append(method.whole_model_info["groups_beyond_nm_before_readout"])
    assert fractions[0] == 1.0 and fractions[1] < 0.2
    assert all(m.reshape(-1, 4).sum(dim=1).eq(2).all() for m in masks.values())
    magnitude = one_shot_masks("magnitude", method.config, model, layout, ids, cpu)
    assert _calibration_lm_loss(model, masks, ids) < _calibration_lm_loss(model, magnitude, ids)


# ---------------------------------------------------------------- RIA channel permutation
import itertools  # noqa: E402

from hyperprune.methods.permutation import _placement_gain, balanced_allocation, kept_score, nm_channel_permutation  # noqa: E402


def test_kept_score_is_the_sum_of_the_top_n_of_each_group():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.5, 9.0, 1.0]])
    assert kept_score(scores, 2, 4) == pytest.approx(4 + 3 + 9 + 1)
    assert kept_score(scores, 1, 4) == pytest.approx(4 + 9)


def test_placement_gain_matches_brute_force():
    torch.manual_seed(0)
    scores = torch.rand(5, 12)
    remaining = torch.tensor([[0, 1, 2], [4, 5, 6], [8, 9, 10]])
    candidates = torch.tensor([3, 7, 11])
    for n in (1, 2, 3):
        gain = _placement_gain(scores, remaining, candidates, n, chunk=2)
        for i, j in itertools.product(range(3), range(3)):
            group = scores[:, torch.cat([remaining[j], candidates[i : i + 1]])]
            assert gain[i, j] == pytest.approx(float(group.topk(n, dim=1).values.sum()), rel=1e-5)


def test_permutation_is_valid_and_finds_the_optimum_when_the_identity_crowds_channels():
    # Two heavy channels per group of four but only two heavy channels kept: the identity keeps
    # the heavy pairs together in groups 0 and 1, so spreading them keeps strictly more.
    scores = torch.full((6, 16), 0.1)
    scores[:, :4] = 5.0
    scores[:, 4:8] = 4.0
    perm = nm_channel_permutation(scores, 1, 4)
    assert sorted(perm.tolist()) == list(range(16))
    assert kept_score(scores[:, perm], 1, 4) == pytest.approx(6 * (5.0 * 4))  # one 5.0 in each of the four groups
    assert kept_score(scores[:, perm], 1, 4) > kept_score(scores, 1, 4)


def test_permutation_never_keeps_less_than_the_identity_and_brute_force_bounds_it():
    torch.manual_seed(1)
    for _ in range(5):
        scores = torch.rand(3, 8) ** 3
        perm = nm_channel_permutation(scores, 2, 4)
        assert kept_score(scores[:, perm], 2, 4) >= kept_score(scores, 2, 4) - 1e-6
        # The best split of 8 channels into two groups of four (70 ways / 2) bounds what any search keeps.
        best = max(kept_score(scores[:, list(a) + [c for c in range(8) if c not in a]], 2, 4)
                   for a in itertools.combinations(range(8), 4))
        assert kept_score(scores[:, perm], 2, 4) <= best + 1e-6
        assert sorted(balanced_allocation(scores, 4).tolist()) == list(range(8))


def test_ria_permute_is_folded_exactly_and_apply_masks_repeats_it(tmp_path, tiny_model_dir, calib_file):
    plain, permuted = tmp_path / "plain", tmp_path / "permuted"
    common = ["--model", str(tiny_model_dir), "--method", "ria", "--calib", str(calib_file), "--nsamples", "4",
              "--seqlen", "32", "--no-stream", "--quiet"]
    assert main(["prune", *common, "--output", str(plain)]) == 0
    assert main(["prune", *common, "--ria-permute", "--output", str(permuted)]) == 0
    assert main(["verify", str(permuted)]) == 0
    assert all("channel_permutation" not in b["info"] for b in json.loads((plain / "report.json").read_text())["blocks"])
    report = json.loads((permuted / "report.json").read_text())
    notes = [b["info"]["channel_permutation"]["down"] for b in report["blocks"]]
    moved = [note for note in notes if note["permuted"]]
    assert moved, notes
    for note in moved:
        assert note["kept_score_after"] > note["kept_score_before"]
        assert note["output_change"] < 1e-5  # the dense block's function is unchanged by the fold
    assert report["nm_valid"]
    # The masks of the permuted run line up with the source weights only after the same fold.
    out = tmp_path / "again"
    assert main(["apply-masks", "--model", str(tiny_model_dir), "--masks", str(permuted / "masks.safetensors"),
                 "--output", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["channel_permutations"] == len(moved) and again["nm_valid"]
    from hyperprune.models import load_model
    reference, rebuilt = load_model(str(permuted)).model.state_dict(), load_model(str(out)).model.state_dict()
    for name, tensor in reference.items():
        if "mlp" in name:
            assert torch.equal(tensor == 0, rebuilt[name] == 0), name
            # wanda/ria keep weights: where kept, the values are the source's, in the permuted order
            assert torch.equal(tensor, rebuilt[name]), name


def test_ria_permute_flag_is_a_switch():
    from hyperprune.cli import build_parser
    from hyperprune.cli.main import config_from_args
    from hyperprune.methods import get_method

    parser = build_parser()

    def permute(*flags: str) -> bool:
        args = parser.parse_args(["prune", "--output", "o", "--method", "ria", *flags])
        return get_method("ria")(config_from_args(args, "ria")).options.permute

    assert permute("--ria-permute") is True
    assert permute("--no-ria-permute") is False
    assert permute() is False
