"""What the engine hands a method that needs the whole dense model before the layer loop
(Pruner-Zero, MaskLLM, ProxSparse): the model, the windows, and one-shot masks on demand."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hyperprune.config import EngineSettings, PruneConfig
from hyperprune.engine.layerwise import run_layerwise
from hyperprune.methods.base import WholeModelPass, get_method


def one_shot_masks(name: str, config: PruneConfig, model: nn.Module, layout, calib_ids: torch.Tensor,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """The masks a one-shot method (``sparsegpt``, ``wanda``, ``magnitude``) gives the model, from a
    layer-wise run on a copy (small models only: the copy doubles the model's memory). Only the
    target, the seed and the shared Hessian options of ``config`` apply; no reconstruction."""
    settings = EngineSettings(target=config.target, seed=config.seed)
    method = get_method(name)(config.with_method(name))
    return run_layerwise(copy.deepcopy(model), layout, method, calib_ids, device, settings, progress=False).masks


def layerwise_on_copy(method, config: PruneConfig, model: nn.Module, layout, ids: torch.Tensor, device: torch.device,
                      progress: bool):
    """``method`` run block by block on a copy of ``model`` (the copy doubles the model's memory
    while it runs), under the run's target and seed; no reconstruction."""
    settings = EngineSettings(target=config.target, seed=config.seed)
    return run_layerwise(copy.deepcopy(model), layout, method, ids, device, settings, progress=progress)


def whole_model_pass(config: PruneConfig, model: nn.Module, layout, calib_ids: torch.Tensor, device: torch.device,
                     progress: bool, work_dir=None, fingerprint: dict | None = None) -> WholeModelPass:
    return WholeModelPass(model, layout, calib_ids, device, progress,
                          lambda name: one_shot_masks(name, config, model, layout, calib_ids, device),
                          lambda method, ids: layerwise_on_copy(method, config, model, layout, ids, device, progress),
                          work_dir, fingerprint)
