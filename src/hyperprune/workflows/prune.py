"""``hyperprune prune``: prune one model with one method, optionally measure perplexity before
and after, and write the output directory."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hyperprune.config import PruneConfig
from hyperprune.data import bos_per_window, load_text_source
from hyperprune.engine.assemble import assemble_output
from hyperprune.engine.blocks import BlockStore, StreamedBlocks
from hyperprune.engine.memory import return_freed_memory_to_os
from hyperprune.engine.run_checkpoint import RunCheckpoint, partial_dir_for
from hyperprune.errors import HyperpruneError
from hyperprune.eval import evaluate_perplexity
from hyperprune.export import check_output_dir, write_json_atomic
from hyperprune.export.shard_writer import io_error
from hyperprune.models import LoadedModel, decoder_blocks, load_model
from hyperprune.models.architectures import torch_dtype
from hyperprune.models.loading import can_stream, load_skeleton, resolve_model
from hyperprune.models.shard_reader import ShardReader
from hyperprune.report import library_versions
from hyperprune.utils import resolve_device
from hyperprune.workflows.pruning_run import (
    base_report,
    build_method,
    calibration_ids,
    eval_ids,
    resolve_seqlen,
    run_method,
    run_report,
)

log = logging.getLogger(__name__)


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


def _open_model(config: PruneConfig, output, trust_remote_code: bool, progress: bool = True,
                whole_model: bool = False) -> tuple[LoadedModel, BlockStore | None, ShardReader | None]:
    """Stream local safetensors checkpoints when writing an output; hold anything else in memory
    (a run without an output has nowhere to stream to, and a method that needs a pass over the
    whole model, ``whole_model``, cannot stream: unless asked to, neither does)."""
    source = resolve_model(config.model)
    stream = config.stream if config.stream is not None else (can_stream(source) and output is not None
                                                               and not whole_model)
    if stream and output is None:
        raise HyperpruneError("streaming writes pruned blocks to disk as it goes; give output (--output), or stream=False (--no-stream)")
    if stream:
        if not can_stream(source):
            raise HyperpruneError(f"stream=True (--stream) needs a local safetensors checkpoint directory; '{config.model}' is not one")
        loaded = load_skeleton(config.model, config.dtype, trust_remote_code)
        reader = ShardReader(source.path)
        return_freed_memory_to_os()
        return loaded, StreamedBlocks(loaded.model, loaded.layout, reader, torch_dtype(config.dtype)), reader
    return load_model(config.model, config.dtype, trust_remote_code, progress), None, None


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
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Prune a model layer by layer and return the report.

    With ``output``, write a Hugging Face checkpoint, ``masks.safetensors`` and
    ``report.json`` there. Each block is checkpointed as it finishes, so an interrupted run
    continues with ``resume=True``. Local safetensors checkpoints are streamed block by block
    (memory follows one block); other models are held in memory. With ``eval_source``,
    measure perplexity before and after pruning on the same windows (this needs the whole
    model in memory). ``argv``: the command line to record in the report (default: ``sys.argv``).
    """
    config = config or PruneConfig()
    wall_start = time.perf_counter()
    method = build_method(config)  # unknown method, bad options: fail before loading anything
    if output is not None:
        check_output_dir(output, overwrite)
    else:
        log.warning("no output directory: the pruned model is measured, then discarded (give --output DIR to keep it)")
    device = resolve_device(config.device)
    load_text_source(config.calib)  # a bad calibration source fails before the model loads
    loaded, store, reader = _open_model(config, output, trust_remote_code, progress, method.needs_whole_model)
    seqlen = resolve_seqlen(config.seqlen, loaded.model.config)
    calib = calibration_ids(loaded, config, seqlen)
    bos = bos_per_window(loaded.tokenizer, config.bos_per_window)
    evaluation = eval_ids(loaded, eval_source, seqlen, eval_windows, bos) if eval_source else None
    report = base_report(config, seqlen, device, bos, method, argv)
    report["streamed"] = store is not None

    dense_ppl = None
    if evaluation is not None:
        dense_model = load_model(config.model, config.dtype, trust_remote_code, progress).model if store else loaded.model
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
    written = _written_dtype(store)
    if written is not None and written != config.dtype:
        # Streamed blocks are written back in the checkpoint's own dtype; say so, in config.json too.
        report["dtype"], report["compute_dtype"] = written, config.dtype
        loaded.model.config.dtype = torch_dtype(written)
    report["wall_seconds"] = time.perf_counter() - wall_start
    if output is not None:
        report["output"] = str(output)
        assemble_output(checkpoint, Path(output), overwrite, loaded.model, loaded.tokenizer, loaded.layout.layers, report, reader)

    if evaluation is not None:
        pruned_model = load_model(str(output), config.dtype, progress=progress).model if store else loaded.model
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


def _written_dtype(store: BlockStore | None) -> str | None:
    """The dtype the output's prunable weights are written in, when streaming (the source's)."""
    if not isinstance(store, StreamedBlocks) or not store.source_dtypes:
        return None
    counts = Counter(dtype for block in store.source_dtypes.values() for dtype in block.values())
    return str(counts.most_common(1)[0][0]).removeprefix("torch.")
