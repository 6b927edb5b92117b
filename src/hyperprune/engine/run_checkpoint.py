"""Per-block checkpoints of a pruning run, for ``--resume`` after a crash or a kill.

The partial run lives in a hidden directory beside ``--output``. After each block it
holds that block's pruned weights (a checkpoint shard), its masks, the next block's inputs,
the method's state and the RNG state, and then a manifest that lists every file with its
sha256. The manifest is written last, atomically: a block it does not list never counts,
and a file whose checksum no longer matches is refused. When the run ends, the partial
directory becomes the output directory.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from hyperprune.errors import HyperpruneError
from hyperprune.export.shard_writer import file_sha256, io_error, shard_name, write_json_file, write_tensors
from hyperprune.faults import fault_point
from hyperprune.masks import pack_mask

MANIFEST = "checkpoint.json"
MANIFEST_VERSION = 1


def partial_dir_for(output: str | Path) -> Path:
    output = Path(output)
    return output.resolve().parent / f".{output.name}.partial"


# Inside the partial directory: what a whole-model pass keeps to survive a kill before the first
# block is checkpointed (HyperPrune's end-to-end phase); removed when the output is assembled.
WHOLE_MODEL_DIR = "whole-model"

@dataclass
class ResumeState:
    next_block: int
    inputs: torch.Tensor
    layers: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    method_state: dict[str, torch.Tensor]
    dense_stream: torch.Tensor | None = None  # the dense trajectory (--target dense)


@dataclass
class RunCheckpoint:
    directory: Path
    fingerprint: dict[str, Any]
    num_blocks: int
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    @property
    def total_shards(self) -> int:
        return self.num_blocks + 1  # one per block, plus embeddings / norm / head

    def block_shard(self, index: int) -> str:
        return shard_name(index, self.total_shards)

    # ---------------------------------------------------------------- writing
    def save_block(
        self,
        index: int,
        block_tensors: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        next_inputs: torch.Tensor,
        method_state: dict[str, torch.Tensor],
        layers: list[dict[str, Any]],
        blocks: list[dict[str, Any]],
        skipped: list[dict[str, Any]],
        dense_stream: torch.Tensor | None = None,
    ) -> None:
        """Write block ``index`` and everything needed to resume after it; manifest last."""
        (self.directory / "masks").mkdir(parents=True, exist_ok=True)
        (self.directory / "state").mkdir(parents=True, exist_ok=True)
        files = {
            self.block_shard(index): (block_tensors, {}),
            f"masks/block-{index:05d}.safetensors": (
                {name: pack_mask(mask) for name, mask in masks.items()},
                {"shapes": json.dumps({name: list(mask.shape) for name, mask in masks.items()})},
            ),
            f"state/inputs-{index:05d}.safetensors": (
                {"inputs": next_inputs, "torch_rng": torch.get_rng_state(),
                 **({"dense_stream": dense_stream} if dense_stream is not None else {})}, {}),
            f"state/method-{index:05d}.safetensors": (method_state or {"_empty": torch.zeros(0)}, {}),
        }
        previous_state = [name for name in self.files if name.startswith("state/")]
        for relative, (tensors, metadata) in files.items():
            path = self.directory / relative
            try:
                write_tensors(path, tensors, metadata)
            except OSError as exc:
                raise io_error(exc, path, self._resume_hint(index)) from exc
            self.files[relative] = file_sha256(path)
            fault_point(index, "mid_checkpoint")
        for name in previous_state:
            self.files.pop(name, None)
        manifest = {
            "version": MANIFEST_VERSION,
            "fingerprint": self.fingerprint,
            "num_blocks": self.num_blocks,
            "completed": index + 1,
            "files": self.files,
            "layers": layers,
            "blocks": blocks,
            "skipped": skipped,
            "python_random": _jsonable_random_state(),
            "numpy_random": _jsonable_numpy_state(),
        }
        try:
            write_json_file(self.directory / MANIFEST, manifest)
        except OSError as exc:
            raise io_error(exc, self.directory / MANIFEST, self._resume_hint(index)) from exc
        for name in previous_state:  # superseded only once the new manifest is durable
            (self.directory / name).unlink(missing_ok=True)

    def _resume_hint(self, index: int) -> str:
        done = f"block {index - 1}" if index > 0 else "no block"
        return f"the last complete checkpoint ({done}) is intact; free space and rerun with --resume"

    # ---------------------------------------------------------------- reading
    def has_progress(self) -> bool:
        return (self.directory / MANIFEST).is_file()

    def load(self) -> ResumeState | None:
        """The state to resume from, or None when no block was completed."""
        path = self.directory / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise HyperpruneError(f"checkpoint manifest '{path}' is corrupted; pass --overwrite to start over") from None
        if manifest.get("version") != MANIFEST_VERSION or manifest.get("fingerprint") != self.fingerprint:
            raise HyperpruneError(
                f"the partial run in '{self.directory}' was made with different settings; "
                "rerun with the same arguments, or pass --overwrite to start over"
            )
        for relative, digest in manifest["files"].items():
            file = self.directory / relative
            if not file.is_file() or file_sha256(file) != digest:
                raise HyperpruneError(
                    f"checkpoint file '{file}' is missing or corrupted (checksum mismatch); pass --overwrite to start over"
                )
        self.files = dict(manifest["files"])
        index = manifest["completed"] - 1
        with safe_open(str(self.directory / f"state/inputs-{index:05d}.safetensors"), framework="pt") as f:
            inputs = f.get_tensor("inputs")
            dense_stream = f.get_tensor("dense_stream") if "dense_stream" in f.keys() else None
            torch.set_rng_state(f.get_tensor("torch_rng"))
        with safe_open(str(self.directory / f"state/method-{index:05d}.safetensors"), framework="pt") as f:
            method_state = {k: f.get_tensor(k) for k in f.keys() if k != "_empty"}
        _restore_random_state(manifest["python_random"])
        _restore_numpy_state(manifest["numpy_random"])
        return ResumeState(manifest["completed"], inputs, manifest["layers"], manifest["blocks"], manifest["skipped"],
                           method_state, dense_stream)

    def read_block(self, index: int) -> dict[str, torch.Tensor]:
        with safe_open(str(self.directory / self.block_shard(index)), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    def read_packed_masks(self) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
        """All blocks' masks, still bit-packed, with their shapes (for the output file)."""
        packed, shapes = {}, {}
        for index in range(self.num_blocks):
            with safe_open(str(self.directory / f"masks/block-{index:05d}.safetensors"), framework="pt") as f:
                shapes.update(json.loads(f.metadata()["shapes"]))
                packed.update({k: f.get_tensor(k) for k in f.keys()})
        return packed, shapes


def _jsonable_random_state() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _restore_random_state(saved: list) -> None:
    random.setstate((saved[0], tuple(saved[1]), saved[2]))


def _jsonable_numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _restore_numpy_state(saved: list) -> None:
    np.random.set_state((saved[0], np.array(saved[1], dtype=np.uint32), saved[2], saved[3], saved[4]))
