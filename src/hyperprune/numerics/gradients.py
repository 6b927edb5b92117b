"""The LM-loss gradient of every prunable weight over the calibration set (Pruner-Zero's G).

One extra pass before the layer loop, on the dense model: each calibration window's loss is
backpropagated on its own and the squares of the gradients are summed, giving the ℓ2 norm over
windows of the per-window gradient, √Σ_s (∂L_s/∂W)², as GBLM-Pruner gathers it (Pruner-Zero
reuses those gradients). Only the prunable weights require grad, activations are checkpointed,
and the sums live on the CPU in float32; the pass holds the whole model on the compute device,
so it does not stream.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from hyperprune.numerics.masked_training import activation_checkpointing
from hyperprune.models.architectures import BlockLayout, prunable_weight_names


def weight_gradient_norms(
    model: nn.Module, layout: BlockLayout, calib_ids: torch.Tensor, device: torch.device, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Parameter name -> √Σ_s (∂L_s/∂W)² over the windows of ``calib_ids`` (CPU, float32)."""
    names = prunable_weight_names(model, layout)
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    sums = {name: torch.zeros(params[name].shape, dtype=torch.float32) for name in names}
    model.requires_grad_(False)
    for name in names:
        params[name].requires_grad_(True)
    model.to(device)
    try:
        with activation_checkpointing(model):
            for s in tqdm(range(calib_ids.shape[0]), desc="Gradients", unit="window", disable=not progress):
                ids = calib_ids[s : s + 1].to(device)
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
                for name in names:
                    sums[name] += params[name].grad.detach().float().pow(2).cpu()
                    params[name].grad = None
    finally:
        model.to("cpu")
        for name, param in params.items():
            param.requires_grad_(flags[name])
            param.grad = None
    return {name: total.sqrt_() for name, total in sums.items()}
