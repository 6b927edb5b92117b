"""HyperPrune ablation: each part switched off, one at a time, side by side in one run.

Takes the same model, pruning, HyperPrune and evaluation flags as ``hyperprune compare``;
every variant shares the model load, calibration windows and evaluation windows.

    python benchmarks/hyperprune_ablation.py --nsamples 32 --seqlen 512 \\
        --eval sotu,brown-test,shakespeare --eval-windows 40 --json benchmarks/results/hyperprune-ablation/ablation.json
"""

from __future__ import annotations

import sys

from variants import base_config, chosen, run_variants, variant_parser

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
    parser = variant_parser(__doc__.splitlines()[0])
    parser.add_argument("--with-baselines", default="sparsegpt", help="comma-separated methods run alongside")
    args = parser.parse_args(argv)
    base = base_config(args, "hyperprune")
    runs: list = [name for name in args.with_baselines.split(",") if name]
    wanted = chosen(args, len(ABLATIONS))
    for number, (label, switch) in enumerate(ABLATIONS.items()):
        if number in wanted:
            runs.append((label, base.with_options("hyperprune", **switch)))
    run_variants(args, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
