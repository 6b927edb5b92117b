"""``hyperprune verify DIR``: check that every pruned matrix really is n:m sparse. A directory that
``hyperprune prune`` wrote is checked against its saved masks too; any other Hugging Face
checkpoint is checked on its weights alone (every decoder-block linear must be n:m)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from hyperprune.config import NMPattern
from hyperprune.errors import HyperpruneError
from hyperprune.export.mask_files import MASKS_FILE, REPORT_FILE, load_masks, weight_files
from hyperprune.export.compact_format import MANIFEST_FILE, read_compact
from hyperprune.masks import count_nm_violations, sparsity_of
from hyperprune.models.architectures import ARCHITECTURES


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
    masks_checked: bool = True  # False: no saved masks (not a prune output); the weights alone were checked

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
        raise HyperpruneError(f"'{directory}' has no n:m pattern in a {REPORT_FILE}; pass --pattern n:m to check against one")
    try:
        nm = NMPattern.parse(pattern)
    except ValueError as exc:
        raise HyperpruneError(str(exc)) from None
    shards = weight_files(directory)
    if not (directory / MASKS_FILE).is_file():
        return _verify_weights(directory, nm, shards)
    masks = load_masks(directory / MASKS_FILE)
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


def _verify_weights(directory: Path, nm: NMPattern, shards: dict[str, Path]) -> VerifyResult:
    """A checkpoint without saved masks: every decoder-block linear's weight must be n:m itself."""
    names = _prunable_names(directory, shards)
    if not names:
        raise HyperpruneError(f"'{directory}' holds no decoder-block linear weights to check (no *.safetensors with "
                              "model.layers.N.*.weight); give a Hugging Face checkpoint directory")
    result = VerifyResult(pattern=str(nm), masks_checked=False)
    for name in names:
        with safe_open(str(shards[name]), framework="pt") as f:
            weight = f.get_tensor(name)
        result.layers.append(LayerCheck(name, count_nm_violations(weight, nm.n, nm.m), 0, sparsity_of(weight)))
    return result


def _prunable_names(directory: Path, shards: dict[str, Path]) -> list[str]:
    """The decoder-block linears of a checkpoint: by its architecture's known layout when config.json
    names one, else every 2-D ``...layers.N....weight`` outside the norms."""
    config_path = directory / "config.json"
    model_type = json.loads(config_path.read_text()).get("model_type") if config_path.is_file() else None
    if model_type in ARCHITECTURES:
        layout = ARCHITECTURES[model_type]
        pattern = re.compile(rf"^{re.escape(layout.layers)}\.\d+\.({'|'.join(re.escape(c) for c in layout.components.values())})\.weight$")
        return sorted(name for name in shards if pattern.match(name))
    pattern = re.compile(r"\.layers\.\d+\..*\.weight$")
    names = []
    for name in sorted(shards):
        if pattern.search(name) and "norm" not in name:
            with safe_open(str(shards[name]), framework="pt") as f:
                if len(f.get_slice(name).get_shape()) == 2:
                    names.append(name)
    return names


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
