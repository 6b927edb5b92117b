"""The Python API: ``prune``, ``evaluate_perplexity`` (re-exported), ``evaluate`` and
``compare``. The CLI is a thin layer over these functions."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hyperprune.config import DEFAULT_EVAL, MAX_DEFAULT_SEQLEN, PruneConfig, ZeroShotOptions
from hyperprune.data import bos_per_window, calibration_windows, evaluation_windows, load_text_source
from hyperprune.engine import LayerwiseResult, PeakMemory, run_layerwise
from hyperprune.engine.blocks import BlockStore, StreamedBlocks
from hyperprune.engine.checkpoint import RunCheckpoint, partial_dir_for
from hyperprune.engine.dense_stream import check_dense_target
from hyperprune.engine.memory import current_rss_bytes, return_freed_memory_to_os
from hyperprune.errors import HyperpruneError
from hyperprune.eval import evaluate_perplexity
from hyperprune.eval.zeroshot import informative_tasks, mean_accuracy, resolve_tasks, run_zeroshot
from hyperprune.export import check_output_dir, write_json_atomic
from hyperprune.export.assemble import assemble_output
from hyperprune.export.shards import io_error
from hyperprune.methods import get_method
from hyperprune.models import LoadedModel, context_length, decoder_blocks, load_model, prunable_weight_names
from hyperprune.models.architectures import torch_dtype
from hyperprune.models.loading import can_stream, load_skeleton, resolve_model
from hyperprune.models.shards import ShardReader
from hyperprune.apply_masks import apply_masks  # noqa: F401  (hyperprune apply-masks)
from hyperprune.compact import export_compact, load_pretrained  # noqa: F401  (hyperprune export)
from hyperprune.recover import distill  # noqa: F401  (hyperprune distill)
from hyperprune.report import environment, library_versions
from hyperprune.sparse import accelerate, kernel_backend
from hyperprune.utils import resolve_device

log = logging.getLogger(__name__)


def resolve_seqlen(requested: int | None, model_config) -> int:
    context = context_length(model_config)
    if requested is None:
        return min(context, MAX_DEFAULT_SEQLEN) if context else MAX_DEFAULT_SEQLEN
    if requested < 2:
        raise HyperpruneError(f"--seqlen {requested} is too small; use at least 2 tokens")
    if context and requested > context:
        raise HyperpruneError(f"--seqlen {requested} is larger than the model's context length {context}; use --seqlen {context} or less")
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
            raise HyperpruneError(f"component {role} has {width} input features, not divisible by m={m}; choose another --pattern")


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
    method = get_method(config.method)(config)
    _check_divisible(config, loaded)
    if config.target.pattern is None and not method.supports_unstructured:
        raise HyperpruneError(f"method '{config.method}' supports n:m patterns only; use --pattern instead of --sparsity")
    device = resolve_device(config.device)
    if method.needs_whole_model and isinstance(store, StreamedBlocks):
        raise HyperpruneError(f"method '{config.method}' needs a pass over the whole model first and cannot stream; pass --no-stream")
    start = time.perf_counter()
    with PeakMemory() as memory, _activation_dir(config, checkpoint) as activation_dir:
        # A resumed run gets the masks still to apply from the checkpointed method state.
        if method.needs_whole_model and not (checkpoint is not None and checkpoint.has_progress()):
            method.prepare(loaded.model, loaded.layout, calib_ids, device, progress)
        result = run_layerwise(
            loaded.model, loaded.layout, method, calib_ids, device, config.offload_activations, progress,
            store=store, checkpoint=checkpoint, on_nan=config.on_nan, activation_dir=activation_dir,
        )
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


def load_for(config: PruneConfig, trust_remote_code: bool = False) -> tuple[LoadedModel, int]:
    loaded = load_model(config.model, config.dtype, trust_remote_code)
    return loaded, resolve_seqlen(config.seqlen, loaded.model.config)


def calibration_ids(loaded: LoadedModel, config: PruneConfig, seqlen: int) -> torch.Tensor:
    source = load_text_source(config.calib)
    bos = bos_per_window(loaded.tokenizer, config.bos_per_window)
    return calibration_windows(loaded.tokenizer, source, config.nsamples, seqlen, config.seed, bos)


def eval_ids(loaded: LoadedModel, eval_source: str, seqlen: int, eval_windows: int | None, bos: bool = False) -> torch.Tensor:
    if eval_windows is not None and eval_windows <= 0:
        raise HyperpruneError(f"--eval-windows {eval_windows} must be a positive number of windows")
    return evaluation_windows(loaded.tokenizer, load_text_source(eval_source), seqlen, eval_windows, bos)


def base_report(config: PruneConfig, seqlen: int, device: torch.device, bos: bool) -> dict[str, Any]:
    return {
        "model": config.model,
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
        "config": json.loads(config.model_dump_json()),
        "versions": library_versions(),
        "environment": environment(),
    }


def run_report(run: PruneRun) -> dict[str, Any]:
    return {
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


def _prepare_partial(output: str | Path, overwrite: bool, resume: bool) -> Path:
    """The hidden directory beside ``output`` where a run checkpoints its blocks."""
    partial = partial_dir_for(output)
    if partial.exists():
        if not resume:
            if not overwrite:
                raise HyperpruneError(
                    f"an interrupted run of '{output}' exists ({partial}); pass --resume to continue it "
                    "or --overwrite to start over"
                )
            shutil.rmtree(partial)
    elif resume:
        log.warning("nothing to resume for '%s'; starting from the first block", output)
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error(exc, partial) from exc
    return partial


def _fingerprint(config: PruneConfig, seqlen: int, num_blocks: int) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (where the work happens may change)."""
    # on_nan may change too: after a NaN stop, `--resume --on-nan skip` goes on past it.
    settings = json.loads(config.model_dump_json(exclude={"device", "offload_to_disk", "on_nan"}))
    return {"config": settings, "seqlen": seqlen, "num_blocks": num_blocks, "hyperprune": library_versions()["hyperprune"]}


def _open_model(config: PruneConfig, output, trust_remote_code: bool) -> tuple[LoadedModel, BlockStore | None, ShardReader | None]:
    """Stream local safetensors checkpoints when writing an output; hold anything else in memory."""
    source = resolve_model(config.model)
    stream = config.stream if config.stream is not None else can_stream(source)
    if stream and output is None:
        raise HyperpruneError("streaming writes pruned blocks to disk as it goes; give --output, or pass --no-stream")
    if stream:
        if not can_stream(source):
            raise HyperpruneError(f"--stream needs a local safetensors checkpoint directory; '{config.model}' is not one")
        loaded = load_skeleton(config.model, config.dtype, trust_remote_code)
        reader = ShardReader(source.path)
        return_freed_memory_to_os()
        return loaded, StreamedBlocks(loaded.model, loaded.layout, reader, torch_dtype(config.dtype)), reader
    return load_model(config.model, config.dtype, trust_remote_code), None, None


def prune(
    config: PruneConfig | None = None,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    eval_source: str | None = None,
    eval_windows: int | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Prune a model layer by layer and return the report.

    With ``output``, write a Hugging Face checkpoint, ``masks.safetensors`` and
    ``report.json`` there. Each block is checkpointed as it finishes, so an interrupted run
    continues with ``resume=True``. Local safetensors checkpoints are streamed block by block
    (memory follows one block); other models are held in memory. With ``eval_source``,
    measure perplexity before and after pruning on the same windows (this needs the whole
    model in memory).
    """
    config = config or PruneConfig()
    wall_start = time.perf_counter()
    get_method(config.method)  # unknown method: fail before loading anything
    if output is not None:
        check_output_dir(output, overwrite)
    device = resolve_device(config.device)
    loaded, store, reader = _open_model(config, output, trust_remote_code)
    seqlen = resolve_seqlen(config.seqlen, loaded.model.config)
    calib = calibration_ids(loaded, config, seqlen)
    bos = bos_per_window(loaded.tokenizer, config.bos_per_window)
    evaluation = eval_ids(loaded, eval_source, seqlen, eval_windows, bos) if eval_source else None
    report = base_report(config, seqlen, device, bos)
    report["streamed"] = store is not None

    dense_ppl = None
    if evaluation is not None:
        dense_model = load_model(config.model, config.dtype, trust_remote_code).model if store else loaded.model
        dense_ppl = evaluate_perplexity(dense_model, evaluation, device, progress)
        dense_model.to("cpu")
        del dense_model

    checkpoint = None
    if output is not None:
        num_blocks = len(decoder_blocks(loaded.model, loaded.layout))
        partial = _prepare_partial(output, overwrite, resume)
        checkpoint = RunCheckpoint(partial, _fingerprint(config, seqlen, num_blocks), num_blocks)
    run = run_method(loaded, config, calib, progress, store=store, checkpoint=checkpoint)
    report.update(run_report(run))
    report["wall_seconds"] = time.perf_counter() - wall_start
    if output is not None:
        report["output"] = str(output)
        assemble_output(checkpoint, Path(output), overwrite, loaded.model, loaded.tokenizer, loaded.layout.layers, report, reader)

    if evaluation is not None:
        pruned_model = load_model(str(output), config.dtype).model if store else loaded.model
        pruned = evaluate_perplexity(pruned_model, evaluation, device, progress)
        pruned_model.to("cpu")
        report["eval"] = {
            "source": eval_source,
            "windows": pruned.windows,
            "tokens": pruned.tokens,
            "ppl_dense": dense_ppl.ppl,
            "ppl_pruned": pruned.ppl,
        }
        if output is not None:
            write_json_atomic(Path(output) / "report.json", json.dumps(report, indent=2))
    return report


def evaluate(
    model: str,
    eval_source: str | None = DEFAULT_EVAL,
    *,
    seqlen: int | None = None,
    eval_windows: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    trust_remote_code: bool = False,
    zeroshot: ZeroShotOptions | None = None,
    bos: str = "auto",
    sparse_kernels: str | None = None,
) -> dict[str, Any]:
    """Perplexity on ``eval_source`` and/or zero-shot accuracy on ``zeroshot.tasks`` of a model
    (a built-in name, a directory, e.g. a pruned output, or a hub id)."""
    if eval_source is None and zeroshot is None:
        raise HyperpruneError("nothing to evaluate; give --eval SOURCE for perplexity and/or --tasks LIST for zero-shot accuracy")
    dev = resolve_device(device)
    specs = resolve_tasks(zeroshot) if zeroshot is not None else None
    if sparse_kernels is not None:
        kernel_backend(sparse_kernels)  # no usable GPU: fail before loading anything
    loaded = load_model(model, dtype, trust_remote_code)
    out: dict[str, Any] = {"model": model, "device": str(dev)}
    if sparse_kernels is not None:
        out["sparse_kernels"] = accelerate(loaded.model.to(dev), sparse_kernels).as_dict()
    if eval_source is not None:
        seqlen = resolve_seqlen(seqlen, loaded.model.config)
        with_bos = bos_per_window(loaded.tokenizer, bos)
        windows = eval_ids(loaded, eval_source, seqlen, eval_windows, with_bos)
        result = evaluate_perplexity(loaded.model, windows, dev, progress)
        out.update({"eval": eval_source, "seqlen": seqlen, "tokens": result.tokens, "ppl": result.ppl,
                    "windows": result.windows, "nll": result.nll, "bos_per_window": with_bos})
    if specs is not None:
        out["zeroshot"] = json.loads(zeroshot.model_dump_json())
        out.update(run_zeroshot(loaded.model, loaded.tokenizer, specs, zeroshot, dev, progress))
    out["versions"] = library_versions()
    out["environment"] = environment()
    return out


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
    runs = [(m, config.model_copy(update={"method": m})) if isinstance(m, str) else m for m in methods]
    eval_sources = [eval_source] if isinstance(eval_source, str) else list(eval_source)
    if not eval_sources:
        raise HyperpruneError("--eval is empty; give one or more comma-separated sources")
    if not methods:
        raise HyperpruneError("--methods is empty; give a comma-separated list such as dense,wanda,sparsegpt")
    for _, run_config in runs:  # bad settings fail before any pruning
        if run_config.method != "dense":
            check_dense_target(get_method(run_config.method)(run_config))
    specs = resolve_tasks(zeroshot) if zeroshot is not None else None  # bad tasks fail before any pruning
    device = resolve_device(config.device)
    loaded, seqlen = load_for(config, trust_remote_code)
    calib = calibration_ids(loaded, config, seqlen)
    bos = bos_per_window(loaded.tokenizer, config.bos_per_window)
    evaluations = {source: eval_ids(loaded, source, seqlen, eval_windows, bos) for source in eval_sources}
    primary = evaluations[eval_sources[0]]
    originals = {name: w.detach().clone() for name, w in prunable_weights(loaded.model, loaded).items()}

    out: dict[str, Any] = {
        "model": config.model,
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
        "config": json.loads(config.model_dump_json()),
        "versions": library_versions(),
        "environment": environment(),
    }
    if zeroshot is not None:
        out["zeroshot"] = json.loads(zeroshot.model_dump_json())
    for name, run_config in runs:
        with torch.no_grad():
            for key, weight in prunable_weights(loaded.model, loaded).items():
                weight.copy_(originals[key])
        entry: dict[str, Any]
        if run_config.method == "dense":
            # Nothing is pruned: the process's resident memory with model and data loaded.
            entry = {"prune_seconds": 0.0, "peak_rss_bytes": current_rss_bytes(), "global_sparsity": 0.0, "nm_valid": False}
        else:
            run = run_method(loaded, run_config, calib, progress)
            report = run_report(run)
            entry = {
                "method": run_config.method,
                "prune_seconds": run.seconds,
                "peak_rss_bytes": run.peak_rss_bytes,
                "peak_cuda_bytes": run.peak_cuda_bytes,
                "global_sparsity": run.global_sparsity(),
                "nm_valid": run.nm_valid(),
                "mean_block_rel_output_error": report["mean_block_rel_output_error"],
                "mean_block_rel_update_error": report["mean_block_rel_update_error"],
                "mean_block_rel_dense_error": report["mean_block_rel_dense_error"],
                "reconstruct_seconds": report["reconstruct_seconds"],
                "blocks": [{"block": b["block"], "rel_output_error": b["rel_output_error"], "rel_update_error": b["rel_update_error"],
                            "rel_dense_error": b["rel_dense_error"]} for b in report["blocks"]],
            }
            if run_config != config.model_copy(update={"method": run_config.method}):
                entry["config"] = json.loads(run_config.model_dump_json())
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


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    write_json_atomic(path, json.dumps(payload, indent=2))
