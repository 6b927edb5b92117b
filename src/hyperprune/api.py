"""The Python API, a thin face over ``hyperprune.workflows``: ``prune``, ``evaluate``,
``compare``, ``distill``, ``export_compact``, ``load_pretrained`` and ``apply_masks``. The CLI
calls the same functions."""

from __future__ import annotations

from hyperprune.eval import evaluate_perplexity
from hyperprune.workflows.apply_masks import apply_masks
from hyperprune.workflows.compact_export import export_compact, load_pretrained
from hyperprune.workflows.compare import compare
from hyperprune.workflows.distill import distill
from hyperprune.workflows.evaluate import evaluate
from hyperprune.workflows.prune import prune
from hyperprune.workflows.pruning_run import (
    PruneRun,
    calibration_ids,
    eval_ids,
    load_for,
    prunable_weights,
    resolve_seqlen,
    run_method,
    run_report,
    write_json,
)

__all__ = [
    "PruneRun",
    "apply_masks",
    "calibration_ids",
    "compare",
    "distill",
    "eval_ids",
    "evaluate",
    "evaluate_perplexity",
    "export_compact",
    "load_for",
    "load_pretrained",
    "prunable_weights",
    "prune",
    "resolve_seqlen",
    "run_method",
    "run_report",
    "write_json",
]
