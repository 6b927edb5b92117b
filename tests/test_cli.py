"""Every bad input: non-zero exit, a one-line actionable error, no output left behind."""

import json

import pytest

from conftest import tiny_model
from hyperprune.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(code, err, out_dir, *needles):
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.startswith("hyperprune: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())
        assert not list(out_dir.parent.glob(f".{out_dir.name}.tmp-*"))


@pytest.fixture
def base_args(tiny_model_dir, calib_file, tmp_path):
    out = tmp_path / "out"
    return out, ["prune", "--model", str(tiny_model_dir), "--calib", str(calib_file), "--nsamples", "2",
                 "--seqlen", "32", "--quiet", "--output", str(out)]


@pytest.mark.parametrize("pattern", ["3:2", "0:4", "4:4", "a:b"])
def test_bad_pattern(capsys, base_args, pattern):
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--pattern", pattern)
    assert_clean_failure(code, err, out, pattern)


def test_pattern_and_sparsity_together(capsys, base_args):
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--pattern", "2:4", "--sparsity", "0.5")
    assert_clean_failure(code, err, out, "--sparsity")


def test_missing_model_path(capsys, base_args, tmp_path):
    out, args = base_args
    args[2] = str(tmp_path / "nope")
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, out, "does not exist")


def test_unknown_model_name(capsys, base_args):
    out, args = base_args
    args[2] = "not-a-model"
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, out, "unknown model 'not-a-model'", "smollm2-135m")


def test_unsupported_architecture(capsys, base_args, tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=64)).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    out, args = base_args
    args[2] = str(gpt2)
    code, _, err = run_cli(capsys, *args)
    # GPT-2's blocks hold transformers' Conv1D (a transposed linear), not nn.Linear.
    assert_clean_failure(code, err, out, "hold no nn.Linear layers", "Conv1D")


def test_empty_calibration_text(capsys, base_args, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    out, args = base_args
    args[4] = str(empty)
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, out, "empty")


def test_too_short_calibration_text(capsys, base_args, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("The quick brown fox.")
    out, args = base_args
    args[4] = str(short)
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, out, "--seqlen")


def test_seqlen_beyond_context(capsys, base_args):
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--seqlen", "4096")
    assert_clean_failure(code, err, out, "context length 128")


def test_non_empty_output_without_overwrite(capsys, base_args):
    out, args = base_args
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, err = run_cli(capsys, *args)
    assert code != 0 and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    code, stdout, err = run_cli(capsys, *args, "--overwrite", "--method", "magnitude")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "report.json").is_file()


def test_unknown_method(capsys, base_args):
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--method", "nope")
    assert_clean_failure(code, err, out, "unknown method 'nope'", "sparsegpt")


def test_prune_eval_verify_compare_happy_path(capsys, base_args, tmp_path, calib_file, tiny_model_dir):
    out, args = base_args
    report_json = tmp_path / "r.json"
    code, stdout, err = run_cli(capsys, *args, "--eval", str(calib_file), "--eval-windows", "3", "--json", str(report_json))
    assert code == 0, err
    assert "PPL pruned" in stdout
    report = json.loads(report_json.read_text())
    assert report["eval"]["windows"] == 3 and report["eval"]["ppl_pruned"] > 0

    code, stdout, err = run_cli(capsys, "verify", str(out))
    assert code == 0 and "OK" in stdout

    eval_json = tmp_path / "e.json"
    code, _, err = run_cli(capsys, "eval", "--model", str(out), "--eval", str(calib_file), "--seqlen", "32",
                           "--eval-windows", "3", "--quiet", "--json", str(eval_json))
    assert code == 0, err
    ev = json.loads(eval_json.read_text())
    assert set(ev) >= {"model", "eval", "seqlen", "tokens", "ppl"}
    assert ev["tokens"] == 3 * 31 and ev["ppl"] == pytest.approx(report["eval"]["ppl_pruned"], rel=1e-5)

    cmp_json = tmp_path / "c.json"
    other_eval = tmp_path / "other.txt"
    other_eval.write_text("All that glitters is not gold; a journey begins with a single step. " * 40)
    code, stdout, err = run_cli(capsys, "compare", "--model", str(tiny_model_dir), "--methods", "dense,magnitude,wanda,sparsegpt",
                                "--calib", str(calib_file), "--eval", f"{calib_file},{other_eval}", "--nsamples", "4", "--seqlen", "32",
                                "--eval-windows", "4", "--quiet", "--json", str(cmp_json))
    assert code == 0, err
    cmp = json.loads(cmp_json.read_text())
    assert set(cmp) >= {"model", "pattern", "seqlen", "calib", "eval", "methods"}
    assert list(cmp["methods"]) == ["dense", "magnitude", "wanda", "sparsegpt"]
    for name, entry in cmp["methods"].items():
        assert set(entry) >= {"ppl", "prune_seconds", "peak_rss_bytes", "global_sparsity", "nm_valid"}
        assert isinstance(entry["peak_rss_bytes"], int) and isinstance(entry["nm_valid"], bool)
        assert entry["nm_valid"] is (name != "dense")
        assert list(entry["ppl_by_eval"]) == [str(calib_file), str(other_eval)]
        assert entry["ppl"] == entry["ppl_by_eval"][str(calib_file)]
        assert entry["ppl_by_eval"][str(other_eval)] != entry["ppl"]
    # compare restores the dense weights before each method: its dense PPL is the eval PPL.
    code, _, _ = run_cli(capsys, "eval", "--model", str(tiny_model_dir), "--eval", str(calib_file), "--seqlen", "32",
                         "--eval-windows", "4", "--quiet", "--json", str(eval_json))
    assert cmp["methods"]["dense"]["ppl"] == pytest.approx(json.loads(eval_json.read_text())["ppl"], rel=1e-6)
    assert cmp["methods"]["magnitude"]["ppl"] != cmp["methods"]["sparsegpt"]["ppl"]


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--features", "weight,bogus"], "bogus"),
        (["--steps", "-1"], "steps"),
        (["--row-fraction", "0"], "row_fraction"),
        (["--sparsity", "0.5"], "--pattern"),
    ],
)
def test_bad_hyperprune_options(capsys, base_args, flags, needle):
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--method", "hyperprune", *flags)
    assert_clean_failure(code, err, out, needle)


def test_hyperprune_flags_reach_the_report(capsys, base_args):
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--method", "hyperprune+refit", "--steps", "3", "--hidden-dim", "8",
                           "--no-layer-emb", "--no-outlier", "--prior", "wanda", "--lambda-continual", "2.5",
                           "--features", "weight,coupling")
    assert code == 0, err
    config = json.loads((out / "report.json").read_text())["config"]["options"]["hyperprune"]
    assert config["steps"] == 3 and config["hidden_dim"] == 8 and config["prior"] == "wanda"
    assert config["layer_embedding"] is False and config["outlier"] is False and config["component_embedding"] is True
    assert config["lambda_continual"] == 2.5 and config["features"] == ["weight", "coupling"]


def test_refit_flags_reach_the_report_and_bad_ones_fail(capsys, base_args):
    out, args = base_args
    code, _, err = run_cli(capsys, *args, "--method", "hyperprune+refit", "--refit-damp", "0")
    assert_clean_failure(code, err, out, "refit_damp")
    code, _, err = run_cli(capsys, *args, "--method", "sparsegpt", "--sparsegpt-refit", "lstsq",
                           "--sparsegpt-lstsq-damp", "0.2")
    assert code == 0, err
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["options"] == {"sparsegpt": {"refit": "lstsq", "lstsq_damp": 0.2}}
    code, _, err = run_cli(capsys, *args, "--method", "hyperprune+refit", "--steps", "2", "--refit-method", "obs",
                           "--hyperprune-refit-damp", "0.05", "--refit-rounds", "1", "--round-steps", "2",
                           "--relaxation", "expected", "--refresh-every", "0", "--overwrite")
    assert code == 0, err
    config = json.loads((out / "report.json").read_text())["config"]
    hp = config["options"]["hyperprune"]
    # --refit-method is the shared refit flag now; the old hyperprune spelling still reaches the run.
    assert config["refit"]["method"] == "obs" and hp["refit_method"] is None
    assert hp["refit_damp"] == 0.05 and hp["refit_rounds"] == 1
    assert hp["round_steps"] == 2 and hp["relaxation"] == "expected" and hp["refresh_every"] == 0


def test_compare_keeps_each_blocks_seconds_and_the_methods_time_split(capsys, tmp_path, calib_file, tiny_model_dir):
    cmp_json = tmp_path / "c.json"
    code, _, err = run_cli(capsys, "compare", "--model", str(tiny_model_dir), "--methods", "wanda,hyperprune",
                           "--hyperprune-steps", "2", "--calib", str(calib_file), "--eval", str(calib_file),
                           "--nsamples", "2", "--seqlen", "32", "--eval-windows", "2", "--quiet", "--json", str(cmp_json))
    assert code == 0, err
    methods = json.loads(cmp_json.read_text())["methods"]
    for entry in methods.values():
        assert all(block["seconds"] > 0 for block in entry["blocks"])
    assert all("timing" not in block for block in methods["wanda"]["blocks"])  # Wanda reports no split
    for block in methods["hyperprune"]["blocks"]:
        assert {"setup_s", "backward_s", "refit_s"} <= set(block["timing"]) and block["timing"]["setup_s"] > 0
    # Layers keep their errors and the method's numbers (the per-layer comparisons read them).
    layers = methods["hyperprune"]["layers"]
    assert len(layers) == 7 * len(methods["hyperprune"]["blocks"]) and all(0 < layer["rel_error"] < 1 for layer in layers)
    assert all({"mask_error", "prior_error"} <= set(layer["info"]) for layer in layers)
    assert all("info" not in layer for layer in methods["wanda"]["layers"])
