"""``hyperprune export --format compact`` and ``hyperprune.load_pretrained``: the compact
checkpoint of a pruned output (format and math in ``export/compact.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from hyperprune.errors import HyperpruneError
from hyperprune.export import check_output_dir
from hyperprune.export.mask_files import MASKS_FILE, REPORT_FILE, weight_files
from hyperprune.export.compact_format import MANIFEST_FILE, TENSORS_FILE, read_compact, write_compact
from hyperprune.export.output_dir import atomic_output_dir
from hyperprune.export.shard_writer import write_json_file
from hyperprune.report import library_versions

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "chat_template.jinja")


def export_compact(directory: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the compact checkpoint of pruned output ``directory`` to ``output``; return its manifest."""
    directory = Path(directory)
    for needed in (REPORT_FILE, MASKS_FILE, "config.json"):
        if not (directory / needed).is_file():
            raise HyperpruneError(f"'{directory}' has no {needed}; give the --output directory of 'hyperprune prune'")
    report = json.loads((directory / REPORT_FILE).read_text())
    pattern = report.get("pattern", "")
    if ":" not in str(pattern):
        raise HyperpruneError(f"'{directory}' was pruned to {pattern!r}, not an n:m pattern; the compact format stores n:m matrices")
    check_output_dir(output, overwrite)
    source_bytes = sum(p.stat().st_size for p in set(weight_files(directory).values()))
    with atomic_output_dir(output, overwrite) as staging:
        extra = {"source": str(directory), "versions": library_versions()}
        generation = directory / "generation_config.json"
        if generation.is_file():
            extra["generation_config"] = json.loads(generation.read_text())
        manifest = write_compact(directory, staging, pattern, json.loads((directory / "config.json").read_text()), extra)
        for name in _TOKENIZER_FILES:
            if (directory / name).is_file():
                shutil.copyfile(directory / name, staging / name)
        compact_bytes = (staging / TENSORS_FILE).stat().st_size
        manifest["bytes"] = {"source_safetensors": source_bytes, "compact": compact_bytes, "ratio": compact_bytes / source_bytes}
        write_json_file(staging / MANIFEST_FILE, manifest)
        write_json_file(staging / REPORT_FILE, {**report, "export": {"format": "compact", **manifest["bytes"],
                                                                      "stored_dense": manifest["stored_dense"]}})
    return manifest


def load_pretrained(directory: str | Path, dtype: torch.dtype | None = None):
    """The transformers model of any hyperprune output, in eval mode: a compact export (rebuilt,
    bit-identical to the output it came from), or a ``prune``, ``distill`` or ``apply-masks``
    output directory (an ordinary checkpoint). Its tokenizer is ``AutoTokenizer.from_pretrained(directory)``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        if not (directory / "config.json").is_file():
            raise HyperpruneError(f"'{directory}' is neither a hyperprune output nor a compact export (no config.json, "
                                  f"no {MANIFEST_FILE}); give the --output directory of prune, distill, apply-masks or export")
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or "auto")
        model.eval()
        return model
    manifest, state = read_compact(directory)
    hf_config = dict(manifest["hf_config"])
    config = AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
    with _no_init_weights():  # every weight is loaded below; buffers (rotary tables) are built as usual
        model = AutoModelForCausalLM.from_config(config)
    expected = set(model.state_dict())
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(expected - set(state) - tied)
    if missing:
        raise HyperpruneError(f"the compact checkpoint lacks {missing[0]} (and {len(missing) - 1} more); export it again")
    model.load_state_dict(state, strict=False)
    if tied:
        model.tie_weights()
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return model


def _no_init_weights():
    """transformers' context that skips random initialization (moved in 5.x); a no-op if absent."""
    from contextlib import nullcontext

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return nullcontext()
    return no_init_weights()
