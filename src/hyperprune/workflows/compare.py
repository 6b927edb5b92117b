"""``hyperprune compare``: several methods on the same model, calibration windows and evaluation
windows, one after the other in one process."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import torch

from hyperprune.config import DEFAULT_EVAL, PruneConfig, ZeroShotOptions
from hyperprune.data import bos_per_window
from hyperprune.engine.dense_stream import check_dense_target
from hyperprune.engine.memory import current_rss_bytes
from hyperprune.errors import HyperpruneError
from hyperprune.eval import evaluate_perplexity
from hyperprune.eval.zeroshot import informative_tasks, mean_accuracy, resolve_tasks, run_zeroshot
from hyperprune.report import environment, library_versions
from hyperprune.utils import resolve_device
from hyperprune.workflows.pruning_run import (
    build_method,
    calibration_ids,
    config_record,
    eval_ids,
    load_for,
    model_record,
    prunable_weights,
    run_method,
    run_report,
)

log = logging.getLogger(__name__)

# What a compare row keeps of a single run's report (run_report): the summary, and per block its
# errors, its seconds and where the method says they went (its info's ``*_s`` entries).
_BLOCK_FIELDS = ("block", "rel_output_error", "rel_update_error", "rel_dense_error", "seconds")


def compare(
    methods: list[str | tuple[str, PruneConfig]],
    config: PruneConfig | None = None,
    *,
    eval_source: str | list[str] = DEFAULT_EVAL,
    eval_windows: int | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    on_method_done: Any = None,
    zeroshot: ZeroShotOptions | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Run several methods on the same model, calibration windows and evaluation windows.

    The model loads once; its dense prunable weights are restored before each method.
    ``dense`` means the unpruned model. Peak RSS is this process's, during that method.
    Several evaluation sources may be given: ``ppl`` is on the first, ``ppl_by_eval`` on all.
    A method may be given as ``(label, config)`` to compare variants of one method
    (ablations); its config must share the model and calibration settings.
    ``on_method_done(result_so_far)`` is called after each method (for partial saves).
    With ``zeroshot``, every method is also scored on those tasks, on the same documents.
    """
    config = config or PruneConfig()
    runs = [(m, config.with_method(m)) if isinstance(m, str) else m for m in methods]
    eval_sources = [eval_source] if isinstance(eval_source, str) else list(eval_source)
    if not eval_sources:
        raise HyperpruneError("eval_source (--eval) is empty; give one or more evaluation sources")
    if not methods:
        raise HyperpruneError("methods (--methods) is empty; give a list such as dense,wanda,sparsegpt")
    for _, run_config in runs:  # bad settings fail before any pruning
        if run_config.method != "dense":
            check_dense_target(build_method(run_config), run_config.engine_settings())
    specs = resolve_tasks(zeroshot) if zeroshot is not None else None  # bad tasks fail before any pruning
    device = resolve_device(config.device)
    loaded, seqlen = load_for(config, trust_remote_code, progress)
    calib = calibration_ids(loaded, config, seqlen)
    bos = bos_per_window(loaded.tokenizer, config.bos_per_window)
    evaluations = {source: eval_ids(loaded, source, seqlen, eval_windows, bos) for source in eval_sources}
    originals = {name: w.detach().clone() for name, w in prunable_weights(loaded.model, loaded).items()}

    out = _header(config, seqlen, eval_sources, evaluations, bos, argv)
    if zeroshot is not None:
        out["zeroshot"] = json.loads(zeroshot.model_dump_json())
    for name, run_config in runs:
        _restore(loaded, originals)
        entry = _prune_entry(loaded, run_config, calib, progress)
        by_eval = {source: evaluate_perplexity(loaded.model, w, device, progress).ppl for source, w in evaluations.items()}
        if specs is not None:
            scores = run_zeroshot(loaded.model, loaded.tokenizer, specs, zeroshot, device, progress)
            entry.update(tasks=scores["tasks"], mean_acc=scores["mean_acc"], zeroshot_seconds=scores["seconds"],
                         zeroshot_requests=scores["requests"])
        loaded.model.to("cpu")
        out["methods"][name] = {"ppl": by_eval[eval_sources[0]], **entry, "ppl_by_eval": by_eval}
        if specs is not None:
            _mark_informative(out)
        log.info("%s: ppl %s", name, by_eval)
        if on_method_done is not None:
            on_method_done(out)
    return out


def _header(config: PruneConfig, seqlen: int, eval_sources: list[str], evaluations: dict[str, torch.Tensor],
            bos: bool, argv: list[str] | None) -> dict[str, Any]:
    """What the comparison shares: model, windows, config, versions; methods are added as they run."""
    primary = evaluations[eval_sources[0]]
    return {
        "model": model_record(config.model),
        "pattern": str(config.target),
        "seqlen": seqlen,
        "calib": config.calib,
        "eval": eval_sources[0],
        "evals": {source: {"windows": int(w.shape[0]), "tokens": int(w.shape[0] * (seqlen - 1))} for source, w in evaluations.items()},
        "nsamples": config.nsamples,
        "seed": config.seed,
        "eval_windows": int(primary.shape[0]),
        "eval_tokens": int(primary.shape[0] * (seqlen - 1)),
        "bos_per_window": bos,
        "methods": {},
        "config": config_record(config, None),
        "argv": list(sys.argv) if argv is None else list(argv),
        "versions": library_versions(),
        "environment": environment(),
    }


def _restore(loaded, originals: dict[str, torch.Tensor]) -> None:
    """The dense prunable weights back, before the next method."""
    with torch.no_grad():
        for key, weight in prunable_weights(loaded.model, loaded).items():
            weight.copy_(originals[key])


def _prune_entry(loaded, run_config: PruneConfig, calib: torch.Tensor, progress: bool) -> dict[str, Any]:
    """One method's row: the single-run report, blocks by their errors, layers by their errors and
    the numbers the method noted (HyperPrune's learned and prior refit errors: the per-layer win share)."""
    if run_config.method == "dense":
        # Nothing is pruned: the process's resident memory with model and data loaded.
        return {"prune_seconds": 0.0, "peak_rss_bytes": current_rss_bytes(), "global_sparsity": 0.0, "nm_valid": False}
    report = run_report(run_method(loaded, run_config, calib, progress))
    entry = {key: value for key, value in report.items() if key not in ("layers", "blocks")}
    entry["blocks"] = [_block_entry(b) for b in report["blocks"]]
    entry["layers"] = [_layer_entry(layer) for layer in report["layers"]]
    entry["config"] = config_record(run_config, build_method(run_config))
    return entry


def _block_entry(block: dict[str, Any]) -> dict[str, Any]:
    entry = {key: block[key] for key in _BLOCK_FIELDS}
    timing = {key: value for key, value in block.get("info", {}).items() if key.endswith("_s")}
    return entry | ({"timing": timing} if timing else {})


def _layer_entry(layer: dict[str, Any]) -> dict[str, Any]:
    numbers = {key: value for key, value in layer.get("info", {}).items() if isinstance(value, (int, float))}
    return {"name": layer["name"], "rel_error": layer["rel_error"]} | ({"info": numbers} if numbers else {})


def _mark_informative(out: dict[str, Any]) -> None:
    """With a dense row: the tasks where dense is more than 2 points above chance, and each
    method's mean accuracy over those only."""
    dense = out["methods"].get("dense")
    if dense is None or "tasks" not in dense:
        return
    names = informative_tasks(dense["tasks"])
    out["informative_tasks"] = names
    for entry in out["methods"].values():
        entry["mean_acc_informative"] = mean_accuracy(entry["tasks"], names) if names else None
