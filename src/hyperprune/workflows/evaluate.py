"""``hyperprune eval``: perplexity and zero-shot accuracy of any model."""

from __future__ import annotations

import json
from typing import Any

from hyperprune.config import DEFAULT_EVAL, ZeroShotOptions
from hyperprune.data import bos_per_window
from hyperprune.errors import HyperpruneError
from hyperprune.eval import evaluate_perplexity
from hyperprune.eval.zeroshot import resolve_tasks, run_zeroshot
from hyperprune.models import load_model
from hyperprune.report import environment, library_versions
from hyperprune.sparse import accelerate, kernel_backend
from hyperprune.utils import resolve_device
from hyperprune.workflows.pruning_run import eval_ids, model_record, resolve_seqlen


def evaluate(
    model: str,
    eval_source: str | None = DEFAULT_EVAL,
    *,
    seqlen: int | None = None,
    eval_windows: int | None = None,
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    trust_remote_code: bool = False,
    zeroshot: ZeroShotOptions | None = None,
    bos: str = "auto",
    sparse_kernels: str | None = None,
) -> dict[str, Any]:
    """Perplexity on ``eval_source`` and/or zero-shot accuracy on ``zeroshot.tasks`` of a model
    (a built-in name, a directory, e.g. a pruned output, or a hub id)."""
    if eval_source is None and zeroshot is None:
        raise HyperpruneError("nothing to evaluate; give eval_source (--eval SOURCE) for perplexity and/or zeroshot (--tasks LIST) for zero-shot accuracy")
    dev = resolve_device(device)
    specs = resolve_tasks(zeroshot) if zeroshot is not None else None
    if sparse_kernels is not None:
        kernel_backend(sparse_kernels)  # no usable GPU: fail before loading anything
    loaded = load_model(model, dtype, trust_remote_code, progress)
    out: dict[str, Any] = {"model": model_record(model), "device": str(dev)}
    if sparse_kernels is not None:
        out["sparse_kernels"] = accelerate(loaded.model.to(dev), sparse_kernels).as_dict()
    if eval_source is not None:
        seqlen = resolve_seqlen(seqlen, loaded.model.config)
        with_bos = bos_per_window(loaded.tokenizer, bos)
        windows = eval_ids(loaded, eval_source, seqlen, eval_windows, with_bos)
        result = evaluate_perplexity(loaded.model, windows, dev, progress)
        out.update({"eval": eval_source, "seqlen": seqlen, "tokens": result.tokens, "ppl": result.ppl,
                    "windows": result.windows, "nll": result.nll, "bos_per_window": with_bos})
    if specs is not None:
        out["zeroshot"] = json.loads(zeroshot.model_dump_json())
        out.update(run_zeroshot(loaded.model, loaded.tokenizer, specs, zeroshot, dev, progress))
    out["versions"] = library_versions()
    out["environment"] = environment()
    return out
