"""What every workflow shares: loading a model for a run, its windows, running one method with
its cost measured, and the report of a run."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hyperprune.config import MAX_DEFAULT_SEQLEN, PruneConfig
from hyperprune.data import bos_per_window, calibration_windows, evaluation_windows, load_text_source
from hyperprune.engine import LayerwiseResult, PeakMemory, run_layerwise
from hyperprune.engine.blocks import BlockStore, StreamedBlocks
from hyperprune.engine.run_checkpoint import WHOLE_MODEL_DIR, RunCheckpoint
from hyperprune.engine.whole_model_pass import whole_model_pass
from hyperprune.errors import HyperpruneError
from hyperprune.export import write_json_atomic
from hyperprune.methods import PruningMethod, get_method
from hyperprune.models import LoadedModel, context_length, load_model, prunable_weight_names
from hyperprune.report import environment, library_versions
from hyperprune.utils import resolve_device


def resolve_seqlen(requested: int | None, model_config) -> int:
    context = context_length(model_config)
    if requested is None:
        return min(context, MAX_DEFAULT_SEQLEN) if context else MAX_DEFAULT_SEQLEN
    if requested < 2:
        raise HyperpruneError(f"seqlen (--seqlen) {requested} is too small; use at least 2 tokens")
    if context and requested > context:
        raise HyperpruneError(f"seqlen (--seqlen) {requested} is larger than the model's context length {context}; use {context} or less")
    return requested


@dataclass
class PruneRun:
    """One method applied to a model: the engine's result plus cost."""

    method: str
    result: LayerwiseResult
    seconds: float
    peak_rss_bytes: int
    peak_cuda_bytes: int | None

    def global_sparsity(self) -> float:
        zeros = sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.result.layers)
        total = sum(r.shape[0] * r.shape[1] for r in self.result.layers)
        return zeros / total if total else 0.0

    def nm_valid(self) -> bool:
        """Every prunable matrix is exactly n:m (false for unstructured runs and skipped blocks)."""
        return not self.result.skipped and all(r.nm_violations == 0 for r in self.result.layers)


def prunable_weights(model, loaded: LoadedModel) -> dict[str, torch.Tensor]:
    state = dict(model.named_parameters())
    return {name: state[name] for name in prunable_weight_names(model, loaded.layout)}


def _check_divisible(config: PruneConfig, loaded: LoadedModel) -> None:
    if config.target.pattern is None:
        return
    m = config.target.pattern.m
    for role, width in _component_inputs(loaded.model.config).items():
        if width % m:
            raise HyperpruneError(f"component {role} has {width} input features, not divisible by m={m}; choose another pattern (--pattern)")


def _component_inputs(model_config) -> dict[str, int]:
    hidden, inter = model_config.hidden_size, model_config.intermediate_size
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    return {"q": hidden, "k": hidden, "v": hidden, "o": heads * head_dim, "gate": hidden, "up": hidden, "down": inter}


def run_method(
    loaded: LoadedModel,
    config: PruneConfig,
    calib_ids: torch.Tensor,
    progress: bool = True,
    store: BlockStore | None = None,
    checkpoint: RunCheckpoint | None = None,
) -> PruneRun:
    """Prune with ``config.method``, measuring time and memory. In memory unless a
    streaming ``store`` is given; checkpointed block by block when ``checkpoint`` is."""
    method = build_method(config)
    _check_divisible(config, loaded)
    if config.target.pattern is None and not method.supports_unstructured:
        raise HyperpruneError(f"method '{config.method}' supports n:m patterns only; give an n:m pattern (--pattern), not an unstructured sparsity")
    device = resolve_device(config.device)
    if method.needs_whole_model and isinstance(store, StreamedBlocks):
        raise HyperpruneError(f"method '{config.method}' needs a pass over the whole model first and cannot stream; set stream=False (--no-stream)")
    start = time.perf_counter()
    with PeakMemory() as memory, _activation_dir(config, checkpoint) as activation_dir:
        # A resumed run gets the masks still to apply from the checkpointed method state.
        if method.needs_whole_model and not (checkpoint is not None and checkpoint.has_progress()):
            work = None if checkpoint is None else checkpoint.directory / WHOLE_MODEL_DIR
            method.prepare(whole_model_pass(config, loaded.model, loaded.layout, calib_ids, device, progress, work,
                                            None if checkpoint is None else checkpoint.fingerprint))
        result = run_layerwise(loaded.model, loaded.layout, method, calib_ids, device, config.engine_settings(), progress,
                               store=store, checkpoint=checkpoint, activation_dir=activation_dir)
    seconds = time.perf_counter() - start
    return PruneRun(config.method, result, seconds, memory.peak_rss_bytes, memory.peak_cuda_bytes)


@contextmanager
def _activation_dir(config: PruneConfig, checkpoint: RunCheckpoint | None) -> Iterator[Path | None]:
    """Where memory-mapped activations live: the run's partial directory, or a temporary one."""
    if not config.offload_to_disk:
        yield None
    elif checkpoint is not None:
        directory = checkpoint.directory / "activations"
        yield directory
        shutil.rmtree(directory, ignore_errors=True)
    else:
        with tempfile.TemporaryDirectory(prefix="hyperprune-activations-") as directory:
            yield Path(directory)


def load_for(config: PruneConfig, trust_remote_code: bool = False, progress: bool = True) -> tuple[LoadedModel, int]:
    loaded = load_model(config.model, config.dtype, trust_remote_code, progress)
    return loaded, resolve_seqlen(config.seqlen, loaded.model.config)


def calibration_ids(loaded: LoadedModel, config: PruneConfig, seqlen: int) -> torch.Tensor:
    source = load_text_source(config.calib)
    bos = bos_per_window(loaded.tokenizer, config.bos_per_window)
    return calibration_windows(loaded.tokenizer, source, config.nsamples, seqlen, config.seed, bos)


def eval_ids(loaded: LoadedModel, eval_source: str, seqlen: int, eval_windows: int | None, bos: bool = False) -> torch.Tensor:
    if eval_windows is not None and eval_windows <= 0:
        raise HyperpruneError(f"eval_windows (--eval-windows) {eval_windows} must be a positive number of windows")
    return evaluation_windows(loaded.tokenizer, load_text_source(eval_source), seqlen, eval_windows, bos)


def build_method(config: PruneConfig) -> PruningMethod:
    """The method ``config`` names, with its options validated; options given for a method that
    does not exist, or that takes none, are refused."""
    from hyperprune.methods import METHODS

    for key in config.options:
        if key in METHODS and METHODS[key].cls.options_class is None:
            raise HyperpruneError(f"method '{key}' takes no options; remove options['{key}']")
    unknown = sorted(set(config.options) - {entry.cls.name for entry in METHODS.values() if entry.cls.options_class})
    if unknown:
        raise HyperpruneError(f"options given for {', '.join(repr(k) for k in unknown)}, which is not a method with "
                              "options; check the spelling")
    return get_method(config.method)(config)


def config_record(config: PruneConfig, method: PruningMethod | None) -> dict[str, Any]:
    """The config as reports store it: the run settings, and the options of the method that ran
    (in full, defaults included), not every method's."""
    record = json.loads(config.model_dump_json(exclude={"options"}))
    if method is None or method.options is None:
        record["options"] = {}
    else:
        record["options"] = {method.options_key: json.loads(method.options.model_dump_json())}
    if method is None or not method.uses_hessian:
        record.pop("hessian")
    if method is None or not method.uses_refit:
        record.pop("refit")
    return record


def model_record(spec: str) -> str:
    """The model as reports store it: a local path made absolute, a name or hub id as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def base_report(config: PruneConfig, seqlen: int, device: torch.device, bos: bool,
                method: PruningMethod | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "model": model_record(config.model),
        "method": config.method,
        "pattern": str(config.target),
        "target_sparsity": config.target.fraction,
        "seed": config.seed,
        "nsamples": config.nsamples,
        "seqlen": seqlen,
        "calib": config.calib,
        "device": str(device),
        "dtype": config.dtype,
        "bos_per_window": bos,
        "config": config_record(config, method),
        "argv": list(sys.argv) if argv is None else list(argv),  # the command line that ran
        "versions": library_versions(),
        "environment": environment(),
    }


def run_report(run: PruneRun) -> dict[str, Any]:
    return {
        "method": run.method,
        "global_sparsity": run.global_sparsity(),
        "nm_valid": run.nm_valid(),
        "prune_seconds": run.seconds,
        "peak_rss_bytes": run.peak_rss_bytes,
        "peak_cuda_bytes": run.peak_cuda_bytes,
        "mean_block_rel_output_error": sum(b.rel_output_error for b in run.result.blocks) / max(1, len(run.result.blocks)),
        "mean_block_rel_update_error": sum(b.rel_update_error for b in run.result.blocks) / max(1, len(run.result.blocks)),
        # Error carried to each depth, against the dense model's own hidden state (--target dense only).
        "mean_block_rel_dense_error": _mean_or_none([b.rel_dense_error for b in run.result.blocks]),
        "reconstruct_seconds": sum(b.info.get("reconstruct", {}).get("seconds", 0.0) for b in run.result.blocks),
        "skipped_blocks": run.result.skipped,
        "resumed_from_block": run.result.resumed_from,
        "blocks": [asdict(b) for b in run.result.blocks],
        "layers": [asdict(r) for r in run.result.layers],
    }


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    write_json_atomic(path, json.dumps(payload, indent=2))
