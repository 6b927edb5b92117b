"""What HyperPrune's setup cuts save at LLaMA-2-7B shapes (issue 26), measured directly on the
operations, one decoder block's seven layers (random weights and inputs; float32; the CPU):

    OMP_NUM_THREADS=1 python benchmarks/setup_cuts.py --tokens 512 --repeats 3 \
        --json benchmarks/results/engine-speed/setup-cuts-7b-shapes.json

- ``dense_energy``: diag(W H Wᵀ), once a W·H product per layer in the problem's setup, now the
  output energy Σ(y − b)² that a forward hook adds during the calibration pass.
Reports the median seconds of each over ``--repeats``, per block.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hyperprune.report import environment, library_versions

# LLaMA-2-7B: (d_out, d_in) of q, k, v, o, gate, up, down
SHAPES = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512, help="calibration tokens (7B check: 4 × 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    product = hooked = 0.0
    for d_out, d_in in SHAPES:
        W = torch.randn(d_out, d_in, generator=generator) / d_in**0.5
        X = torch.randn(args.tokens, d_in, generator=generator)
        H = X.T @ X * (2.0 / args.tokens)
        Y = X @ W.T  # what the layer's forward produces anyway
        product += _median_seconds(lambda: ((W @ H) * W).sum(dim=1), args.repeats)
        hooked += _median_seconds(lambda: (Y * Y).sum(dim=0) * (2.0 / args.tokens), args.repeats)
        energy, reference = (Y * Y).sum(dim=0) * (2.0 / args.tokens), ((W @ H) * W).sum(dim=1)
        assert torch.allclose(energy, reference, rtol=1e-3), "the two give different energies"
        del W, X, H, Y
    result = {"tokens": args.tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "dense_energy_product_s_per_block": product, "dense_energy_hook_s_per_block": hooked,
              "versions": library_versions(), "environment": environment()}
    print(f"dense_energy per 7B block: W·H product {product:.1f} s, output-energy hook {hooked:.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
