"""Bit-identity of SparseGPT and HyperPrune on the whole embedded model against digests recorded
before the package was re-laid (issue 30): 8 x 256 calibration tokens of brown, seed 0, 2 threads,
HyperPrune at 10 steps per block. The test suite runs the same check on the first 3 blocks.

    python benchmarks/bit_identity.py --json benchmarks/results/bit-identity/after-issue-30.json
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hyperprune.api import calibration_ids, load_for, prunable_weights, run_method, write_json
from hyperprune.config import PruneConfig
from hyperprune.report import environment, library_versions
from hyperprune.testing import tensor_digest

# Recorded with commit b6721d1 (old API: PruneConfig(..., hyperprune=HyperPruneOptions(steps=10))).
RECORDED = {
    "sparsegpt": ("c020550f885a691f6ce91717dc2748f79bfa0c193bb805772433ae9ed5142251",
                  "8523a4626df9d77e52cbe058c11a932abc7d14b890db14c394d5bc127c4edfe5"),
    "hyperprune": ("940e4f7b168457372c8fcf32e0cb8feacb1aeef22fb25ae4ade95ec50a78c2c5",
                   "98233587401ab38cecdc43b173ef390e41d44bd5b3bab73e33a21cc2b858c00e"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the digests and the verdict here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    out = {"methods": {}, "versions": library_versions(), "environment": environment()}
    for method in RECORDED:
        config = PruneConfig(method=method, nsamples=8, seqlen=256, seed=0, options={"hyperprune": {"steps": 10, "row_fraction": 0.25, "prior": "sparsegpt", "values": "dense"}},
                             refit={"method": "lstsq"})
        loaded, seqlen = load_for(config)
        calib = calibration_ids(loaded, config, seqlen)
        start = time.perf_counter()
        run = run_method(loaded, config, calib, progress=False)
        weights = {k: v.float() for k, v in prunable_weights(loaded.model, loaded).items()}
        got = (tensor_digest(run.result.masks), tensor_digest(weights))
        out["methods"][method] = {"masks": got[0], "weights": got[1], "identical": got == RECORDED[method],
                                  "seconds": time.perf_counter() - start}
        print(f"{method}: {'identical' if got == RECORDED[method] else 'DIFFERENT'} ({time.perf_counter() - start:.0f} s)")
    if args.json:
        write_json(args.json, out)
    return 0 if all(m["identical"] for m in out["methods"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
