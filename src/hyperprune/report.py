"""What every report records besides its results: library versions and the environment."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

_LIBRARIES = ("hyperprune", "torch", "transformers", "accelerate", "safetensors", "gguf", "numpy", "pydantic", "tqdm")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def environment() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
