"""Turn a finished partial run into the output directory.

Block shards are already in place (they were the checkpoints). What remains: the shard
with everything outside the blocks (embeddings, final norm, head), the shard index, the
config, tokenizer, one bit-packed mask file and the report. Checkpoint-only files are then
removed and the directory is renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from hyperprune.engine.run_checkpoint import MANIFEST, WHOLE_MODEL_DIR, RunCheckpoint
from hyperprune.export.mask_files import MASKS_FILE, REPORT_FILE, save_packed_masks
from hyperprune.export.output_dir import publish_dir
from hyperprune.export.shard_writer import io_error, write_index, write_json_file, write_tensors


def non_block_tensors(model, layers_prefix: str, reader=None) -> dict[str, torch.Tensor]:
    """Tensors outside the decoder blocks, from the shards (streamed) or the model (in memory)."""
    prefix = f"{layers_prefix}."
    if reader is not None:
        return reader.read([n for n in reader.names() if not n.startswith(prefix)])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(prefix)}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embedding; transformers re-ties on load
    return state


def assemble_output(
    checkpoint: RunCheckpoint,
    output: Path,
    overwrite: bool,
    model,
    tokenizer,
    layers_prefix: str,
    report: dict[str, Any],
    reader=None,
) -> None:
    partial = checkpoint.directory
    try:
        rest = non_block_tensors(model, layers_prefix, reader)
        rest_name = checkpoint.block_shard(checkpoint.num_blocks)
        write_tensors(partial / rest_name, rest)
        weight_map = dict.fromkeys(rest, rest_name)
        total = sum(t.numel() * t.element_size() for t in rest.values())
        del rest
        for index in range(checkpoint.num_blocks):
            name = checkpoint.block_shard(index)
            with safe_open(str(partial / name), framework="pt") as f:
                for key in f.keys():
                    weight_map[key] = name
                    tensor_slice = f.get_slice(key)
                    total += _nbytes(tensor_slice.get_shape(), tensor_slice.get_dtype())
        write_index(partial, weight_map, total)
        model.config.save_pretrained(partial)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        packed, shapes = checkpoint.read_packed_masks()
        save_packed_masks(packed, shapes, partial / MASKS_FILE)
        write_json_file(partial / REPORT_FILE, report)
    except OSError as exc:
        raise io_error(exc, partial, "every block is checkpointed; free space and rerun with --resume") from exc
    for leftover in ("masks", "state", "activations", WHOLE_MODEL_DIR):
        shutil.rmtree(partial / leftover, ignore_errors=True)
    (partial / MANIFEST).unlink(missing_ok=True)
    publish_dir(partial, output)


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _nbytes(shape: list[int], dtype: str) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * _DTYPE_BYTES.get(dtype, 4)
