"""HyperPrune end to end (issue 27, route B), side by side in one run on the same windows.

    OMP_NUM_THREADS=1 python benchmarks/hyperprune_end_to_end.py --nsamples 8 --seqlen 256 \
        --eval sotu,brown-test,shakespeare --eval-windows 20 --e2e-steps 12 --e2e-eval-every 4 \
        --e2e-lr 1e-4,1e-3 --seed 0 \
        --json benchmarks/results/hyperprune-end-to-end/route-b-seed0.json

Rows, each from the dense model:
  sparsegpt, sparsegpt+lstsq                    the classical references (--baselines)
  hyperprune                                    the layer-wise pass, frozen weights (the paper's setting)
  hyperprune end to end (lr X)                  its network fine-tuned on KL(dense ‖ pruned), frozen weights,
                                                one phase per --e2e-lr value, each from the layer-wise network
  hyperprune +refit (its layer-wise masks)      the masks the layer-wise pass applied, each layer refit
  hyperprune end to end (lr X) +refit           the phase with the lowest held-out KL, each layer refit

The layer-wise pass and the phases train on the first --nsamples windows and stop early on
``--e2e-holdout`` more windows of the calibration text (never on perplexity). The "+refit" rows
run the layer loop of ``hyperprune+refit`` with route B's masks given: each layer's kept weights
are refit (the shared --refit-method) on the inputs it sees in that pruned model, as
``sparsegpt+lstsq`` does for SparseGPT's masks.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from variants import base_config, variant_parser

from hyperprune.api import calibration_ids, eval_ids, evaluate_perplexity, load_for, run_method, write_json
from hyperprune.workflows.pruning_run import build_method
from hyperprune.cli.options import print_table
from hyperprune.masks import nm_patterns
from hyperprune.engine import run_layerwise
from hyperprune.methods.hyperprune.network_finetune import FineTuningSettings, NetworkFineTuning, hard_keeps
from hyperprune.methods.hyperprune.method import HyperPrune
from hyperprune.methods.hyperprune.storage import save_hypernet
from hyperprune.report import environment, library_versions


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--e2e-steps", type=int, default=20)
    parser.add_argument("--e2e-lr", default="1e-4", help="comma-separated: one phase per value")
    parser.add_argument("--e2e-tau", type=float, default=0.5)
    parser.add_argument("--e2e-batch", type=int, default=1)
    parser.add_argument("--e2e-holdout", type=int, default=2)
    parser.add_argument("--e2e-eval-every", type=int, default=5)
    parser.add_argument("--e2e-patience", type=int, default=2)
    parser.add_argument("--group-fraction", type=float, default=0.25, help="share of groups in the network's backward")
    parser.add_argument("--baselines", default="sparsegpt,sparsegpt+lstsq", help="the classical rows, comma-separated")
    args = parser.parse_args(argv)
    config = base_config(args, "hyperprune")
    loaded, seqlen = load_for(config)
    model = loaded.model
    windows = calibration_ids(loaded, config.model_copy(update={"nsamples": config.nsamples + args.e2e_holdout}), seqlen)
    calib, holdout = windows[: config.nsamples], windows[config.nsamples :]
    sources = [s.strip() for s in args.eval.split(",") if s.strip()]
    evaluation = {s: eval_ids(loaded, s, seqlen, args.eval_windows) for s in sources}
    dense = {name: value.clone() for name, value in model.state_dict().items()}
    rows: dict[str, dict] = {}
    patterns = nm_patterns(config.target.pattern.n, config.target.pattern.m)
    scratch = Path(tempfile.mkdtemp(prefix="hyperprune-e2e-"))

    def score(label: str, seconds: float, **extra) -> None:
        ppl = {s: evaluate_perplexity(model, ids, "cpu", progress=False).ppl for s, ids in evaluation.items()}
        rows[label] = {"ppl": ppl, "seconds": seconds, **extra}
        print(label, {s: round(v, 2) for s, v in ppl.items()}, f"{seconds:.0f}s", file=sys.stderr, flush=True)
        if args.json:
            write_json(args.json, output())

    def output() -> dict:
        return {"config": config.model_dump(mode="json"), "seqlen": seqlen, "e2e": {k: v for k, v in vars(args).items()
                if k.startswith("e2e") or k == "group_fraction"}, "rows": rows, "versions": library_versions(),
                "environment": environment()}

    def prune(method: str, **options) -> float:
        model.load_state_dict(dense)
        run = run_method(loaded, config.model_copy(update={"method": method, "options": {**config.options, "hyperprune": {
            **config.options.get("hyperprune", {}), **options}}}), calib, progress=not args.quiet)
        return run.seconds

    for method in filter(None, args.baselines.split(",")):
        score(method, prune(method))

    HyperPrune.collect_network_layers = True
    try:
        model.load_state_dict(dense)
        method = HyperPrune(config)
        start = time.perf_counter()
        run_layerwise(model, loaded.layout, method, calib, torch.device("cpu"), config.engine_settings(),
                      progress=not args.quiet)
        layer_seconds = time.perf_counter() - start
    finally:
        HyperPrune.collect_network_layers = False
    layerwise_network, layers = method.network.cpu(), method.network_layers
    save_hypernet(scratch / "layerwise.safetensors", layerwise_network, method.shape, method.options,
                  str(config.target.pattern))
    applied = {layer.name: layer.applied for layer in layers}
    network_masks = hard_keeps(layerwise_network, layers, patterns)
    m = config.target.pattern.m
    drift = sum(int((network_masks[k] != applied[k]).view(-1, m).any(1).sum()) for k in applied) / sum(
        v.numel() // m for v in applied.values())
    score("hyperprune", layer_seconds, final_network_vs_applied=drift)

    def set_masks(masks: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            params = dict(model.named_parameters())
            for layer in layers:
                params[layer.name].copy_((layer.values * masks[layer.name]).to(params[layer.name].dtype))

    # One end-to-end phase per learning rate, each from the layer-wise network; the phase kept for
    # the "+refit" row is the one with the lowest held-out KL (never chosen by perplexity).
    phases = {}
    for lr in [float(v) for v in str(args.e2e_lr).split(",")]:
        network = copy.deepcopy(layerwise_network)
        settings = FineTuningSettings(args.e2e_steps, lr, args.e2e_tau, args.e2e_batch, args.e2e_eval_every,
                                      args.e2e_patience, config.seed, args.group_fraction, gradient_checkpointing=True)
        training = NetworkFineTuning(model, network, layers, patterns, calib, holdout, settings)
        e2e = training.train(progress=not args.quiet)
        masks = training.final_masks()
        set_masks(masks)
        label = f"hyperprune end to end (lr {lr:g})"
        score(label, layer_seconds + e2e.seconds, end_to_end={
            "lr": lr, "steps": e2e.steps, "best_step": e2e.best_step, "seconds": e2e.seconds, "train_kl": e2e.train_kl,
            "holdout_kl": e2e.holdout_kl, "groups_changed": training.changed_groups()})
        phases[label] = (min(kl for _, kl in e2e.holdout_kl), masks)
    chosen = min(phases, key=lambda label: phases[label][0])
    rows[chosen]["chosen_by_holdout_kl"] = True

    for label, masks in (("hyperprune +refit (its layer-wise masks)", applied),
                         (f"{chosen} +refit", phases[chosen][1])):
        model.load_state_dict(dense)
        refit_config = config.with_method("hyperprune+refit").with_options("hyperprune", end_to_end_steps=1)
        refit = build_method(refit_config)  # route B's layer loop: each layer refit to the given masks
        refit.end_to_end_masks = {name: keep.clone() for name, keep in masks.items()}
        start = time.perf_counter()
        run_layerwise(model, loaded.layout, refit, calib, torch.device("cpu"), refit_config.engine_settings(),
                      progress=not args.quiet)
        score(label, time.perf_counter() - start)

    print_table(["row", *[f"PPL {s}" for s in sources], "seconds"],
                [[label, *[f"{row['ppl'][s]:.2f}" for s in sources], f"{row['seconds']:.0f}"] for label, row in rows.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
