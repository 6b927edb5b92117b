"""The ``hyperprune distill`` subcommand: its flags and what it runs (wired into ``cli.py``)."""

from __future__ import annotations

import argparse

from hyperprune.cli.options import add_option_flags, first_error, options_from_args
from hyperprune.config import DistillOptions
from hyperprune.errors import HyperpruneError


def add_distill_parser(sub) -> None:
    p = sub.add_parser("distill", help="masked distillation of a pruned output directory into a new one")
    p.add_argument("directory", help="output directory of 'hyperprune prune' (the student)")
    p.add_argument("--output", required=True, help="directory to write the distilled model, masks and report to")
    p.add_argument("--teacher", default=None, help="the dense model (default: the model the pruning run started from)")
    add_option_flags(p, DistillOptions, "", "distill_", skip=("gradient_checkpointing",))
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the distill report to FILE")


def cmd_distill(args: argparse.Namespace) -> int:
    from hyperprune.api import distill, write_json

    try:
        options = options_from_args(args, DistillOptions, "distill_", gradient_checkpointing=not args.no_gradient_checkpointing)
    except ValueError as exc:
        raise HyperpruneError(first_error(exc)) from None
    result = distill(args.directory, args.output, options, teacher=args.teacher, device=args.device,
                     overwrite=args.overwrite, progress=not args.quiet, trust_remote_code=args.trust_remote_code)
    print(f"distilled {result['steps_run']} steps ({result['seconds_per_step']:.2f} s/step), best at step "
          f"{result['best_step']}: held-out loss {result['holdout_before']:.4f} -> {result['holdout_best']:.4f}; "
          f"wrote {args.output}")
    if args.json:
        write_json(args.json, result)
    return 0
