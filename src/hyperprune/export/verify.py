"""``hyperprune verify DIR``: check that every pruned matrix really is n:m sparse."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from hyperprune.config import NMPattern
from hyperprune.errors import HyperpruneError
from hyperprune.export.checkpoint import MASKS_FILE, REPORT_FILE, load_masks, weight_files
from hyperprune.export.compact import MANIFEST_FILE, read_compact
from hyperprune.masks import count_nm_violations, sparsity_of


@dataclass
class LayerCheck:
    name: str
    violations: int  # groups with more than n non-zeros
    unmasked_nonzeros: int  # weights non-zero where the saved mask says pruned
    sparsity: float


@dataclass
class VerifyResult:
    pattern: str
    layers: list[LayerCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.violations == 0 and c.unmasked_nonzeros == 0 for c in self.layers)


def verify_checkpoint(directory: str | Path, pattern: str | None = None) -> VerifyResult:
    """A weight that was already zero counts as pruned. ``pattern`` defaults to the report's."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HyperpruneError(f"'{directory}' is not a directory; give the --output directory of a prune run")
    if (directory / MANIFEST_FILE).is_file():
        return _verify_compact(directory, pattern)
    report_path = directory / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    pattern = pattern or report.get("pattern")
    if not pattern or pattern.startswith("unstructured"):
        raise HyperpruneError(f"'{directory}' has no n:m pattern in {REPORT_FILE}; pass --pattern n:m to check against one")
    try:
        nm = NMPattern.parse(pattern)
    except ValueError as exc:
        raise HyperpruneError(str(exc)) from None
    if not (directory / MASKS_FILE).is_file():
        raise HyperpruneError(f"'{directory}' has no {MASKS_FILE}; it was not written by 'hyperprune prune'")
    masks = load_masks(directory / MASKS_FILE)
    shards = weight_files(directory)
    result = VerifyResult(pattern=str(nm))
    for name, mask in masks.items():
        if name not in shards:
            result.problems.append(f"{name}: in the masks but not in the checkpoint")
            continue
        with safe_open(str(shards[name]), framework="pt") as f:
            weight = f.get_tensor(name)
        if tuple(weight.shape) != tuple(mask.shape):
            result.problems.append(f"{name}: shape {tuple(weight.shape)} does not match its mask {tuple(mask.shape)}")
            continue
        result.layers.append(
            LayerCheck(
                name=name,
                violations=count_nm_violations(weight, nm.n, nm.m),
                unmasked_nonzeros=int(((weight != 0) & ~mask).sum()),
                sparsity=sparsity_of(weight),
            )
        )
    if not masks:
        result.problems.append("the mask file lists no pruned matrices")
    return result


def _verify_compact(directory: Path, pattern: str | None) -> VerifyResult:
    """A compact checkpoint keeps exactly n of every m by construction; decompress and check anyway
    (the matrices it had to store dense are checked as they are)."""
    manifest, state = read_compact(directory)
    nm = NMPattern.parse(pattern or manifest["pattern"])
    result = VerifyResult(pattern=str(nm))
    for name, entry in manifest["tensors"].items():
        if entry["kind"] != "dense" or name in manifest["stored_dense"]:
            weight = state[name]
            result.layers.append(LayerCheck(name, count_nm_violations(weight, nm.n, nm.m), 0, sparsity_of(weight)))
    if not result.layers:
        result.problems.append("the compact checkpoint holds no pruned matrices")
    return result
