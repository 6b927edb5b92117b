"""How much of MaskLLM's per-step gradient is signal: agreement between the pattern-logit gradients
of two disjoint sets of calibration windows, for sets of 1, 4, 16... windows.

    OMP_NUM_THREADS=2 python benchmarks/maskllm_gradient_snr.py --pattern 2:4 --nsamples 32 --seqlen 512 \
        --sizes 1,4,16 --seed 0 --json benchmarks/results/maskllm-curve/maskllm-gradient-snr-seed0.json

The logits are MaskLLM's starting point (the one-shot prior, ``--maskllm-init-scale``), the soft
masks are drawn exactly as in its first training step (Gumbel noise, temperature τ0, κ). For each
size k the gradient of the mean LM loss over windows [0, k) is compared with that over [k, 2k):
their cosine similarity, and the share of logits whose two gradients have the same sign (Adam
moves a logit by about its learning rate in the sign's direction, whatever the gradient's size,
so sign agreement is what decides whether a step follows the data or the noise; 0.5 is chance).
If each window's gradient is a common signal plus independent noise of power ratio s, the
cosine of two k-window means is about k·s / (k·s + 1), so ``windows_for_cosine_0.5`` = 1/s
estimates the batch needed before a step's direction is half signal.
"""

from __future__ import annotations

import sys

import torch
from variants import base_config, variant_parser

from hyperprune.api import calibration_ids, load_for, write_json
from hyperprune.cli.options import print_table
from hyperprune.numerics.end_to_end import substituted
from hyperprune.numerics.masked_training import activation_checkpointing
from hyperprune.masks import nm_patterns
from hyperprune.engine.whole_model_pass import one_shot_masks
from hyperprune.methods.maskllm import MaskLLM, prior_logits, soft_masked_weights
from hyperprune.models.architectures import prunable_weight_names
from hyperprune.report import environment, library_versions
from hyperprune.utils import resolve_device


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Cosine similarity and same-sign share of two flat gradients (pure math, tested)."""
    both = (a != 0) & (b != 0)
    return {"cosine": float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)),
            "sign_agreement": float(((a > 0) == (b > 0))[both].float().mean()) if both.any() else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,16", help="comma-separated window-set sizes k (2k ≤ --nsamples)")
    args = parser.parse_args(argv)
    config = base_config(args, "maskllm")
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if sizes[0] < 1 or 2 * sizes[-1] > config.nsamples:
        parser.error(f"--sizes must lie between 1 and --nsamples / 2 ({config.nsamples // 2})")
    device = resolve_device(config.device)
    loaded, seqlen = load_for(config)
    model, options, pattern = loaded.model, MaskLLM(config).options, config.target.pattern
    calib = calibration_ids(loaded, config, seqlen)
    names = prunable_weight_names(model, loaded.layout)
    params = dict(model.named_parameters())
    patterns = nm_patterns(pattern.n, pattern.m).to(device)
    prior = one_shot_masks(options.prior, config, model, loaded.layout, calib, device)
    logits = prior_logits(prior, options.init_scale, device, names, patterns)
    generator = torch.Generator().manual_seed(config.seed)
    sums = {(k, half): None for k in sizes for half in (0, 1)}
    losses = []
    model.requires_grad_(False)
    model.to(device)
    with activation_checkpointing(model):
        for window in range(2 * sizes[-1]):
            weights = soft_masked_weights(logits, params, patterns, options.tau0, options.logit_scale, generator, device)
            ids = calib[window:window + 1].to(device)
            with substituted(model, weights):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                grads = torch.autograd.grad(loss, [logits[n] for n in names])
            losses.append(float(loss.detach()))
            flat = torch.cat([g.reshape(-1) for g in grads]).cpu()
            for k in sizes:
                half = window // k
                if half < 2:
                    sums[k, half] = flat.clone() if sums[k, half] is None else sums[k, half].add_(flat)
            print(f"window {window}: loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    rows = []
    for k in sizes:
        row = {"windows_per_set": k, "tokens_per_set": k * seqlen, **agreement(sums[k, 0], sums[k, 1])}
        cos = row["cosine"]
        row["windows_for_cosine_0.5"] = k * (1 - cos) / cos if cos > 0 else None  # 1/s from cos = k·s/(k·s+1)
        rows.append(row)
    out = {"config": config.model_dump(mode="json"), "seqlen": seqlen, "losses": losses, "sets": rows,
           "versions": library_versions(), "environment": environment()}
    if args.json:
        write_json(args.json, out)
    print_table(["windows per set", "tokens", "cosine", "same sign", "windows for cosine 0.5"],
                 [[r["windows_per_set"], r["tokens_per_set"], f"{r['cosine']:.4f}", f"{r['sign_agreement']:.4f}",
                   f"{r['windows_for_cosine_0.5']:.0f}" if r["windows_for_cosine_0.5"] else "–"] for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
