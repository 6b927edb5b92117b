"""End-to-end training of what the prunable weights become, on the whole model's LM loss.

For the learned-mask methods that train on the full model (MaskLLM, ProxSparse) rather than
block by block. Each step the method builds the weights the model should use (a soft-masked
weight, or a trainable copy) and they stand in for the model's parameters through the step's
forward *and* backward pass (:func:`substituted`), so the model's own parameters are never
modified and nothing but the method's tensors train. Activations are checkpointed; the
substituted weights are computed once per step, outside the checkpointed blocks, and stay in
place until the backward pass is over, so the recomputation sees the very same tensors (and the
same random draws). ``torch.func.functional_call`` would restore the parameters before the
backward pass, and the recomputation would then see the wrong weights.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from hyperprune.numerics.masked_training import activation_checkpointing
from hyperprune.numerics.masked_training import window_order
from hyperprune.errors import HyperpruneError


@dataclass
class EndToEndReport:
    steps: int
    tokens: int  # calibration tokens seen, steps × batch × seqlen
    seconds: float
    losses: list[float] = field(default_factory=list)  # LM loss (plus regularizers) per step


@contextmanager
def substituted(model: nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside: each named parameter of ``model`` is replaced by the given tensor (a plain
    attribute, so autograd flows into whatever computed it); restored on exit."""
    saved = []
    try:
        for name, tensor in tensors.items():
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            saved.append((module, leaf, module._parameters.pop(leaf)))
            setattr(module, leaf, tensor)
        yield
    finally:
        for module, leaf, param in reversed(saved):
            if leaf in module.__dict__:
                delattr(module, leaf)
            module._parameters[leaf] = param


def mask_memory_bytes(prunable_params: int, m: int, floats_per_group: int, copies: int) -> int:
    """What a learned-mask method keeps per group: ``floats_per_group`` float32 values, ``copies``
    times (the values, their gradient, Adam's two moments, a random draw...)."""
    return prunable_params // m * floats_per_group * 4 * copies


def train_end_to_end(
    model: nn.Module,
    trainable: list[torch.Tensor],
    weights_for_step: Callable[[int], dict[str, torch.Tensor]],
    calib_ids: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    regularizer: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
    progress: bool = True,
    desc: str = "Training",
) -> EndToEndReport:
    """Adam on ``trainable`` for ``steps`` steps of ``batch_size`` calibration windows each.

    ``weights_for_step(step)`` returns parameter name -> the tensor the model uses this step;
    ``regularizer()`` is added to the mean LM loss; ``after_step(step)`` runs after each update
    (a proximal step, say). The model's parameters are frozen throughout.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    model.to(device)
    optimizer = torch.optim.Adam(trainable, lr=lr)
    batches = window_order(calib_ids.shape[0], steps, batch_size, torch.Generator().manual_seed(seed))
    losses: list[float] = []
    start = time.perf_counter()
    try:
        with activation_checkpointing(model):
            bar = tqdm(batches, desc=desc, unit="step", disable=not progress)
            for step, batch in enumerate(bar):
                optimizer.zero_grad(set_to_none=True)
                ids = calib_ids[batch].to(device)
                with substituted(model, weights_for_step(step)):
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    if regularizer is not None:
                        loss = loss + regularizer()
                    loss.backward()
                optimizer.step()
                if after_step is not None:
                    after_step(step)
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        model.to("cpu")
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
    return EndToEndReport(len(losses), len(losses) * min(batch_size, calib_ids.shape[0]) * calib_ids.shape[1],
                          time.perf_counter() - start, losses)


def check_mask_memory(method: str, prunable: int, m: int, floats_per_group: int, copies: int, limit_gib: float,
                      what: str) -> None:
    """Refuse, in one line, a model whose learned-mask state would exceed the limit."""
    need = mask_memory_bytes(prunable, m, floats_per_group, copies)
    if need > limit_gib * 2**30:
        raise HyperpruneError(
            f"{method} keeps {what}, {copies} copies (values, gradient, Adam's two moments, one more): about "
            f"{need / 2**30:.1f} GiB for this model's {prunable / 1e6:.0f}M prunable weights, above the limit of "
            f"{limit_gib:g} GiB (--{method}-max-memory-gib); use a smaller model or raise the limit"
        )
