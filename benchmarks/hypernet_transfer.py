"""One-shot transfer of a trained HyperPrune network to another model (issue 27), side by side
with SparseGPT and with a network trained on that model from scratch, on the same windows.

    OMP_NUM_THREADS=2 python benchmarks/hypernet_transfer.py --model gemma3-270m \
        --transfer benchmarks/results/hypernet-transfer/smollm2-135m-layerwise-seed0.safetensors \
        --nsamples 8 --seqlen 256 --eval sotu,brown-test,shakespeare --eval-windows 40 --seed 0 \
        --json benchmarks/results/hypernet-transfer/gemma3-270m-seed0.json

Rows (``--only`` picks by number):
  0 sparsegpt                          1 sparsegpt+lstsq
  2 transfer, 0 steps (frozen)         3 transfer, --few-steps steps per block (frozen)
  4 transfer, 0 steps, +refit          5 from scratch (frozen)     6 from scratch, +refit

A transferred network starts every block; its layer embeddings are mapped by relative depth
when the models have different numbers of blocks (``methods/hyperprune/storage.py``). Every
HyperPrune row runs at the paper's setting (SparseGPT's prior, dense weights priced), which the
network to transfer should have been trained at.
"""

from __future__ import annotations

import sys

from variants import base_config, chosen, run_variants, variant_parser


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--transfer", required=True, help="the saved network to transfer (--hyperprune-save-hypernet)")
    parser.add_argument("--few-steps", type=int, default=10, help="training steps per block of the fine-tuned transfer")
    args = parser.parse_args(argv)
    base = base_config(args, "dense")

    def hyperprune(method: str, **options):
        # Every HyperPrune row at the paper's setting (SparseGPT's prior, the dense weights priced), the
        # one the transferred network was trained at; hyperprune+refit's own default is route A.
        return base.with_method(method).with_options("hyperprune", prior="sparsegpt", values="dense", **options)

    runs = [
        ("sparsegpt", base.with_method("sparsegpt")),
        ("sparsegpt+lstsq", base.with_method("sparsegpt+lstsq")),
        ("hyperprune, transferred, 0 steps", hyperprune("hyperprune", hypernet=args.transfer, steps=0)),
        (f"hyperprune, transferred, {args.few_steps} steps",
         hyperprune("hyperprune", hypernet=args.transfer, steps=args.few_steps)),
        ("hyperprune+refit, transferred, 0 steps", hyperprune("hyperprune+refit", hypernet=args.transfer, steps=0)),
        ("hyperprune, from scratch", hyperprune("hyperprune")),
        ("hyperprune+refit, from scratch", hyperprune("hyperprune+refit")),
    ]
    keep = chosen(args, len(runs))
    run_variants(args, [run for index, run in enumerate(runs) if index in keep])
    return 0


if __name__ == "__main__":
    sys.exit(main())
