"""Safetensors shards written one at a time: a temporary name, fsync, then rename, so a
file on disk is always complete. Disk-full and permission errors become clear errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from hyperprune.errors import HyperpruneError
from hyperprune.utils import file_sha256  # noqa: F401  (re-exported)

INDEX_FILE = "model.safetensors.index.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def shard_name(index: int, total: int) -> str:
    return f"model-{index + 1:05d}-of-{total:05d}.safetensors"


def io_error(exc: OSError, path: Path, after: str = "") -> HyperpruneError:
    """Turn an OSError from writing ``path`` into a one-line, actionable error."""
    if exc.errno == errno.ENOSPC:
        what = f"disk full while writing '{path}'"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = f"cannot write '{path}' ({os.strerror(exc.errno)})"
    else:
        what = f"could not write '{path}' ({exc.strerror or exc})"
    return HyperpruneError(f"{what}; {after or 'free space or choose another --output, then run again'}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; once written, fsync it, rename it into place
    and fsync the directory. On any error the temporary file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # safetensors creates 0600; outputs are meant to be shared
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with _atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_json_file(path: Path, payload: dict) -> None:
    write_bytes_atomic(path, json.dumps(payload, indent=2).encode())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (transformers wants ``format: pt`` metadata)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with _atomic_file(path) as tmp:
        save_file(contiguous, str(tmp), metadata={"format": "pt", **(metadata or {})})


def write_index(directory: Path, weight_map: dict[str, str], total_size: int) -> None:
    write_json_file(directory / INDEX_FILE, {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))})
