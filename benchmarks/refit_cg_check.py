"""Per-layer check of the CG refit against the Cholesky refit on real Hessians (issue 26).

For every linear of the model: SparseGPT's mask, then the exact least-squares refit solved both
ways, one Cholesky per row (``lstsq``, the reference) and masked, Jacobi-preconditioned CG with the
layers of one input stacked (``cg``, warm-started from SparseGPT's OBS weights, as
``sparsegpt+lstsq`` runs it). Records CG's iterations, the gap of its calibration error
(w − w′)ᵀH(w − w′) to the Cholesky solution's, and both solve times. The run then carries CG's
weights forward, so the later blocks see what ``sparsegpt+lstsq`` (CG) gives them.

    python benchmarks/refit_cg_check.py --nsamples 32 --seqlen 512 --json benchmarks/results/refit-cg/cg-check-smollm2.json
    python benchmarks/refit_cg_check.py --model gemma3-270m --nsamples 32 --seqlen 512 --json benchmarks/results/refit-cg/cg-check-gemma3-270m.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from hyperprune.api import calibration_ids, load_for, run_method, write_json
from hyperprune.config import PruneConfig, RefitOptions, SparseGPTOptions
from hyperprune.methods.base import BlockContext, register_method, roles_by_input
from hyperprune.methods.sparsegpt import SparseGPT
from hyperprune.numerics.refit import quadratic_output_error, stacked_exact_refit
from hyperprune.report import environment, library_versions


@register_method("cg-check", options=SparseGPTOptions, summary="sparsegpt+lstsq with CG, each layer's refit checked against Cholesky")
class CGCheck(SparseGPT):
    def prune_block(self, ctx: BlockContext) -> dict[str, torch.Tensor]:
        refit, damp = self.config.refit, self.options.lstsq_damp
        masks = {}
        for roles in roles_by_input(ctx):
            results, hessian = {}, None
            for role in roles:
                hessian = ctx.statistics[role].hessian()
                results[role] = self._sparsegpt(ctx.linears[role], hessian, ctx.target, f"block {ctx.index} {role}")
            dense = [ctx.linears[r].weight.data.float().clone() for r in roles]
            keeps = [results[r].mask for r in roles]
            start = time.perf_counter()
            reference = stacked_exact_refit(dense, hessian, keeps, damp, "lstsq")
            cholesky_s = time.perf_counter() - start
            start = time.perf_counter()
            solved = stacked_exact_refit(dense, hessian, keeps, damp, "cg", refit.tol, refit.max_iter,
                                         [results[r].weight for r in roles], refit.preconditioner)
            cg_s = time.perf_counter() - start
            for role, w, ref, cg in zip(roles, dense, reference, solved):
                ref_error = float(quadratic_output_error(w, ref.weight, hessian).sum())
                cg_error = float(quadratic_output_error(w, cg.weight, hessian).sum())
                obs_error = float(quadratic_output_error(w, results[role].weight, hessian).sum())
                ctx.info[role] = {"cg_iterations": cg.iterations, "cg_residual": cg.residual,
                                  "gap_to_cholesky": cg_error / ref_error - 1 if ref_error > 0 else 0.0,
                                  "obs_over_cholesky": obs_error / ref_error if ref_error > 0 else 1.0,
                                  "group_cholesky_s": cholesky_s, "group_cg_s": cg_s, "group": "+".join(roles)}
                ctx.linears[role].weight.data.copy_(cg.weight)
                masks[role] = results[role].mask
        return masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=RefitOptions().tol)
    parser.add_argument("--max-iter", type=int, default=RefitOptions().max_iter)
    parser.add_argument("--preconditioner", default=RefitOptions().preconditioner, choices=["inverse", "jacobi"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = PruneConfig(model=args.model, method="cg-check", nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                         options={"cg-check": {"refit": "lstsq"}}, refit={"tol": args.tol, "max_iter": args.max_iter,
                                                                        "preconditioner": args.preconditioner})
    loaded, seqlen = load_for(config)
    calib = calibration_ids(loaded, config, seqlen)
    run = run_method(loaded, config, calib, progress=True)
    layers = [{"block": r.block, "role": r.component, "shape": r.shape, **r.info} for r in run.result.layers]
    gaps = [layer["gap_to_cholesky"] for layer in layers]
    iterations = [layer["cg_iterations"] for layer in layers]
    groups = {(layer["block"], layer["group"]): layer for layer in layers}
    cholesky_s = sum(g["group_cholesky_s"] for g in groups.values())
    cg_s = sum(g["group_cg_s"] for g in groups.values())
    summary = {
        "layers": len(layers),
        "max_gap_to_cholesky": max(gaps), "median_gap_to_cholesky": statistics.median(gaps),
        "layers_within_0.1%": sum(g <= 1e-3 for g in gaps),
        "iterations_median": statistics.median(iterations), "iterations_max": max(iterations),
        "iterations_min": min(iterations),
        "cholesky_s": cholesky_s, "cg_s": cg_s, "speedup": cholesky_s / cg_s if cg_s else None,
    }
    for key, value in summary.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        write_json(args.json, {"summary": summary, "config": {**vars(args)}, "layers": layers,
                               "versions": library_versions(), "environment": environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
