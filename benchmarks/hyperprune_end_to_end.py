"""HyperPrune end to end (issue 27, route B), side by side in one run on the same windows.

    OMP_NUM_THREADS=1 python benchmarks/hyperprune_end_to_end.py --nsamples 8 --seqlen 256 \
        --eval sotu,brown-test,shakespeare --eval-windows 20 --e2e-steps 12 --e2e-eval-every 4 \
        --baselines sparsegpt --seed 0 \
        --json benchmarks/results/hyperprune-end-to-end/route-b-seed0.json

Rows, each from the dense model:
  sparsegpt, sparsegpt+lstsq                    the classical references
  hyperprune                                    the layer-wise pass, frozen weights (the paper's setting)
  hyperprune end to end                         its network fine-tuned on KL(dense ‖ pruned), frozen weights
  hyperprune (layer-wise network) +refit        the layer-wise network applied as it is, then the exact refit
  hyperprune end to end +refit                  the fine-tuned network applied as it is, then the exact refit

The end-to-end phase trains on the layer-wise pass's calibration windows and stops early on
``--e2e-holdout`` more windows of the calibration text. The "+refit" rows are a second layer-wise
pass with ``hyperprune+refit``, 0 steps, no prior, starting from the saved network
(``--hypernet``): the masks are the network's alone, and each is refit.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from variants import base_config, variant_parser

from hyperprune.api import calibration_ids, eval_ids, evaluate_perplexity, load_for, run_method, write_json
from hyperprune.cli.options import print_table
from hyperprune.masks import nm_patterns
from hyperprune.methods.hyperprune.network_finetune import hard_keeps, train_network_end_to_end
from hyperprune.methods.hyperprune.method import HyperPrune
from hyperprune.methods.hyperprune.storage import save_hypernet
from hyperprune.report import environment, library_versions


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--e2e-steps", type=int, default=20)
    parser.add_argument("--e2e-lr", type=float, default=1e-4)
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
        from hyperprune.engine import run_layerwise  # the method instance is needed afterwards
        start = time.perf_counter()
        run_layerwise(model, loaded.layout, method, calib, torch.device("cpu"), config.engine_settings(),
                      progress=not args.quiet)
        layer_seconds = time.perf_counter() - start
    finally:
        HyperPrune.collect_network_layers = False
    network, layers = method.network.cpu(), method.network_layers
    layerwise_file = scratch / "layerwise.safetensors"
    save_hypernet(layerwise_file, network, method.shape, method.options, str(config.target.pattern))
    before = hard_keeps(network, layers, patterns)
    score("hyperprune", layer_seconds)

    e2e = train_network_end_to_end(model, network, layers, patterns, calib, holdout, args.e2e_steps, args.e2e_lr,
                                   args.e2e_tau, args.e2e_batch, args.e2e_eval_every, args.e2e_patience, config.seed,
                                   args.group_fraction, progress=not args.quiet)
    after = hard_keeps(network, layers, patterns)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for layer in layers:
            params[layer.name].copy_((layer.values * after[layer.name]).to(params[layer.name].dtype))
    m = config.target.pattern.m
    changed = sum(int((before[k] != after[k]).view(-1, m).any(1).sum()) for k in after) / sum(
        after[k].numel() // m for k in after)
    end_file = scratch / "end-to-end.safetensors"
    save_hypernet(end_file, network, method.shape, method.options, str(config.target.pattern))
    score("hyperprune end to end", layer_seconds + e2e.seconds, end_to_end={
        "steps": e2e.steps, "best_step": e2e.best_step, "seconds": e2e.seconds, "train_kl": e2e.train_kl,
        "holdout_kl": e2e.holdout_kl, "groups_changed": changed})

    for label, file in (("hyperprune (layer-wise network) +refit", layerwise_file),
                        ("hyperprune end to end +refit", end_file)):
        seconds = prune("hyperprune+refit", hypernet=str(file), steps=0, prior="none")
        score(label, seconds)

    print_table(["row", *[f"PPL {s}" for s in sources], "seconds"],
                [[label, *[f"{row['ppl'][s]:.2f}" for s in sources], f"{row['seconds']:.0f}"] for label, row in rows.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
