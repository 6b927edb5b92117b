"""What a new user hit (issue 30), each one fixed: flags of methods not being run, old spellings,
strict Python config, honest refusals and outputs, help text, noise."""

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
import torch

from conftest import tiny_model
from hyperprune.cli import main
from hyperprune.errors import HyperpruneError


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("hyperprune: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def base_args(tiny_model_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    return out, ["prune", "--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "2",
                 "--seqlen", "32", "--quiet", "--output", str(out)]


# ---------------------------------------------------------------- flags of methods not being run
REFUSED = {
    "--steps is an option of method hyperprune": ["--steps", "5", "--lr", "0.1"],
    "--hyperprune-hidden-dim is an option of method hyperprune": ["--hyperprune-hidden-dim", "8"],
    "--maskpro-steps is an option of method maskpro": ["--maskpro-steps", "3"],
    "--percdamp applies to methods that use the Hessian": ["--percdamp", "0.1"],
}


@pytest.mark.parametrize("needle", sorted(REFUSED))
def test_a_flag_of_a_method_not_being_run_is_refused(capsys, base_args, needle):
    flags = REFUSED[needle]
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--method", "wanda", *flags)
    assert code == 2
    assert needle in one_error_line(err) and "--method wanda" in one_error_line(err)
    assert not out.exists()


def test_compare_refuses_flags_of_methods_it_does_not_run(capsys, tiny_model_dir, calib_file):
    code, _, err = run_cli(capsys, "compare", "--model", str(tiny_model_dir), "--calib", str(calib_file),
                           "--methods", "dense,wanda", "--nsamples", "2", "--seqlen", "32", "--quiet",
                           "--sparsegpt-refit", "lstsq")
    assert code == 2 and "--sparsegpt-refit is an option of method sparsegpt" in one_error_line(err)


def parsed_config(*argv):
    from hyperprune.cli.main import build_parser, config_from_args

    args = build_parser().parse_args(["prune", *argv])
    return config_from_args(args, args.method)


def test_old_flag_spellings_still_work_as_aliases():
    old = parsed_config("--method", "hyperprune", "--steps", "7", "--batch-size", "3", "--no-layer-emb", "--refit",
                        "--target", "dense", "--target-damp", "0.2")
    new = parsed_config("--method", "hyperprune", "--hyperprune-steps", "7", "--hyperprune-batch-size", "3",
                        "--no-hyperprune-layer-embedding", "--hyperprune-refit", "--fit-target", "dense",
                        "--fit-target-damp", "0.2")
    assert old == new
    assert old.options["hyperprune"] == {"steps": 7, "batch_size": 3, "layer_embedding": False, "refit": True}
    assert old.fit_target == "dense" and old.fit_target_damp == 0.2


def test_method_flags_not_given_leave_the_options_class_defaults():
    from hyperprune.config import HyperPruneOptions
    from hyperprune.methods import get_method

    config = parsed_config("--method", "hyperprune+refit")
    assert config.options == {}
    options = get_method("hyperprune+refit")(config).options
    # The preset's fixed value and own defaults (route A: ADMM's prior, priced at its updated weights).
    assert options == HyperPruneOptions(refit=True, row_fraction=0.05, prior="admm", values="prior-update")


def test_eval_batch_size_is_the_task_batch_and_keeps_its_old_spelling():
    from hyperprune.cli.main import build_parser

    parser = build_parser(methods=False)
    assert parser.parse_args(["eval", "--batch-size", "3"]).task_batch_size == 3
    assert parser.parse_args(["eval", "--task-batch-size", "5"]).task_batch_size == 5


# ---------------------------------------------------------------- strict, friendly configuration
def test_python_config_refuses_unknown_fields_and_parses_strings():
    from pydantic import ValidationError

    from hyperprune.config import PruneConfig

    with pytest.raises(ValidationError, match="nsampels"):
        PruneConfig(model="tiny", method="wanda", nsampels=2)
    assert str(PruneConfig(pattern="1:4").target) == "1:4"
    assert str(PruneConfig(target="4:8").target) == "4:8"
    assert PruneConfig(sparsity=0.6).target.sparsity == 0.6 and PruneConfig(target=0.6).target.sparsity == 0.6
    with pytest.raises(ValidationError, match="give either pattern"):
        PruneConfig(pattern="2:4", sparsity=0.5)
    with pytest.raises(ValidationError, match="reconstruct.holdout 4 leaves no training windows of nsamples 4"):
        PruneConfig(nsamples=4, reconstruct={"steps": 5})


def test_a_misspelt_method_option_fails_before_anything_loads(tmp_path):
    from hyperprune import PruneConfig, prune

    config = PruneConfig(model=str(tmp_path / "nowhere"), method="hyperprune", options={"hyperprune": {"stpes": 3}})
    with pytest.raises(HyperpruneError, match=r"invalid options\['hyperprune'\]: stpes: unknown option"):
        prune(config, progress=False)
    with pytest.raises(HyperpruneError, match="'hyperprun', which is not a method with options"):
        prune(PruneConfig(model=str(tmp_path / "nowhere"), options={"hyperprun": {}}), progress=False)
    with pytest.raises(HyperpruneError, match="method 'wanda' takes no options"):
        prune(PruneConfig(model=str(tmp_path / "nowhere"), method="wanda", options={"wanda": {"x": 1}}), progress=False)


# ---------------------------------------------------------------- honest refusals
def test_a_missing_calibration_file_is_the_error_reported(capsys, tmp_path):
    from hyperprune.models.random_model import make_random_model

    model = make_random_model("smollm2-135m", tmp_path / "m", "float32", layers=1, seed=0, overwrite=False, progress=False)
    code, _, err = run_cli(capsys, "prune", "--model", str(model), "--calib", str(tmp_path / "nonexistent.txt"),
                           "--nsamples", "2", "--seqlen", "64", "--quiet")
    line = one_error_line(err)
    assert code == 2 and "nonexistent.txt" in line and "stream" not in line


def test_a_run_without_output_says_its_result_is_discarded(tiny_model_dir, calib_file, caplog):
    from hyperprune import PruneConfig, prune

    with caplog.at_level(logging.WARNING):
        prune(PruneConfig(model=str(tiny_model_dir), method="magnitude", calib=str(calib_file), nsamples=2, seqlen=32),
              progress=False)
    assert any("discarded" in r.getMessage() and "--output" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- verify and load_pretrained on any checkpoint
def test_verify_checks_the_weights_of_a_checkpoint_hyperprune_did_not_write(capsys, tmp_path):
    from hyperprune.masks import nm_mask_from_scores

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "dense")
    code, out, _ = run_cli(capsys, "verify", str(tmp_path / "dense"), "--pattern", "2:4")
    assert code == 1 and "FAILED: 0/21 matrices are exactly 2:4" in out and "weights were checked alone" in out
    with torch.no_grad():
        for block in model.model.layers:
            for linear in [m for m in block.modules() if isinstance(m, torch.nn.Linear)]:
                linear.weight.mul_(nm_mask_from_scores(linear.weight.abs(), 2, 4))
    model.save_pretrained(tmp_path / "sparse")
    code, out, _ = run_cli(capsys, "verify", str(tmp_path / "sparse"), "--pattern", "2:4")
    assert code == 0 and "OK: 21/21 matrices are exactly 2:4" in out
    code, _, err = run_cli(capsys, "verify", str(tmp_path / "sparse"))
    assert code == 2 and "--pattern" in one_error_line(err)


def test_load_pretrained_opens_a_prune_output(capsys, base_args):
    from hyperprune import load_pretrained

    out, args = base_args
    assert run_cli(capsys, *args, "--method", "wanda")[0] == 0
    model = load_pretrained(out)
    assert not model.training and model.config.num_hidden_layers == 3
    weight = model.model.layers[0].mlp.down_proj.weight
    assert int((weight.reshape(-1, 4) != 0).sum(dim=1).max()) <= 2
    with pytest.raises(HyperpruneError, match="neither a hyperprune output nor a compact export"):
        load_pretrained(out.parent)


# ---------------------------------------------------------------- help text
def test_help_says_what_it_is_and_gives_the_real_defaults(capsys):
    code, out, _ = run_cli(capsys)  # a bare `hyperprune`: the help, not an argparse error
    assert code == 0 and "n:m semi-structured sparsity" in out and "example:" in out and "prune" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("hyperprune ")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "(default: sotu, unless only --tasks is given)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    methods_help = text.split("--methods METHODS comma-separated")[1].split("--pattern")[0]
    assert methods_help.count("dense") == 2  # once in the list of methods, once in the default
    assert "(default: dense,magnitude,wanda,sparsegpt)" in methods_help
    with pytest.raises(SystemExit):
        main(["bench-speed", "--help"])
    assert "dtype of the dense and 2:4 matrices timed" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = capsys.readouterr().out
    assert text.index("core flags:") < text.index("example:") < text.index("options:")  # description and example first
    assert "\nhyperprune options (also hyperprune+refit):" in text and "\nsparsegpt options (also sparsegpt+lstsq, sparsegpt+admm):" in text


# ---------------------------------------------------------------- outputs that state themselves
def test_outputs_state_their_dtype_model_argv_and_only_the_methods_options(capsys, calib_file, tokenizer, tmp_path):
    source = tmp_path / "bf16"
    tiny_model("llama").to(torch.bfloat16).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "prune", "--model", str(source), "--method", "wanda", "--calib", str(calib_file),
                           "--nsamples", "2", "--seqlen", "32", "--quiet", "--output", str(out))
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert report["dtype"] == "bfloat16" and report["compute_dtype"] == "float32"
    assert config["dtype"] == "bfloat16"
    assert report["model"] == str(source.resolve()) and "--method" in report["argv"]
    assert report["config"]["options"] == {} and "hessian" not in report["config"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1 and "masks.safetensors" in modes, modes


def test_a_sparsegpt_report_holds_its_own_and_the_hessian_options(capsys, base_args):
    out, args = base_args
    assert run_cli(capsys, *args, "--method", "sparsegpt+lstsq", "--percdamp", "0.02")[0] == 0
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["options"] == {"sparsegpt": {"refit": "lstsq", "lstsq_damp": 0.1}}
    assert config["hessian"] == {"percdamp": 0.02, "blocksize": 128, "max_damp_retries": 4}


# ---------------------------------------------------------------- noise
def test_quiet_prints_no_blank_lines(capsys, base_args):
    out, args = base_args
    code, stdout, _ = run_cli(capsys, *args, "--method", "magnitude")
    assert code == 0 and stdout.strip() and all(line.strip() for line in stdout.splitlines())


def test_progress_false_shows_no_loading_bars(tiny_model_dir, calib_file, capfd):
    from hyperprune import PruneConfig, prune

    prune(PruneConfig(model=str(tiny_model_dir), method="magnitude", calib=str(calib_file), nsamples=2, seqlen=32),
          progress=False)
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err and "%|" not in captured.err


def test_a_jsonl_task_eval_outside_a_git_repository_prints_no_git_error(tiny_model_dir, tmp_path):
    pytest.importorskip("lm_eval")
    task = tmp_path / "task.jsonl"
    task.write_text("\n".join(json.dumps({"question": f"Is {i} even?", "choices": ["yes", "no"], "answer": i % 2})
                              for i in range(3)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
    proc = subprocess.run([sys.executable, "-m", "hyperprune", "eval", "--model", str(tiny_model_dir), "--tasks",
                           str(task), "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "fatal" not in proc.stderr and "not a git repository" not in proc.stderr, proc.stderr
