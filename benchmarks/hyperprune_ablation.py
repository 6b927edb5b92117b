"""HyperPrune ablation: each part switched off, one at a time, side by side in one run.

Takes the same model, pruning, HyperPrune and evaluation flags as ``hyperprune compare``;
every variant shares the model load, calibration windows and evaluation windows.

    python benchmarks/hyperprune_ablation.py --nsamples 32 --seqlen 512 \\
        --eval sotu,brown-test,shakespeare --eval-windows 40 --json benchmarks/results/ablation.json
"""

from __future__ import annotations

import argparse
import sys

from hyperprune.api import compare, write_json
from hyperprune.cli import _add_eval, _add_model, _add_pruning, _config, _print_table
from hyperprune.config import DEFAULT_EVAL

# label -> what that variant changes (HyperPruneOptions fields), from today's defaults.
ABLATIONS = {
    "hyperprune (all parts)": {},
    "--no-layer-emb": {"layer_embedding": False},
    "--no-comp-emb": {"component_embedding": False},
    "--no-continual": {"continual": False},
    "--lambda-outlier 0.1 (outlier term on)": {"lambda_outlier": 0.1},
    "--prior none": {"prior": "none"},
    "--relaxation expected (Theorem 1's E[M])": {"relaxation": "expected"},
    "--features without delta, hblock": {"features": ("weight", "wanda", "saliency", "hdiag", "hinv", "coupling")},
    "--refresh-every 0": {"refresh_every": 0},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add_model(parser)
    _add_pruning(parser)
    _add_eval(parser, DEFAULT_EVAL)
    parser.add_argument("--with-baselines", default="sparsegpt", help="comma-separated methods run alongside")
    parser.add_argument("--only", default=None, help="comma-separated variant numbers (0 = all parts) to run")
    parser.add_argument("--json", default=None, help="results, rewritten after each variant")
    args = parser.parse_args(argv)
    base = _config(args, "hyperprune")
    runs: list = [name for name in args.with_baselines.split(",") if name]
    chosen = {int(i) for i in args.only.split(",")} if args.only else set(range(len(ABLATIONS)))
    for number, (label, switch) in enumerate(ABLATIONS.items()):
        if number not in chosen:
            continue
        options = base.hyperprune.model_copy(update=switch)
        runs.append((label, base.model_copy(update={"hyperprune": options})))
    sources = [s.strip() for s in args.eval.split(",") if s.strip()]
    save = (lambda partial: write_json(args.json, partial)) if args.json else None
    result = compare(runs, base, eval_source=sources, eval_windows=args.eval_windows, progress=not args.quiet,
                     on_method_done=save)
    headers = ["variant", *[f"PPL {s}" for s in sources], "block err", "prune s"]
    rows = []
    for label, entry in result["methods"].items():
        rows.append([label, *[f"{entry['ppl_by_eval'][s]:.2f}" for s in sources],
                     f"{entry.get('mean_block_rel_update_error', 0):.4f}", f"{entry['prune_seconds']:.1f}"])
    _print_table(headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
