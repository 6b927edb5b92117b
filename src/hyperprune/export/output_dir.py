"""Write an output directory all at once: build it under a temporary name beside the
target, then rename it into place, so a failed run never leaves a half-written output."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hyperprune.errors import HyperpruneError
from hyperprune.export.shard_writer import DIR_MODE, io_error, write_bytes_atomic


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early, before any work, if ``path`` cannot become the output directory."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise HyperpruneError(f"output '{path}' exists and is not a directory; choose another --output")
        if any(path.iterdir()) and not overwrite:
            raise HyperpruneError(f"output directory '{path}' is not empty; pass --overwrite to replace it or choose another --output")
    parent = path.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise HyperpruneError(f"cannot create the parent of output '{path}': {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise HyperpruneError(f"cannot write into '{parent}' (permission denied); choose another --output")
    return path


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path``, on error it is removed."""
    path = check_output_dir(path, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.resolve().parent))
    os.chmod(staging, DIR_MODE)  # mkdtemp makes it private (0700); the output is not
    try:
        yield staging
        publish_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_dir(staging: Path, path: Path) -> None:
    """fsync everything in ``staging``, then rename it to ``path`` (replacing what is there)."""
    path = Path(path)
    _fsync_tree(staging)
    if path.exists():
        trash = staging.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, trash)
        os.replace(staging, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, path)


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a single file via a temporary name, fsync and rename."""
    path = Path(path)
    try:
        write_bytes_atomic(path, text.encode())
    except OSError as exc:
        raise io_error(exc, path) from exc
