"""Shared by the benchmark scripts that compare named variants of a configuration in one run
(same model load, calibration windows and evaluation windows): parse the usual flags, run the
chosen variants through ``hyperprune.api.compare``, save after each one, print a table."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from hyperprune.api import compare, write_json
from hyperprune.cli.main import add_eval_flags, add_model_flags, add_pruning_flags, config_from_args
from hyperprune.cli.options import print_table
from hyperprune.config import DEFAULT_EVAL, PruneConfig


def variant_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    add_model_flags(parser)
    add_pruning_flags(parser)
    add_eval_flags(parser, DEFAULT_EVAL)
    parser.add_argument("--only", default=None, help="comma-separated variant numbers to run (default: all)")
    parser.add_argument("--json", default=None, help="results, rewritten after each variant")
    return parser


def chosen(args: argparse.Namespace, count: int) -> set[int]:
    return {int(i) for i in args.only.split(",")} if args.only else set(range(count))


def base_config(args: argparse.Namespace, method: str) -> PruneConfig:
    return config_from_args(args, method, refuse_unused=False)  # variants set every method's options


def run_variants(args: argparse.Namespace, runs: list, extra_columns: Callable[[dict[str, Any]], list[str]] | None = None,
                 extra_headers: list[str] | None = None) -> dict[str, Any]:
    """Run ``runs`` (method names or (label, config)) side by side; print PPL, block error, time."""
    base = base_config(args, "dense")
    sources = [s.strip() for s in args.eval.split(",") if s.strip()]
    save = (lambda partial: write_json(args.json, partial)) if args.json else None
    result = compare(runs, base, eval_source=sources, eval_windows=args.eval_windows, progress=not args.quiet,
                     on_method_done=save)
    headers = ["variant", *[f"PPL {s}" for s in sources], "block err", "prune s", *(extra_headers or [])]
    rows = []
    for label, entry in result["methods"].items():
        rows.append([label, *[f"{entry['ppl_by_eval'][s]:.2f}" for s in sources],
                     f"{entry.get('mean_block_rel_update_error', 0):.4f}", f"{entry.get('prune_seconds', 0):.1f}",
                     *(extra_columns(entry) if extra_columns else [])])
    print_table(headers, rows)
    return result
