"""Recovery after pruning: block reconstruction with the mask fixed, and the dense target."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import load_benchmark, tiny_model
from hyperprune.cli import main
from hyperprune.config import PruneConfig, ReconstructOptions, SparsityTarget
from hyperprune.engine import run_layerwise
from hyperprune.numerics.least_squares import dense_target_weight
from hyperprune.engine.reconstruct import reconstruct_block, window_order
from hyperprune.numerics.statistics import CrossStatistics, InputStatistics, StatisticsKind
from hyperprune.errors import HyperpruneError
from hyperprune.masks import count_nm_violations
from hyperprune.methods import get_method
from hyperprune.models import layout_for, prunable_weight_names
from test_resume import NLAYERS, assert_bit_identical, model_dir, prune_args, run_subprocess  # noqa: F401

CPU = torch.device("cpu")


def calib_ids(nsamples=8, seqlen=24, seed=0):
    return torch.randint(0, 256, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def run(model, method, nsamples=8, **settings):
    config = PruneConfig(method=method, target=SparsityTarget(pattern="2:4"), nsamples=nsamples, **settings)
    return run_layerwise(model, layout_for("llama"), get_method(method)(config), calib_ids(nsamples), CPU, config.engine_settings(),
                         progress=False)


RECONSTRUCT = ReconstructOptions(steps=30, holdout=2, lr=1e-3, batch_size=2, eval_every=5, patience=10)


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_reconstruction_keeps_every_zero(method):
    model = tiny_model("llama")
    result = run(model, method, reconstruct=RECONSTRUCT)
    params = dict(model.named_parameters())
    for name in prunable_weight_names(model, layout_for("llama")):
        weight = params[name].detach()
        assert count_nm_violations(weight, 2, 4) == 0, name
        assert torch.all(weight[~result.masks[name]] == 0), name
    assert all("reconstruct" in b.info for b in result.blocks)


def test_reconstruction_lowers_the_block_error():
    plain = run(tiny_model("llama"), "magnitude")
    rebuilt = run(tiny_model("llama"), "magnitude", reconstruct=RECONSTRUCT)
    for before, after in zip(plain.blocks, rebuilt.blocks):
        report = after.info["reconstruct"]
        assert report["holdout_best"] <= report["holdout_before"]
    # Block 0 sees the same inputs in both runs: the like-for-like comparison.
    assert rebuilt.blocks[0].rel_output_error < 0.9 * plain.blocks[0].rel_output_error
    assert sum(b.rel_output_error for b in rebuilt.blocks) < sum(b.rel_output_error for b in plain.blocks)


def _one_block_problem(seed=0):
    """A tiny model's first block, magnitude-pruned, with its dense outputs as targets."""
    model = tiny_model("llama", seed=seed)
    from hyperprune.engine.capture import capture_block_inputs
    from hyperprune.engine.layerwise import block_output
    from hyperprune.models.architectures import block_linears

    layout = layout_for("llama")
    captured = capture_block_inputs(model, layout, calib_ids(8), CPU, CPU)
    block = model.model.layers[0]

    def forward(hidden):
        return block_output(block(hidden, **captured.kwargs))

    with torch.no_grad():
        targets = torch.cat([forward(captured.hidden[s : s + 1]) for s in range(8)])
    linears = block_linears(block, layout)
    masks = {}
    with torch.no_grad():
        for role, linear in linears.items():
            keep = torch.zeros_like(linear.weight, dtype=torch.bool).view(-1, 4)
            keep.scatter_(1, linear.weight.abs().view(-1, 4).topk(2, dim=1).indices, True)
            masks[role] = keep.view_as(linear.weight)
            linear.weight.mul_(masks[role])
    return block, forward, linears, masks, captured.hidden, targets


def _held_out_error(forward, inputs, targets, holdout):
    with torch.no_grad():
        n = inputs.shape[0]
        return sum(float((forward(inputs[s : s + 1]) - targets[s : s + 1]).pow(2).mean())
                   for s in range(n - holdout, n)) / holdout


def test_early_stopping_keeps_the_best_held_out_weights():
    block, forward, linears, masks, inputs, targets = _one_block_problem()
    options = ReconstructOptions(steps=40, holdout=2, lr=3e-2, batch_size=2, eval_every=4, patience=100)
    report = reconstruct_block(block, forward, linears, masks, inputs, targets, options, CPU, seed=0)
    errors = [error for _, error in report.history]
    best = min(range(len(errors)), key=errors.__getitem__)
    assert report.best_step == report.history[best][0]
    assert report.holdout_best == errors[best]
    # The weights left in the block are the best check's, not the last step's.
    assert _held_out_error(forward, inputs, targets, 2) == pytest.approx(errors[best], rel=1e-5)
    assert errors[-1] != errors[best] or best == len(errors) - 1


def test_a_diverging_reconstruction_keeps_the_starting_weights():
    block, forward, linears, masks, inputs, targets = _one_block_problem()
    start = {role: linear.weight.detach().clone() for role, linear in linears.items()}
    options = ReconstructOptions(steps=6, holdout=2, lr=10.0, batch_size=2, eval_every=2, patience=2)
    report = reconstruct_block(block, forward, linears, masks, inputs, targets, options, CPU, seed=0)
    assert report.best_step == 0 and report.steps_run == 4  # two bad checks, then stop
    assert all(torch.equal(start[role], linear.weight) for role, linear in linears.items())


def test_window_order_covers_the_training_windows_before_repeating():
    batches = window_order(6, steps=3, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert sorted(w for batch in batches for w in batch) == list(range(6))


def test_dense_target_weight_is_the_least_squares_fit_of_the_dense_outputs():
    torch.manual_seed(0)
    W = torch.randn(5, 8)
    x_dense = torch.randn(200, 8)
    x_pruned = x_dense + 0.3 * torch.randn(200, 8)
    stats = InputStatistics(8, StatisticsKind.HESSIAN)
    stats.add(x_pruned)
    cross = CrossStatistics(8)
    cross.add(x_dense, x_pruned)
    damp = 1e-6
    fitted = dense_target_weight(W, stats.hessian(), cross.cross(), damp)
    expected = torch.linalg.lstsq(x_pruned, x_dense @ W.T).solution.T
    assert torch.allclose(fitted, expected, atol=1e-3)
    # Equal streams: the dense weights themselves, whatever the damping.
    same = CrossStatistics(8)
    same.add(x_pruned, x_pruned)
    assert torch.allclose(dense_target_weight(W, stats.hessian(), same.cross(), 0.1), W, atol=1e-5)


def test_dense_target_with_no_pruning_reproduces_the_dense_model():
    reference = tiny_model("llama")
    model = tiny_model("llama")
    result = run(model, "dense", fit_target="dense", reconstruct=RECONSTRUCT)
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(b.rel_dense_error == 0.0 for b in result.blocks)


def test_dense_target_follows_the_dense_trajectory_better():
    pruned = run(tiny_model("llama", seed=2), "sparsegpt")
    dense = run(tiny_model("llama", seed=2), "sparsegpt", fit_target="dense")
    assert pruned.blocks[-1].rel_dense_error is None
    # The last block's output, against the dense model's hidden state there.
    assert dense.blocks[-1].rel_dense_error < _distance_to_dense(pruned.final_hidden, seed=2)
    assert [b.rel_dense_error for b in dense.blocks][0] == pytest.approx(dense.blocks[0].rel_output_error)


def test_dense_target_refits_only_the_group_reading_the_block_input():
    """o, gate, up and down see the dense upstream layers' outputs in the one statistics pass, so
    refitting them toward the dense stream as well would correct the same error twice."""
    pruned_model, dense_model = tiny_model("llama", seed=3), tiny_model("llama", seed=3)
    run(pruned_model, "sparsegpt")
    run(dense_model, "sparsegpt", fit_target="dense")
    a, b = dict(pruned_model.named_parameters()), dict(dense_model.named_parameters())
    # Block 0: equal streams, so W̃ = W and both runs agree. Block 1 has the same pruned-stream
    # inputs in both runs (block 0 agrees), so only q, k and v may differ there.
    layout = layout_for("llama")
    for role, path in layout.components.items():
        name = f"{layout.layers}.1.{path}.weight"
        assert torch.equal(a[name], b[name]) == (role not in ("q", "k", "v")), role


def _distance_to_dense(final_hidden, seed):
    reference = run(tiny_model("llama", seed=seed), "dense")
    return float((final_hidden - reference.final_hidden).pow(2).sum() / reference.final_hidden.pow(2).sum())


def test_dense_target_needs_something_to_apply_to():
    with pytest.raises(HyperpruneError, match="--fit-target dense changes nothing"):
        run(tiny_model("llama"), "wanda", fit_target="dense")


def test_holdout_must_leave_training_windows(tmp_path, tiny_model_dir, calib_file, capsys):
    args = ["prune", "--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "4", "--seqlen", "16",
            "--reconstruct-steps", "5", "--reconstruct-holdout", "4", "--output", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "leaves no training windows" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--no-stream"], ["--stream", "--offload-to-disk", "--target", "dense"]])
def test_sigkill_during_reconstruction_then_resume_is_bit_identical(tmp_path, model_dir, calib_file, flags):
    extra = ["--nsamples", "5", "--reconstruct-steps", "6", "--reconstruct-holdout", "2",
             "--reconstruct-eval-every", "2", *flags]
    reference = tmp_path / "reference"
    assert main([*prune_args(model_dir, calib_file, reference), *extra]) == 0
    block = random.randrange(1, NLAYERS)
    out = tmp_path / "killed"
    killed = run_subprocess([*prune_args(model_dir, calib_file, out), *extra], {"HYPERPRUNE_FAULT": f"{block}:reconstruct"})
    assert killed.returncode == -9, killed.stderr[-500:]
    assert main([*prune_args(model_dir, calib_file, out), *extra, "--resume"]) == 0
    assert_bit_identical(reference, out)


def _distill_args(pruned, out, teacher, *extra):
    return ["distill", str(pruned), "--output", str(out), "--teacher", str(teacher), "--steps", "12", "--lr", "2e-3",
            "--nsamples", "6", "--holdout", "2", "--seqlen", "32", "--eval-every", "3", "--patience", "10", "--quiet",
            *extra]


def test_distill_keeps_the_masks_and_lowers_the_kl(tmp_path, tiny_model_dir, calib_file):
    import json

    from hyperprune.numerics.masked_training import logit_kl
    from hyperprune.workflows.verify import verify_checkpoint
    from hyperprune.export.mask_files import load_masks
    from hyperprune.models import load_model

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "magnitude", "--calib", str(calib_file),
                 "--nsamples", "4", "--seqlen", "32", "--output", str(pruned), "--quiet"]) == 0
    out = tmp_path / "distilled"
    assert main([*_distill_args(pruned, out, tiny_model_dir, "--calib", str(calib_file)), "--json", str(tmp_path / "d.json")]) == 0
    assert verify_checkpoint(out).ok
    masks = load_masks(out / "masks.safetensors")
    assert all(torch.equal(masks[k], v) for k, v in load_masks(pruned / "masks.safetensors").items())
    report = json.loads((out / "report.json").read_text())["distill"]
    assert report["holdout_best"] < report["holdout_before"] and report["best_step"] > 0
    # The KL on other windows of the text, measured here, from the written files.
    from hyperprune.data import calibration_windows, load_text_source

    teacher, before, after = (load_model(str(p)).model for p in (tiny_model_dir, pruned, out))
    ids = calibration_windows(load_model(str(out)).tokenizer, load_text_source(str(calib_file)), 4, 32, seed=99)
    with torch.no_grad():
        kl = [float(logit_kl(m(input_ids=ids).logits, teacher(input_ids=ids).logits)) for m in (before, after)]
    assert kl[1] < kl[0]
    # Only pruned matrices changed.
    b, a = before.state_dict(), after.state_dict()
    assert all(torch.equal(b[k], a[k]) for k in b if k not in masks)


def test_distill_refuses_a_directory_that_is_not_a_pruned_output(tmp_path, tiny_model_dir, capsys):
    assert main(_distill_args(tiny_model_dir, tmp_path / "out", tiny_model_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert "report.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_recovery_benchmark_runs_its_rows(tmp_path, tiny_model_dir, calib_file):
    import json

    recovery = load_benchmark("recovery")
    out = tmp_path / "r.json"
    assert recovery.main(["--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "5", "--seqlen", "32",
                          "--eval", str(calib_file), "--eval-windows", "2", "--reconstruct-steps", "4",
                          "--reconstruct-holdout", "2", "--only", "0,1,5", "--quiet", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["methods"]
    assert list(rows) == ["sparsegpt", "sparsegpt +reconstruct", "sparsegpt +reconstruct --target dense"]
    assert rows["sparsegpt"]["reconstruct_seconds"] == 0 and rows["sparsegpt +reconstruct"]["reconstruct_seconds"] > 0
    assert rows["sparsegpt"]["mean_block_rel_dense_error"] is None
    assert rows["sparsegpt +reconstruct --target dense"]["mean_block_rel_dense_error"] > 0


def test_compare_refuses_a_pointless_dense_target_before_pruning(tiny_model_dir, calib_file, capsys, monkeypatch):
    import hyperprune.api as api

    def never(*args, **kwargs):
        raise AssertionError("a method ran before the settings were checked")

    monkeypatch.setattr(api, "run_method", never)
    args = ["compare", "--model", str(tiny_model_dir), "--methods", "sparsegpt,wanda", "--target", "dense",
            "--calib", str(calib_file), "--nsamples", "4", "--seqlen", "16", "--eval", str(calib_file), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "'wanda'" in err and "--reconstruct-steps" in err and len(err.splitlines()) == 1
