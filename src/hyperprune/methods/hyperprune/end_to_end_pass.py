"""HyperPrune's end-to-end phase inside a run (route B, ``--hyperprune-end-to-end-steps N``).

The method then works as a whole-model method: before the layer loop it runs its own layer-wise
pass on a copy of the dense model (frozen weights, as the paper), fine-tunes the network on
KL(dense ‖ pruned) (:class:`NetworkFineTuning`), and hands the resulting masks to the layer
loop, which applies them (or refits each layer to them) block by block.

With ``--output``, both stages survive a kill: the layer-wise pass's result is written once to
the run's partial directory, and the fine-tuning state after every step; ``--resume`` reloads
them and takes the remaining steps to the same bits. A kill inside the layer-wise pass starts
that pass again.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hyperprune.errors import HyperpruneError
from hyperprune.export.shard_writer import io_error, write_bytes_atomic
from hyperprune.faults import fault_point
from hyperprune.masks import nm_patterns
from hyperprune.methods.base import WholeModelPass
from hyperprune.methods.hyperprune.network_finetune import FineTuningSettings, NetworkFineTuning, NetworkLayer

log = logging.getLogger(__name__)

LAYERWISE_FILE = "hyperprune-layerwise.pt"
FINE_TUNING_FILE = "hyperprune-end-to-end.pt"


@dataclass
class EndToEndResult:
    masks: dict[str, torch.Tensor]  # weight name -> keep-mask, every prunable layer
    changed: dict[str, float]  # weight name -> share of groups changed from the layer-wise pass's mask
    info: dict[str, Any]  # what the report keeps (steps, held-out KL, seconds)


def end_to_end_masks(method, run: WholeModelPass) -> EndToEndResult:
    """The layer-wise pass, then the end-to-end phase; leaves the fine-tuned network in ``method``."""
    options = method.options
    windows = run.calib_ids.shape[0]
    holdout = options.end_to_end_holdout
    if holdout >= windows:
        raise HyperpruneError(f"--hyperprune-end-to-end-holdout {holdout} leaves none of the {windows} calibration "
                              "windows to train on: give more --nsamples or a smaller holdout")
    train_ids, holdout_ids = run.calib_ids[: windows - holdout], run.calib_ids[windows - holdout :]
    work = Path(run.work_dir) if run.work_dir is not None else None
    identity = json.dumps({"run": run.fingerprint, "options": options.model_dump(mode="json")}, sort_keys=True,
                          default=str)
    layers, layerwise_seconds = _layerwise(method, run, train_ids, work, identity)
    patterns = nm_patterns(method.config.target.pattern.n, method.config.target.pattern.m)
    settings = FineTuningSettings(options.end_to_end_steps, options.end_to_end_lr, options.end_to_end_tau,
                                  options.end_to_end_batch_size, options.end_to_end_eval_every,
                                  options.end_to_end_patience, method.config.seed, options.end_to_end_group_fraction,
                                  options.end_to_end_gradient_checkpointing)
    # The phase substitutes every prunable weight, so the model it runs may be the dense one itself.
    training = NetworkFineTuning(run.model, method.network, layers, patterns, train_ids, holdout_ids, settings)
    saved = _read(work / FINE_TUNING_FILE, identity) if work is not None else None
    if saved is not None:
        training.load_state_dict(saved)
        log.info("HyperPrune end to end: resuming after step %d of %d", training.run.steps, settings.steps)

    def checkpoint(step: int) -> None:
        if work is not None:
            _write(work / FINE_TUNING_FILE, {"identity": identity, **training.state_dict()})
        fault_point(step, "end_to_end_step")

    report = training.train(checkpoint, progress=run.progress)
    masks = training.final_masks()
    m = patterns.shape[1]
    changed = {layer.name: float((masks[layer.name] != layer.applied).view(-1, m).any(1).float().mean())
               for layer in layers}
    info = {"layerwise_seconds": layerwise_seconds, "end_to_end": asdict(report),
            "changed_vs_layerwise": training.changed_groups(masks), "train_windows": train_ids.shape[0],
            "holdout_windows": holdout}
    return EndToEndResult({name: keep.cpu() for name, keep in masks.items()}, changed, info)


def _layerwise(method, run: WholeModelPass, train_ids: torch.Tensor, work: Path | None,
               identity: str) -> tuple[list[NetworkLayer], float]:
    """The layer-wise pass's network and per-layer record, from the partial directory if a killed
    run left them there."""
    saved = _read(work / LAYERWISE_FILE, identity) if work is not None else None
    if saved is not None:
        method.restore_network(saved["network"], tuple(saved["shape"]))
        log.info("HyperPrune end to end: the layer-wise pass is reused from the interrupted run")
        return [NetworkLayer(**layer) for layer in saved["layers"]], saved["seconds"]
    layerwise = method.layerwise_copy()
    result = run.layerwise(layerwise, train_ids)
    seconds = sum(block.seconds for block in result.blocks)
    method.restore_network(layerwise.network.state_dict(), layerwise.shape)
    layers = layerwise.network_layers
    if work is not None:
        _write(work / LAYERWISE_FILE, {"identity": identity, "network": layerwise.network.state_dict(),
                                       "shape": list(layerwise.shape), "seconds": seconds,
                                       "layers": [asdict(layer) for layer in layers]})
    return layers, seconds


def _write(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise io_error(exc, path, "free space and rerun with --resume") from exc


def _read(path: Path, identity: str) -> dict | None:
    """A state written by a run with the same identity, or None (no file: nothing to resume)."""
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    if state.get("identity") != identity:
        raise HyperpruneError(f"'{path}' was written by a run with other settings; pass --overwrite to start over")
    return state
