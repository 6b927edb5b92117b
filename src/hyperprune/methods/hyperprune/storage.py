"""Saving and loading a trained hypernetwork (``--save-hypernet`` / ``--hypernet``).

The file is safetensors: the network's and embeddings' tensors, and in its metadata the options
that define the architecture and the pattern it was trained for. A network trained on one model
can start (or, with 0 steps, do) the pruning of another: its layer embeddings are mapped by
relative depth when the two models have different numbers of blocks.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hyperprune.config import HyperPruneOptions
from hyperprune.errors import HyperpruneError
from hyperprune.methods.hyperprune.network import HyperNetwork

FORMAT = "hyperprune-hypernet/1"
# What shapes the network: these come from the file when one is loaded.
ARCHITECTURE_FIELDS = ("hidden_dim", "depth", "features", "embed_dim", "embed_init", "layer_embedding",
                       "component_embedding")


def save_hypernet(path: str | Path, network: HyperNetwork, shape: tuple[int, int, int, int],
                  options: HyperPruneOptions, pattern: str) -> None:
    """Write ``network`` atomically: a crash leaves the old file or none, never half of one."""
    path = Path(path)
    tensors = {name: value.detach().cpu().contiguous() for name, value in network.state_dict().items()}
    metadata = {"format": FORMAT, "pattern": pattern, "shape": json.dumps(list(shape)),
                "options": options.model_dump_json()}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_hypernet_header(path: str | Path) -> tuple[dict[str, object], tuple[int, int, int, int], str]:
    """(architecture options, (in_features, patterns, layers, components), pattern) of a saved network."""
    path = Path(path)
    if not path.is_file():
        raise HyperpruneError(f"--hypernet {path}: no such file; give a file written by --save-hypernet")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a file that is not its format
        raise HyperpruneError(f"--hypernet {path}: not a safetensors file ({exc}); give a file written by "
                              "--save-hypernet") from None
    if metadata.get("format") != FORMAT:
        raise HyperpruneError(f"--hypernet {path}: not a saved hypernetwork (format {metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")
    saved = json.loads(metadata["options"])
    shape = tuple(int(v) for v in json.loads(metadata["shape"]))
    return {field: saved[field] for field in ARCHITECTURE_FIELDS}, shape, metadata["pattern"]


def load_hypernet(path: str | Path, options: HyperPruneOptions, pattern: str, in_features: int, num_patterns: int,
                  num_layers: int, num_components: int) -> HyperNetwork:
    """The saved network, checked against this run's pattern and block layout; layer embeddings
    mapped by relative depth to ``num_layers``."""
    _, (saved_in, saved_patterns, saved_layers, saved_components), saved_pattern = read_hypernet_header(path)
    if saved_pattern != pattern or saved_in != in_features or saved_patterns != num_patterns:
        raise HyperpruneError(f"--hypernet {path}: trained for {saved_pattern} ({saved_patterns} patterns, "
                              f"{saved_in} features); this run prunes {pattern} ({num_patterns} patterns, "
                              f"{in_features} features)")
    if saved_components != num_components:
        raise HyperpruneError(f"--hypernet {path}: trained on blocks of {saved_components} linear layers; this "
                              f"model's blocks have {num_components}")
    network = HyperNetwork(saved_in, saved_patterns, saved_layers, options, None, saved_components)
    with safe_open(str(path), framework="pt") as handle:
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    network.load_state_dict(state)
    if saved_layers != num_layers and network.layer_embedding is not None:
        with torch.no_grad():
            source = depth_map(saved_layers, num_layers)
            network.layer_embedding = torch.nn.Parameter(network.layer_embedding[source].clone())
    return network


def depth_map(saved_layers: int, num_layers: int) -> torch.Tensor:
    """For each of ``num_layers`` blocks, the saved block at the same relative depth."""
    if num_layers == 1 or saved_layers == 1:
        return torch.zeros(num_layers, dtype=torch.long)
    position = torch.arange(num_layers, dtype=torch.float64) * (saved_layers - 1) / (num_layers - 1)
    return position.round().long()
