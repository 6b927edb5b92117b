"""MaskLLM's perplexity against its number of training steps, from one training run.

    OMP_NUM_THREADS=2 python benchmarks/maskllm_curve.py --maskllm-steps 200 --at 0,25,50,100,200 \
        --pattern 2:4 --nsamples 32 --seqlen 512 --eval sotu,brown-test,shakespeare --eval-windows 40 \
        --seed 0 --json benchmarks/results/maskllm-curve/maskllm-curve-seed0.json

At each step in ``--at`` the masks MaskLLM would return if it stopped there (each group's most
likely pattern) are applied to the frozen weights and the perplexity is measured; step 0 is the
prior's mask. The temperature anneals over the whole ``--maskllm-steps`` run, so the point at
step 50 of a 200-step run is not a 50-step run: it is where a longer run stands after 50 steps,
the curve a user needs to decide whether more steps are worth their cost. The final point is
exactly what ``hyperprune prune --method maskllm`` returns with the same flags (the masks are
applied to the unchanged weights either way).
"""

from __future__ import annotations

import sys
import time

import torch
from variants import base_config, variant_parser

from hyperprune.api import calibration_ids, eval_ids, load_for, write_json
from hyperprune.cli.options import print_table
from hyperprune.data import bos_per_window
from hyperprune.engine.whole_model_pass import whole_model_pass
from hyperprune.numerics.end_to_end import substituted
from hyperprune.eval.perplexity import evaluate_perplexity
from hyperprune.methods.maskllm import MaskLLM
from hyperprune.report import environment, library_versions
from hyperprune.utils import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = variant_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--at", default="0,25,50,100,200", help="comma-separated step counts to measure at")
    args = parser.parse_args(argv)
    config = base_config(args, "maskllm")
    at = sorted({int(s) for s in args.at.split(",")})
    if at[0] < 0 or at[-1] > MaskLLM(config).options.steps:
        parser.error(f"--at must lie between 0 and --maskllm-steps ({MaskLLM(config).options.steps})")
    device = resolve_device(config.device)
    loaded, seqlen = load_for(config)
    bos = bos_per_window(loaded.tokenizer, config.bos_per_window)
    calib = calibration_ids(loaded, config, seqlen)
    sources = [s.strip() for s in args.eval.split(",") if s.strip()]
    windows = {source: eval_ids(loaded, source, seqlen, args.eval_windows, bos) for source in sources}
    params = dict(loaded.model.named_parameters())
    points: list[dict] = []
    prior: dict[str, torch.Tensor] = {}
    start, evaluating = time.perf_counter(), [0.0]  # the clock excludes the evaluations themselves
    out = {"config": config.model_dump(mode="json"), "seqlen": seqlen, "bos_per_window": bos,
           "eval_windows": args.eval_windows, "points": points}

    def measure(step: int, read_off) -> None:
        if step == 0:
            prior.update(read_off())  # before any step the read-off is the prior's mask
        if step not in at:
            return
        began = time.perf_counter()
        masks = read_off()
        changed = sum(int((keep != prior[n]).view(-1, config.target.pattern.m).any(dim=1).sum()) for n, keep in masks.items())
        groups = sum(keep.numel() for keep in masks.values()) // config.target.pattern.m
        ppl = {}
        with torch.no_grad(), substituted(loaded.model, {n: params[n].detach() * keep.to(params[n].dtype)
                                                         for n, keep in masks.items()}):
            for source, ids in windows.items():
                ppl[source] = evaluate_perplexity(loaded.model, ids, device, progress=False).ppl
        # seconds since the method started (its one-shot prior included), evaluations excluded
        points.append({"step": step, "tokens": step * MaskLLM(config).options.batch_size * seqlen,
                       "method_seconds": began - start - evaluating[0], "groups_changed_from_prior": changed / groups,
                       "ppl_by_eval": ppl})
        evaluating[0] += time.perf_counter() - began
        print(f"step {step}: " + " / ".join(f"{s} {p:.2f}" for s, p in ppl.items()), file=sys.stderr, flush=True)
        if args.json:
            write_json(args.json, out)

    method = MaskLLM(config)
    method.on_step = measure
    method.prepare(whole_model_pass(config, loaded.model, loaded.layout, calib, device, progress=not args.quiet))
    out["whole_model_pass"] = method.whole_model_info
    out["versions"] = library_versions()
    out["environment"] = environment()
    if args.json:
        write_json(args.json, out)
    print_table(["step", "tokens", "groups changed", *[f"PPL {s}" for s in sources]],
                 [[p["step"], p["tokens"], f"{p['groups_changed_from_prior']:.3f}", *[f"{p['ppl_by_eval'][s]:.2f}" for s in sources]]
                  for p in points])
    return 0


if __name__ == "__main__":
    sys.exit(main())
