"""Recovery after pruning: block reconstruction and the dense target, side by side in one run.

Every row shares the model load, calibration windows and evaluation windows. Rows are numbered;
``--only`` picks some (one process per row or per seed keeps a long table resumable by hand).
The reconstruction and target settings of the rows that use them come from the usual flags
(``--reconstruct-steps`` etc.); the plain rows always run with reconstruction off.

    python benchmarks/recovery.py --nsamples 32 --seqlen 512 --eval sotu,brown-test,shakespeare \\
        --eval-windows 40 --reconstruct-steps 50 --json benchmarks/results/recovery/recovery.json
"""

from __future__ import annotations

import sys

from variants import base_config, chosen, run_variants, variant_parser

from hyperprune.config import ReconstructOptions

# label -> (method, reconstruct on?, target)
ROWS = {
    "sparsegpt": ("sparsegpt", False, "pruned"),
    "sparsegpt +reconstruct": ("sparsegpt", True, "pruned"),
    "hyperprune+refit": ("hyperprune+refit", False, "pruned"),
    "hyperprune+refit +reconstruct": ("hyperprune+refit", True, "pruned"),
    "sparsegpt --target dense": ("sparsegpt", False, "dense"),
    "sparsegpt +reconstruct --target dense": ("sparsegpt", True, "dense"),
    "hyperprune+refit --target dense": ("hyperprune+refit", False, "dense"),
    "hyperprune+refit +reconstruct --target dense": ("hyperprune+refit", True, "dense"),
    "dense": ("dense", False, "pruned"),
}


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    base = base_config(args, "sparsegpt")
    if base.reconstruct.steps == 0:
        parser.error("give --reconstruct-steps N (N > 0) for the reconstruction rows")
    wanted = chosen(args, len(ROWS))
    runs = []
    for number, (label, (method, reconstruct, target)) in enumerate(ROWS.items()):
        if number in wanted:
            options = base.reconstruct if reconstruct else ReconstructOptions()
            runs.append((label, base.model_copy(update={"method": method, "reconstruct": options, "fit_target": target})))
    run_variants(args, runs, lambda e: [f"{e.get('reconstruct_seconds', 0):.1f}"], ["reconstruct s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
