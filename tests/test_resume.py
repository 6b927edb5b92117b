"""Reliability: kill and resume bit-identically, corrupted checkpoints, NaN/Inf, disk full,
unwritable outputs, and memory that does not grow with depth when streaming."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import TOKENIZER_TEXT, tiny_model, tiny_tokenizer
from hyperprune.cli import main
from hyperprune.engine.run_checkpoint import MANIFEST, partial_dir_for

NLAYERS = 5


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    directory = tmp_path / "tiny5"
    tiny_model("llama", num_hidden_layers=NLAYERS).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prune_args(model_dir, calib_file, out, *extra):
    return ["prune", "--model", str(model_dir), "--method", "sparsegpt", "--calib", str(calib_file),
            "--nsamples", "3", "--seqlen", "32", "--seed", "7", "--output", str(out), "--quiet", *extra]


def run_subprocess(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "hyperprune.cli", *args], env=env, capture_output=True, text=True)


def tensors_of(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({f"{file.name}:{k}": f.get_tensor(k) for k in f.keys()})
    return out


def assert_bit_identical(a: Path, b: Path) -> None:
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize(
    "phase,flags",
    [
        ("before_checkpoint", ["--stream"]),
        ("mid_checkpoint", ["--stream", "--offload-to-disk"]),
        ("after_checkpoint", ["--no-stream"]),
    ],
)
def test_sigkill_then_resume_is_bit_identical(tmp_path, model_dir, calib_file, phase, flags):
    reference = tmp_path / "reference"
    assert main(prune_args(model_dir, calib_file, reference, "--no-stream")) == 0

    block = random.randrange(NLAYERS)
    out = tmp_path / "killed"
    killed = run_subprocess(prune_args(model_dir, calib_file, out, *flags), {"HYPERPRUNE_FAULT": f"{block}:{phase}"})
    assert killed.returncode == -9, f"block {block}: {killed.stderr[-500:]}"
    assert not out.exists()
    assert partial_dir_for(out).is_dir()

    assert main(prune_args(model_dir, calib_file, out, *flags, "--resume")) == 0
    assert_bit_identical(reference, out)
    report = json.loads((out / "report.json").read_text())
    completed_before_kill = block + (1 if phase == "after_checkpoint" else 0)
    assert report["resumed_from_block"] == completed_before_kill, f"killed at block {block} {phase}"
    assert len(report["blocks"]) == NLAYERS and [b["block"] for b in report["blocks"]] == list(range(NLAYERS))
    assert not partial_dir_for(out).exists()


@pytest.mark.parametrize("method", [["--method", "sparsegpt+lstsq"], ["--method", "admm", "--admm-final-refit", "lstsq"]])
def test_refit_solvers_resume_bit_identically_after_a_kill(tmp_path, model_dir, calib_file, method):
    """CG (the lstsq variants' default solver) and ADMM carry no state between blocks: a run killed
    mid-block resumes to the same bits."""
    reference = tmp_path / "reference"
    assert main(prune_args(model_dir, calib_file, reference, *method, "--no-stream")) == 0
    out = tmp_path / "killed"
    killed = run_subprocess(prune_args(model_dir, calib_file, out, *method), {"HYPERPRUNE_FAULT": "2:mid_block"})
    assert killed.returncode == -9, killed.stderr[-500:]
    assert main(prune_args(model_dir, calib_file, out, *method, "--resume")) == 0
    assert_bit_identical(reference, out)
    assert json.loads((out / "report.json").read_text())["resumed_from_block"] == 2


def kill_after_block(model_dir, calib_file, out, block=1):
    result = run_subprocess(prune_args(model_dir, calib_file, out), {"HYPERPRUNE_FAULT": f"{block}:after_checkpoint"})
    assert result.returncode == -9, result.stderr[-500:]
    return partial_dir_for(out)


def test_corrupted_checkpoint_is_refused(tmp_path, model_dir, calib_file, capsys):
    out = tmp_path / "out"
    partial = kill_after_block(model_dir, calib_file, out)
    shard = partial / "model-00001-of-00006.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(prune_args(model_dir, calib_file, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    # A torn manifest is refused too.
    (partial / MANIFEST).write_text('{"version": 1, "fingerp')
    assert main(prune_args(model_dir, calib_file, out, "--resume")) == 2
    assert "corrupted" in capsys.readouterr().err
    # --overwrite starts over and succeeds.
    assert main(prune_args(model_dir, calib_file, out, "--overwrite")) == 0


def test_resume_refuses_other_settings_and_a_partial_run_needs_a_decision(tmp_path, model_dir, calib_file, capsys):
    out = tmp_path / "out"
    kill_after_block(model_dir, calib_file, out)
    assert main(prune_args(model_dir, calib_file, out)) == 2
    assert "--resume" in capsys.readouterr().err
    args = prune_args(model_dir, calib_file, out, "--resume")
    args[args.index("--seed") + 1] = "8"
    assert main(args) == 2
    assert "different settings" in capsys.readouterr().err


def test_disk_full_keeps_the_last_checkpoint(tmp_path, model_dir, calib_file, capsys, monkeypatch):
    import hyperprune.engine.run_checkpoint as checkpoint_module

    reference = tmp_path / "reference"
    assert main(prune_args(model_dir, calib_file, reference)) == 0

    real_write = checkpoint_module.write_tensors

    def full_at_block_2(path, tensors, metadata=None):
        if "00003-of" in path.name:  # block 2's shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, tensors, metadata)

    monkeypatch.setattr(checkpoint_module, "write_tensors", full_at_block_2)
    out = tmp_path / "out"
    assert main(prune_args(model_dir, calib_file, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "disk full" in err and "block 1" in err and "--resume" in err
    manifest = json.loads((partial_dir_for(out) / MANIFEST).read_text())
    assert manifest["completed"] == 2

    monkeypatch.setattr(checkpoint_module, "write_tensors", real_write)
    assert main(prune_args(model_dir, calib_file, out, "--resume")) == 0
    assert_bit_identical(reference, out)


def nan_model_dir(tmp_path, tokenizer, where: str):
    model = tiny_model("llama", num_hidden_layers=3)
    with torch.no_grad():
        if where == "weights":
            model.model.layers[2].mlp.down_proj.weight[0, 0] = float("nan")
        else:  # every token's embedding: the first block's inputs
            model.model.embed_tokens.weight[:, 0] = float("inf")
    directory = tmp_path / f"nan-{where}"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_nan_in_weights_stops_and_names_the_layer(tmp_path, tokenizer, calib_file, capsys):
    directory = nan_model_dir(tmp_path, tokenizer, "weights")
    out = tmp_path / "out"
    assert main(prune_args(directory, calib_file, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "block 2 component down" in err and "weights" in err and "--on-nan skip" in err
    assert not out.exists()
    # Blocks 0 and 1 are checkpointed: go on from block 2, keeping it dense.
    assert main(prune_args(directory, calib_file, out, "--resume", "--on-nan", "skip")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_block"] == 2 and [s["block"] for s in report["skipped_blocks"]] == [2]


def test_nan_skip_keeps_the_block_dense_and_says_so(tmp_path, tokenizer, calib_file):
    directory = nan_model_dir(tmp_path, tokenizer, "weights")
    out = tmp_path / "out"
    assert main(prune_args(directory, calib_file, out, "--on-nan", "skip")) == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["block"] for s in report["skipped_blocks"]] == [2]
    assert "block 2 component down" in report["skipped_blocks"][0]["reason"]
    assert report["nm_valid"] is False
    from hyperprune.workflows.verify import verify_checkpoint

    result = verify_checkpoint(out)
    bad = {c.name for c in result.layers if c.violations}
    assert bad and all(name.startswith("model.layers.2.") for name in bad)
    assert all(c.violations == 0 for c in result.layers if not c.name.startswith("model.layers.2."))


def test_inf_in_activations_is_caught(tmp_path, tokenizer, calib_file, capsys):
    directory = nan_model_dir(tmp_path, tokenizer, "activations")
    assert main(prune_args(directory, calib_file, tmp_path / "out")) == 2
    assert "input activations of block 0" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_unwritable_output_location(tmp_path, model_dir, calib_file, capsys, where):
    if where == "proc":
        out = Path("/proc/hyperprune-test-out")
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        out = blocker / "out"
    code = main(prune_args(model_dir, calib_file, out))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "hyperprune: error:" in err


_PEAK_SCRIPT = """
import sys
from hyperprune.cli import main
from hyperprune.engine.memory import lifetime_peak_rss_bytes
code = main(sys.argv[1:])
print("PEAK", lifetime_peak_rss_bytes())
sys.exit(code)
"""


def peak_rss_of(args: list[str]) -> int:
    """Peak RSS (bytes) of a separate process running the CLI, from its own VmHWM
    (wait4's ru_maxrss would include this test process's RSS, inherited across fork)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    return int(proc.stdout.split("PEAK")[-1].split()[0])


def test_streaming_memory_does_not_grow_with_depth(tmp_path, tokenizer, calib_file):
    """Each block holds 3.4M float32 weights (13.6 MB): 20 more blocks are 272 MB more model.
    Held in memory, the peak grows by about that; streamed, it must stay nearly flat. (With 10
    more blocks the streamed peak's run-to-run noise, one jump of about 36 MB, could reach 30% of
    the in-memory growth.)"""
    peaks = {}
    for layers in (2, 22):
        directory = tmp_path / f"m{layers}"
        tiny_model("llama", num_hidden_layers=layers, hidden_size=512, intermediate_size=1536,
                   num_attention_heads=8, num_key_value_heads=8).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        for mode in ("--stream", "--no-stream"):
            args = ["prune", "--model", str(directory), "--method", "magnitude", "--calib", str(calib_file),
                    "--nsamples", "2", "--seqlen", "32", "--output", str(tmp_path / f"o{layers}{mode}"), "--quiet", mode]
            peaks[layers, mode] = peak_rss_of(args)
    streamed_growth = peaks[22, "--stream"] - peaks[2, "--stream"]
    in_memory_growth = peaks[22, "--no-stream"] - peaks[2, "--no-stream"]
    mib = {k: v / 2**20 for k, v in peaks.items()}
    assert in_memory_growth > 100 * 2**20, mib  # the measurement can see 20 blocks
    assert streamed_growth < 0.3 * in_memory_growth, mib


def test_hyperprune_state_survives_a_kill_and_resume_is_bit_identical(tmp_path, model_dir, calib_file):
    """The hypernetwork, embeddings and continual cache carry over blocks: resume restores them."""
    flags = ["--method", "hyperprune", "--steps", "6", "--hidden-dim", "16", "--relaxation", "gumbel"]
    reference = tmp_path / "reference"
    assert main(prune_args(model_dir, calib_file, reference, "--no-stream", *flags)) == 0
    out = tmp_path / "killed"
    killed = run_subprocess(prune_args(model_dir, calib_file, out, *flags), {"HYPERPRUNE_FAULT": "2:after_checkpoint"})
    assert killed.returncode == -9, killed.stderr[-500:]
    assert main(prune_args(model_dir, calib_file, out, *flags, "--resume")) == 0
    assert_bit_identical(reference, out)
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_block"] == 3
    assert report["config"]["options"]["hyperprune"]["steps"] == 6
    # the method's report notes survive too
    assert all("mask_error" in layer["info"] for layer in report["layers"])


# The product's defaults for HyperPrune: exact relaxation, layer objective, prior, continual term.
# 500 cached groups per layer: a continual cache of thousands of rows, where the hypernetwork's
# gradient is large enough for MKL to round differently on unaligned inputs (issue 14).
HP_IN_MEMORY = ["--method", "hyperprune", "--steps", "6", "--continual-groups", "500", "--no-stream"]


@pytest.fixture(scope="module")
def hp_reference(tmp_path_factory):
    """One uninterrupted CLI run at HyperPrune's defaults, on a model held in memory (as a GGUF
    model is): the reference every kill-and-resume run below must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("hp-resume")
    directory = root / "tiny5"
    tiny_model("llama", num_hidden_layers=NLAYERS).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    calib = root / "calib.txt"
    calib.write_text(TOKENIZER_TEXT * 4)
    reference = root / "reference"
    done = run_subprocess(prune_args(directory, calib, reference, *HP_IN_MEMORY))
    assert done.returncode == 0, done.stderr[-500:]
    return directory, calib, reference


def resume_and_compare(hp_reference, out) -> dict:
    directory, calib, reference = hp_reference
    resumed = run_subprocess(prune_args(directory, calib, out, *HP_IN_MEMORY, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert_bit_identical(reference, out)
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("phase", ["mid_block", "mid_checkpoint"])
def test_hyperprune_defaults_in_memory_cli_kill_and_resume(tmp_path, hp_reference, phase):
    """Issue 14's path, every run a separate CLI process, killed during a block or its checkpoint."""
    directory, calib, _ = hp_reference
    block = 1 + random.randrange(NLAYERS - 1)  # after at least one checkpoint: state must carry over
    out = tmp_path / "killed"
    killed = run_subprocess(prune_args(directory, calib, out, *HP_IN_MEMORY), {"HYPERPRUNE_FAULT": f"{block}:{phase}"})
    assert killed.returncode == -9, f"block {block}: {killed.stderr[-500:]}"
    assert resume_and_compare(hp_reference, out)["resumed_from_block"] == block


def test_hyperprune_killed_at_a_random_time_resumes_bit_identically(tmp_path, hp_reference):
    """A plain kill -9 at an arbitrary moment after the first checkpoint, as a user would."""
    directory, calib, _ = hp_reference
    out = tmp_path / "killed"
    manifest = partial_dir_for(out) / MANIFEST
    # A pause after block 3's checkpoint leaves room for a kill before the run can finish.
    proc = subprocess.Popen([sys.executable, "-m", "hyperprune.cli", *prune_args(directory, calib, out, *HP_IN_MEMORY)],
                            env={**os.environ, "HYPERPRUNE_FAULT": "3:pause"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not manifest.exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))  # anywhere in blocks 1 to 3, or in a checkpoint
    proc.kill()
    assert proc.wait() == -9 and not out.exists()
    completed = json.loads(manifest.read_text())["completed"]
    assert resume_and_compare(hp_reference, out)["resumed_from_block"] == completed


def final_method_state(directory, calib, out, fault_env) -> dict[str, torch.Tensor]:
    """Run (and maybe resume) to the last block's checkpoint, stop there, read the method state."""
    last = f"{NLAYERS - 1}:after_checkpoint"
    if fault_env:
        killed = run_subprocess(prune_args(directory, calib, out, *HP_IN_MEMORY), {"HYPERPRUNE_FAULT": fault_env})
        assert killed.returncode == -9, killed.stderr[-500:]
    extra = ["--resume"] if fault_env else []
    stopped = run_subprocess(prune_args(directory, calib, out, *HP_IN_MEMORY, *extra), {"HYPERPRUNE_FAULT": last})
    assert stopped.returncode == -9, stopped.stderr[-500:]
    with safe_open(str(partial_dir_for(out) / f"state/method-{NLAYERS - 1:05d}.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_resumed_hypernetwork_state_is_bit_identical(tmp_path, hp_reference):
    """Masks hide small differences (a flip needs a near-tie); the trained hypernetwork and its
    continual cache do not. Both must end bit-identical after a kill and resume."""
    directory, calib, _ = hp_reference
    uninterrupted = final_method_state(directory, calib, tmp_path / "a", None)
    resumed = final_method_state(directory, calib, tmp_path / "b", "1:mid_block")
    assert uninterrupted.keys() == resumed.keys() and "network.first.weight" in uninterrupted
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], resumed[key]), key
