"""Time the original Wanda and SparseGPT code (locuslab/wanda, lib/prune.py) against ours on
the same job, one after the other in one process: dense SmolLM2-135M (float32, CPU, one thread),
our 8 calibration windows of 256 tokens, 2:4. Also measures how often the two keep-masks agree.

    .venv/bin/python benchmarks/original_code_timing.py --wanda-repo /tmp/wanda --repeats 3 \\
        --json benchmarks/results/engine-speed/original-vs-ours-8x256.json

Their modules are imported from --wanda-repo at run time (a checkout of locuslab/wanda); none of
their code is copied here. Their per-layer loops ``prune_wanda`` / ``prune_sparsegpt``,
``WrappedGPT`` and ``SparseGPT.fasterprune`` run unchanged. What is patched, at run time only:

1. ``lib.prune.get_loaders`` is replaced by a function returning our windows as their dataloader
   of ``(inp, tar)`` pairs of shape [1, seqlen] (theirs would download C4 and tokenize anew).
2. ``model.seqlen`` and ``model.hf_device_map = {}`` are set (their ``get_llm`` sets the first;
   ``from_pretrained(device_map="auto")`` the second; empty means everything on one device).
3. Each decoder layer's ``forward`` gets ``position_embeddings=(cos, sin)`` bound with
   ``functools.partial``, computed once from ``model.model.rotary_emb``: transformers 5 layers no
   longer compute RoPE themselves, and their loops call ``layer(x, attention_mask, position_ids)``.
4. ``torch.cuda.synchronize`` is a no-op while their code runs on a CPU-only torch
   (``fasterprune`` calls it unconditionally; it raises without CUDA).
Nothing else needed changing: their Catcher still captures ``attention_mask`` (None with SDPA and
no padding, so SDPA's own causal mask is used, as in the full model) and ``position_ids`` from the
model's call; a transformers 5 layer returns a tensor instead of a tuple, so their ``layer(...)[0]``
takes batch row 0, which is exactly what their ``outs[j] = ...`` expects. Their stdout is silenced.
Each run starts from a fresh deep copy of the dense model, loaded once (loading is not timed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from hyperprune.api import calibration_ids, load_for, prunable_weights, run_method, write_json
from hyperprune.config import PruneConfig
from hyperprune.report import environment, library_versions

NSAMPLES, SEQLEN, SEED, PRUNE_N, PRUNE_M = 8, 256, 0, 2, 4
METHODS = ("wanda", "sparsegpt")
THEIRS = "theirs (locuslab/wanda)"


def ours_row(windows: int) -> str:
    return f"ours (layer_error_windows={windows})"


def import_theirs(repo: Path):
    sys.path.insert(0, str(repo))
    import lib.prune  # their package is called "lib"

    return lib.prune


@contextlib.contextmanager
def cpu_safe_cuda_sync():
    """Their fasterprune calls torch.cuda.synchronize(), which raises on a CPU-only torch."""
    original = torch.cuda.synchronize
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *args, **kwargs: None
    try:
        yield
    finally:
        torch.cuda.synchronize = original


def bind_position_embeddings(model, seqlen: int) -> None:
    """transformers 5 decoder layers need position_embeddings=(cos, sin); their loops pass none."""
    position_ids = torch.arange(seqlen).unsqueeze(0)
    probe = torch.zeros(1, seqlen, model.config.hidden_size, dtype=model.dtype)
    with torch.no_grad():
        cos_sin = model.model.rotary_emb(probe, position_ids=position_ids)
    for layer in model.model.layers:
        layer.forward = functools.partial(layer.forward, position_embeddings=cos_sin)


def time_theirs(prune_module, model, ids: torch.Tensor, method: str) -> float:
    seqlen = ids.shape[1]
    model.seqlen = seqlen
    model.hf_device_map = {}
    # Their get_c4 returns (inp, tar) with tar = inp and all but the last target masked to -100.
    loader = []
    for row in ids:
        inp = row.unsqueeze(0).clone()
        tar = inp.clone()
        tar[:, :-1] = -100
        loader.append((inp, tar))
    prune_module.get_loaders = lambda *args, **kwargs: (loader, None)
    bind_position_embeddings(model, seqlen)
    args = SimpleNamespace(nsamples=len(ids), seed=SEED, sparsity_ratio=0.5, use_variant=False)
    prune = {"wanda": prune_module.prune_wanda, "sparsegpt": prune_module.prune_sparsegpt}[method]
    with cpu_safe_cuda_sync(), contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        prune(args, model, None, torch.device("cpu"), prune_n=PRUNE_N, prune_m=PRUNE_M)
        return time.perf_counter() - start


def time_ours(loaded, ids: torch.Tensor, method: str, windows: int) -> float:
    config = PruneConfig(method=method, nsamples=NSAMPLES, seqlen=SEQLEN, seed=SEED, device="cpu",
                         target="2:4", layer_error_windows=windows)
    start = time.perf_counter()
    run_method(loaded, config, ids, progress=False)
    return time.perf_counter() - start


def keep_masks(loaded) -> dict[str, torch.Tensor]:
    return {name: weight.detach() != 0 for name, weight in prunable_weights(loaded.model, loaded).items()}


def agreement(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of weights with the same keep/prune choice, and of 4-groups with the same pattern."""
    same = total = same_groups = groups = 0
    for name, mask in ours.items():
        equal = mask == theirs[name]
        same += int(equal.sum())
        total += equal.numel()
        group_equal = equal.reshape(equal.shape[0], -1, PRUNE_M).all(dim=-1)
        same_groups += int(group_equal.sum())
        groups += group_equal.numel()
    return {"weights": same / total, "groups_of_4": same_groups / groups}


def wanda_commit(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wanda-repo", type=Path, required=True, help="a checkout of locuslab/wanda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer-error-windows", type=int, default=2,
                        help="ours is timed at 0 (all windows, the old behaviour) and at this value")
    parser.add_argument("--skip-all-windows", action="store_true",
                        help="time ours only at --layer-error-windows, not also at 0 (the old behaviour)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repo = args.wanda_repo.resolve()
    prune_module = import_theirs(repo)

    base_config = PruneConfig(method="wanda", nsamples=NSAMPLES, seqlen=SEQLEN, seed=SEED)
    dense, seqlen = load_for(base_config, progress=False)
    ids = calibration_ids(dense, base_config, seqlen)
    settings = [args.layer_error_windows] if args.skip_all_windows else sorted({0, args.layer_error_windows})
    rows = [THEIRS] + [ours_row(w) for w in settings]
    seconds = {m: {row: [] for row in rows} for m in METHODS}
    agree = {m: {ours_row(w): [] for w in settings} for m in METHODS}

    # Interleaved: each repeat runs every (method, code) once, so machine load hits all alike.
    for repeat in range(args.repeats):
        for method in METHODS:
            fresh = dataclasses.replace(dense, model=copy.deepcopy(dense.model))
            seconds[method][THEIRS].append(time_theirs(prune_module, fresh.model, ids, method))
            theirs_masks = keep_masks(fresh)
            del fresh
            for windows in settings:
                fresh = dataclasses.replace(dense, model=copy.deepcopy(dense.model))
                seconds[method][ours_row(windows)].append(time_ours(fresh, ids, method, windows))
                agree[method][ours_row(windows)].append(agreement(keep_masks(fresh), theirs_masks))
                del fresh
            print(f"repeat {repeat + 1}/{args.repeats} {method}: "
                  + ", ".join(f"{row} {seconds[method][row][-1]:.1f}s" for row in rows), flush=True)

    medians = {m: {row: statistics.median(seconds[m][row]) for row in rows} for m in METHODS}
    ratios = {m: {ours_row(w): medians[m][ours_row(w)] / medians[m][THEIRS] for w in settings} for m in METHODS}

    print("\n| method | code | seconds per run | median (s) | ours/theirs | same keep choice (weights / 4-groups) |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        for row in rows:
            runs = ", ".join(f"{s:.1f}" for s in seconds[method][row])
            ratio = f"{ratios[method][row]:.2f}" if row in ratios[method] else "1"
            last = agree[method][row][-1] if row in agree[method] else None
            same = f"{last['weights']:.4%} / {last['groups_of_4']:.4%}" if last else "-"
            print(f"| {method} | {row} | {runs} | {medians[method][row]:.1f} | {ratio} | {same} |")

    if args.json:
        write_json(args.json, {
            "argv": sys.argv,
            "versions": library_versions(),
            "environment": environment(),
            "config": {"model": base_config.model, "nsamples": NSAMPLES, "seqlen": seqlen, "seed": SEED,
                       "pattern": f"{PRUNE_N}:{PRUNE_M}", "dtype": "float32", "device": "cpu", "threads": 1,
                       "repeats": args.repeats, "layer_error_windows": settings,
                       "wanda_repo": str(repo), "wanda_commit": wanda_commit(repo)},
            "seconds": seconds,
            "median_seconds": medians,
            "ratio_ours_over_theirs": ratios,
            "mask_agreement": agree,
        })


if __name__ == "__main__":
    main()
