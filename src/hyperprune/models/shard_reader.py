"""Read single tensors from a safetensors checkpoint without loading the rest."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from hyperprune.errors import HyperpruneError

INDEX_FILE = "model.safetensors.index.json"


def has_safetensors(directory: str | Path) -> bool:
    directory = Path(directory)
    return (directory / INDEX_FILE).is_file() or (directory / "model.safetensors").is_file()


class ShardReader:
    """Read single tensors from a safetensors checkpoint (one file or an indexed set)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.directory / "model.safetensors").is_file():
            with safe_open(str(self.directory / "model.safetensors"), framework="pt") as f:
                self.weight_map = dict.fromkeys(f.keys(), "model.safetensors")
        else:
            raise HyperpruneError(f"'{directory}' has no safetensors weights; give a checkpoint saved with safetensors")

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.weight_map if name.startswith(prefix)]

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        tensors = {}
        for file, members in by_file.items():
            with safe_open(str(self.directory / file), framework="pt") as f:
                for name in members:
                    tensors[name] = f.get_tensor(name)
        return tensors


