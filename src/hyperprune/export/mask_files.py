"""Pruned checkpoints: a Hugging Face model directory plus bit-packed masks and a report."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from hyperprune.errors import HyperpruneError
from hyperprune.export.shard_writer import write_tensors
from hyperprune.masks import pack_mask, unpack_mask

MASKS_FILE = "masks.safetensors"
REPORT_FILE = "report.json"
MASKS_FORMAT = "hyperprune-bitpacked-v1"


def save_masks(masks: dict[str, torch.Tensor], path: str | Path) -> None:
    """One uint8 tensor per weight (np.packbits, MSB first); shapes in the metadata."""
    packed = {name: pack_mask(mask) for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    save_packed_masks(packed, shapes, path)


def save_packed_masks(packed: dict[str, torch.Tensor], shapes: dict[str, list[int]], path: str | Path) -> None:
    """Same file as ``save_masks``, from masks that are bit-packed already; written atomically,
    with the same permissions as the checkpoint's other files (safetensors alone makes it 0600)."""
    write_tensors(Path(path), packed, metadata={"format": MASKS_FORMAT, "shapes": json.dumps(shapes)})


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != MASKS_FORMAT:
            raise HyperpruneError(f"'{path}' is not a hyperprune mask file (format {meta.get('format')!r})")
        shapes = json.loads(meta["shapes"])
        return {name: unpack_mask(f.get_tensor(name), tuple(shapes[name])) for name in f.keys()}


def weight_files(directory: Path) -> dict[str, Path]:
    """Map each tensor name to the safetensors shard that holds it (masks excluded)."""
    where = {}
    for shard in sorted(directory.glob("*.safetensors")):
        if shard.name == MASKS_FILE:
            continue
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                where[name] = shard
    return where
