"""``hyperprune apply-masks``: put saved masks on another copy of the model's weights (the
original bf16 weights, or a fine-tuned copy), and write it as a pruned output directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from hyperprune.errors import HyperpruneError
from hyperprune.export import check_output_dir
from hyperprune.export.mask_files import MASKS_FILE, REPORT_FILE, load_masks
from hyperprune.export.output_dir import atomic_output_dir
from hyperprune.export.shard_writer import write_json_file
from hyperprune.masks import count_nm_violations, sparsity_of
from hyperprune.methods.ria import permute_channels
from hyperprune.models import block_linears, decoder_blocks, load_model, prunable_weight_names
from hyperprune.report import environment, library_versions


def _check_masks_fit(masks: dict[str, torch.Tensor], params: dict[str, torch.Tensor], expected: list[str], spec: str) -> None:
    if not masks:
        raise HyperpruneError("the mask file lists no matrices; give the masks.safetensors of a prune run")
    unknown = [name for name in masks if name not in params]
    if unknown:
        raise HyperpruneError(f"model '{spec}' has no weight {unknown[0]} named in the masks; were they made for another architecture?")
    for name, keep in masks.items():
        if tuple(params[name].shape) != tuple(keep.shape):
            raise HyperpruneError(f"the mask of {name} is {tuple(keep.shape)} but model '{spec}' has {tuple(params[name].shape)}; "
                                  "the masks were made for another model size")
    missing = [name for name in expected if name not in masks]
    if missing:
        raise HyperpruneError(f"the masks cover {len(masks)} of the model's {len(expected)} prunable matrices "
                              f"({missing[0]} has none); were they made for a model with fewer blocks?")


def apply_channel_permutations(model, layout, pruned_with: dict[str, Any]) -> int:
    """Fold the channel permutations the source run made (``--ria-permute``, recorded in its
    report) into this copy of the weights, so that its masks line up. Returns how many."""
    blocks = decoder_blocks(model, layout)
    count = 0
    for record in pruned_with.get("blocks", []):
        for consumer, note in record.get("info", {}).get("channel_permutation", {}).items():
            if not note.get("permuted"):
                continue
            index = record["block"]
            if index >= len(blocks):
                raise HyperpruneError(f"the source report permutes block {index}, but this model has {len(blocks)} blocks")
            linears = block_linears(blocks[index], layout)
            missing = [role for role in [consumer, *note["producers"]] if role not in linears]
            if missing:
                raise HyperpruneError(f"block {index} of this model has no '{missing[0]}' projection, which the source run permuted")
            permute_channels(linears, consumer, tuple(note["producers"]), torch.tensor(note["order"], dtype=torch.long))
            count += 1
    return count


def apply_masks(
    model: str,
    masks_file: str | Path,
    output: str | Path,
    dtype: str = "float32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Zero ``model``'s weights where the masks prune; write the result to ``output``. Returns its report."""
    masks_file = Path(masks_file)
    if not masks_file.is_file():
        raise HyperpruneError(f"mask file '{masks_file}' does not exist; give DIR/{MASKS_FILE} of a prune run")
    check_output_dir(output, overwrite)
    masks = load_masks(masks_file)
    loaded = load_model(model, dtype, trust_remote_code)
    params = dict(loaded.model.named_parameters())
    _check_masks_fit(masks, params, prunable_weight_names(loaded.model, loaded.layout), model)
    source_report = masks_file.parent / REPORT_FILE
    pruned_with = json.loads(source_report.read_text()) if source_report.is_file() else {}
    permuted = apply_channel_permutations(loaded.model, loaded.layout, pruned_with)
    with torch.no_grad():
        for name, keep in masks.items():
            params[name].mul_(keep.to(params[name].dtype))
    pattern = pruned_with.get("pattern")
    report = {
        "model": model,
        "method": "apply-masks",
        "masks": str(masks_file),
        "masks_from": {key: pruned_with.get(key) for key in ("model", "method", "pattern", "seed", "calib")} if pruned_with else None,
        "pattern": pattern,
        "dtype": dtype,
        "channel_permutations": permuted,
        "global_sparsity": sum(int((params[n] == 0).sum()) for n in masks) / sum(params[n].numel() for n in masks),
        "layers": [{"name": n, "sparsity": sparsity_of(params[n])} for n in masks],
        "versions": library_versions(),
        "environment": environment(),
    }
    if pattern and ":" in pattern:
        n, m = map(int, pattern.split(":"))
        report["nm_valid"] = all(count_nm_violations(params[name], n, m) == 0 for name in masks)
    with atomic_output_dir(output, overwrite) as staging:
        loaded.model.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        shutil.copyfile(masks_file, staging / MASKS_FILE)
        write_json_file(staging / REPORT_FILE, report)
    return report
