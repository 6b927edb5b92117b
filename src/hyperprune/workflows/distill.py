"""``hyperprune distill``: masked distillation of a pruned output directory into a new one.

Reads the directory ``hyperprune prune --output`` wrote (weights, ``masks.safetensors``,
``report.json``), distills the dense teacher into it with the masks fixed, and writes a new
output directory of the same layout, all at once: its report is the pruning report plus a
``distill`` section, and it still passes ``hyperprune verify``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hyperprune.config import DistillOptions
from hyperprune.data import calibration_windows, load_text_source
from hyperprune.engine.masked_distillation import distill_masked
from hyperprune.errors import HyperpruneError
from hyperprune.export import check_output_dir
from hyperprune.export.mask_files import MASKS_FILE, REPORT_FILE, load_masks
from hyperprune.export.output_dir import atomic_output_dir
from hyperprune.export.shard_writer import write_json_file
from hyperprune.models import load_model
from hyperprune.models.architectures import torch_dtype
from hyperprune.report import environment, library_versions
from hyperprune.utils import resolve_device


def _read_pruned_dir(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise HyperpruneError(f"'{directory}' is not a directory; give the --output directory of a prune run")
    for needed in (REPORT_FILE, MASKS_FILE):
        if not (directory / needed).is_file():
            raise HyperpruneError(f"'{directory}' has no {needed}; give the --output directory of 'hyperprune prune'")
    return json.loads((directory / REPORT_FILE).read_text())


def distill(
    directory: str | Path,
    output: str | Path,
    options: DistillOptions,
    teacher: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Distill into the pruned model in ``directory``; write the result to ``output``.
    ``teacher`` defaults to the model the pruning run started from. Returns the distill report."""
    directory = Path(directory)
    report = _read_pruned_dir(directory)
    if Path(output).resolve() == directory.resolve():
        raise HyperpruneError("--output is the pruned directory itself; write the distilled model to a new directory")
    check_output_dir(output, overwrite)
    masks = load_masks(directory / MASKS_FILE)
    teacher_spec = teacher or report.get("model")
    if not teacher_spec:
        raise HyperpruneError(f"'{directory / REPORT_FILE}' names no model; pass --teacher MODEL")
    student = load_model(str(directory), "float32", trust_remote_code, progress)
    dense = load_model(teacher_spec, "float32", trust_remote_code, progress)
    if dense.model.config.vocab_size != student.model.config.vocab_size:
        raise HyperpruneError(
            f"teacher '{teacher_spec}' has a vocabulary of {dense.model.config.vocab_size}, the student "
            f"{student.model.config.vocab_size}; pass the --teacher the model was pruned from"
        )
    seqlen = options.seqlen or int(report.get("seqlen") or 0)
    if seqlen <= 0:
        raise HyperpruneError("the report records no seqlen; pass --seqlen")
    calib = options.calib or report.get("calib")
    # The pruning run's window protocol: a BOS per window if it used one.
    ids = calibration_windows(student.tokenizer, load_text_source(calib), options.nsamples, seqlen, options.seed,
                              bool(report.get("bos_per_window", False)))
    train_ids, held_out_ids = ids[: -options.holdout], ids[-options.holdout :]
    result = distill_masked(student.model, dense.model, masks, train_ids, held_out_ids, options,
                            resolve_device(device), progress)
    section = {
        "teacher": teacher_spec,
        "source": str(directory),
        "calib": calib,
        "seqlen": seqlen,
        "options": json.loads(options.model_dump_json()),
        **result.as_dict(),
        "versions": library_versions(),
        "environment": environment(),
    }
    with atomic_output_dir(output, overwrite) as staging:
        model = student.model.to("cpu", torch_dtype(report.get("dtype", "float32")))
        model.save_pretrained(staging)
        student.tokenizer.save_pretrained(staging)
        shutil.copyfile(directory / MASKS_FILE, staging / MASKS_FILE)
        write_json_file(staging / REPORT_FILE, {**report, "distill": section})
    return section
