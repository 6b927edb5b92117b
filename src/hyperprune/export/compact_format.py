"""The compact checkpoint (``hyperprune export --format compact``): n:m matrices stored as their
kept values plus positions, everything else as it is.

For a matrix whose mask keeps exactly n of every m weights, the kept values are stored in the
checkpoint's dtype as ``[rows, cols·n/m]`` (in column order within each group), with their
positions: a 2-bit index per kept value when m = 4 (four to a byte), else the group's m-bit keep
mask, bit-packed. A matrix whose mask is not exactly n:m (a block kept dense with ``--on-nan
skip``) is stored dense and listed. The directory deliberately has no ``config.json`` and no
``model*.safetensors``: a plain ``AutoModelForCausalLM.from_pretrained`` must fail on it, never
load it half-recognized (transformers ≥ 5.10 loads legacy sparse checkpoints with random
weights). ``hyperprune.load_pretrained`` rebuilds the model, bit-identical to its source.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from hyperprune.errors import HyperpruneError
from hyperprune.export.mask_files import MASKS_FILE, load_masks, weight_files
from hyperprune.export.shard_writer import write_json_file, write_tensors

COMPACT_FORMAT = "hyperprune-compact-v1"
MANIFEST_FILE = "hyperprune-compact.json"
TENSORS_FILE = "compact-weights.safetensors"  # not model*.safetensors: transformers must not pick it up


def group_positions(keep: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """[groups, n] kept positions (ascending) of each group, or None if some group keeps ≠ n."""
    groups = keep.reshape(-1, m)
    if not bool((groups.sum(dim=1) == n).all()):
        return None
    return torch.nonzero(groups)[:, 1].view(-1, n)


def pack_positions(positions: torch.Tensor, m: int) -> torch.Tensor:
    """m = 4: 2 bits per position, four to a byte (little end first)."""
    flat = positions.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 4
    flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)]).view(-1, 4)
    return flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)


def unpack_positions(packed: torch.Tensor, count: int) -> torch.Tensor:
    parts = torch.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1).reshape(-1)
    return parts[:count].to(torch.long)


def compress_matrix(weight: torch.Tensor, keep: torch.Tensor, n: int, m: int) -> dict[str, torch.Tensor] | None:
    """The kept values and their positions; None when the mask is not exactly n:m."""
    positions = group_positions(keep, n, m)
    if positions is None:
        return None
    groups = weight.reshape(-1, m)
    if bool((groups * ~keep.reshape(-1, m)).ne(0).any()):
        raise HyperpruneError("a weight is non-zero where its mask prunes; run 'hyperprune verify' on the source")
    rows = weight.shape[0]
    values = groups.gather(1, positions).reshape(rows, -1).contiguous()
    if m == 4:
        return {"values": values, "index": pack_positions(positions, m)}
    bits = np.packbits(keep.reshape(-1).cpu().numpy().astype(bool))
    return {"values": values, "bitmask": torch.from_numpy(bits)}


def decompress_matrix(parts: dict[str, torch.Tensor], shape: tuple[int, int], n: int, m: int) -> torch.Tensor:
    values = parts["values"]
    groups = math.prod(shape) // m
    if "index" in parts:
        positions = unpack_positions(parts["index"], groups * n).view(groups, n)
    else:
        keep = torch.from_numpy(np.unpackbits(parts["bitmask"].numpy(), count=math.prod(shape)).astype(bool)).view(groups, m)
        positions = torch.nonzero(keep)[:, 1].view(groups, n)
    out = torch.zeros(groups, m, dtype=values.dtype)
    out.scatter_(1, positions, values.reshape(groups, n))
    return out.view(shape)


def write_compact(source: Path, staging: Path, pattern: str, hf_config: dict, extra: dict[str, Any]) -> dict[str, Any]:
    """Write the compact tensors and manifest of pruned output ``source`` into ``staging``."""
    n, m = map(int, pattern.split(":"))
    masks = load_masks(source / MASKS_FILE)
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    dense_kept = []
    for name, shard in sorted(weight_files(source).items()):
        with safe_open(str(shard), framework="pt") as f:
            tensor = f.get_tensor(name)
        parts = compress_matrix(tensor, masks[name], n, m) if name in masks else None
        if parts is None:
            tensors[name] = tensor
            layout[name] = {"kind": "dense", "shape": list(tensor.shape), "dtype": str(tensor.dtype)}
            if name in masks:
                dense_kept.append(name)
            continue
        kind = "nm-index2" if "index" in parts else "nm-bitmask"
        for part, value in parts.items():
            tensors[f"{name}:{part}"] = value
        layout[name] = {"kind": kind, "shape": list(tensor.shape), "dtype": str(tensor.dtype)}
    write_tensors(staging / TENSORS_FILE, tensors)
    manifest = {"format": COMPACT_FORMAT, "pattern": pattern, "hf_config": hf_config, "tensors": layout,
                "stored_dense": dense_kept, **extra}
    write_json_file(staging / MANIFEST_FILE, manifest)
    return manifest


def read_compact(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The manifest and the full (dense-with-zeros) state dict of a compact directory."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise HyperpruneError(f"'{directory}' has no {MANIFEST_FILE}; give the --output of 'hyperprune export --format compact'")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != COMPACT_FORMAT:
        raise HyperpruneError(f"'{path}' is format {manifest.get('format')!r}, not {COMPACT_FORMAT}; export it again")
    n, m = map(int, manifest["pattern"].split(":"))
    state = {}
    with safe_open(str(directory / TENSORS_FILE), framework="pt") as f:
        for name, entry in manifest["tensors"].items():
            if entry["kind"] == "dense":
                state[name] = f.get_tensor(name)
                continue
            part = "index" if entry["kind"] == "nm-index2" else "bitmask"
            parts = {"values": f.get_tensor(f"{name}:values"), part: f.get_tensor(f"{name}:{part}")}
            state[name] = decompress_matrix(parts, tuple(entry["shape"]), n, m)
    return manifest, state
