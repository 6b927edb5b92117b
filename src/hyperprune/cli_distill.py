"""The ``hyperprune distill`` subcommand: its flags and what it runs (wired into ``cli.py``)."""

from __future__ import annotations

import argparse

from hyperprune.config import DistillOptions
from hyperprune.errors import HyperpruneError


def add_distill_parser(sub) -> None:
    p = sub.add_parser("distill", help="masked distillation of a pruned output directory into a new one")
    d = DistillOptions.model_fields
    p.add_argument("directory", help="output directory of 'hyperprune prune' (the student)")
    p.add_argument("--output", required=True, help="directory to write the distilled model, masks and report to")
    p.add_argument("--teacher", default=None, help="the dense model (default: the model the pruning run started from)")
    for flag, name, kind, text in [
        ("--steps", "steps", int, "optimizer steps"), ("--lr", "lr", float, "Adam learning rate of the kept weights"),
        ("--batch-size", "batch_size", int, "windows per step"),
        ("--seqlen", "seqlen", int, "tokens per window (default: the pruning run's)"),
        ("--nsamples", "nsamples", int, "windows drawn, held-out ones included"),
        ("--holdout", "holdout", int, "windows held out for early stopping"),
        ("--eval-every", "eval_every", int, "steps between held-out checks"),
        ("--patience", "patience", int, "held-out checks without improvement before stopping"),
        ("--hidden-weight", "hidden_weight", float, "weight of the final hidden-state MSE added to the KL"),
        ("--calib", "calib", str, "text source (default: the pruning run's calibration text)"),
        ("--seed", "seed", int, "window sampling seed"),
    ]:
        default = d[name].default
        p.add_argument(flag, dest=f"distill_{name}", type=kind, default=default, metavar=flag[2:].upper().replace("-", "_"),
                       help=text + ("" if default is None else f" (default: {default})"))
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the distill report to FILE")


def cmd_distill(args: argparse.Namespace) -> int:
    from hyperprune.api import distill, write_json

    fields = {name[len("distill_"):]: value for name, value in vars(args).items() if name.startswith("distill_")}
    try:
        options = DistillOptions(**fields, gradient_checkpointing=not args.no_gradient_checkpointing)
    except ValueError as exc:
        from hyperprune.cli import _first_error

        raise HyperpruneError(_first_error(exc)) from None
    result = distill(args.directory, args.output, options, teacher=args.teacher, device=args.device,
                     overwrite=args.overwrite, progress=not args.quiet, trust_remote_code=args.trust_remote_code)
    print(f"distilled {result['steps_run']} steps ({result['seconds_per_step']:.2f} s/step), best at step "
          f"{result['best_step']}: held-out loss {result['holdout_before']:.4f} -> {result['holdout_best']:.4f}; "
          f"wrote {args.output}")
    if args.json:
        write_json(args.json, result)
    return 0
