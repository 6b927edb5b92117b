"""Small helpers shared across layers (no dependency on the rest of the package but its errors)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from hyperprune.errors import HyperpruneError


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HyperpruneError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HyperpruneError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return device
