"""Training kept weights with their masks fixed, and early stopping on held-out data.

Shared by block reconstruction (one block, output error) and distillation (the whole model,
KL to the dense teacher). Gradients are multiplied by the keep-mask, so Adam's moments of a
pruned weight stay zero and so does its update; the masks are re-applied after every step
all the same, so a pruned weight is exactly zero whatever the optimizer does.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class MaskedWeights:
    """Inside ``with``: the given weights train (all other parameters of ``module`` are frozen),
    with gradients masked. On exit every ``requires_grad`` flag is as it was."""

    def __init__(self, module: nn.Module, weights: dict[str, tuple[nn.Parameter, torch.Tensor]]) -> None:
        self.module = module
        self.weights = {name: (param, keep.to(param.device, param.dtype)) for name, (param, keep) in weights.items()}
        self._flags: dict[str, bool] = {}
        self._hooks: list = []

    def __enter__(self) -> MaskedWeights:
        self._flags = {name: p.requires_grad for name, p in self.module.named_parameters()}
        self.module.requires_grad_(False)
        for param, keep in self.weights.values():
            param.requires_grad_(True)
            self._hooks.append(param.register_hook(lambda grad, k=keep: grad * k))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for name, param in self.module.named_parameters():
            param.requires_grad_(self._flags[name])

    def parameters(self) -> list[nn.Parameter]:
        return [param for param, _ in self.weights.values()]

    @torch.no_grad()
    def reapply(self) -> None:
        for param, keep in self.weights.values():
            param.mul_(keep)

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().clone() for name, (param, _) in self.weights.items()}

    @torch.no_grad()
    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, (param, _) in self.weights.items():
            param.copy_(saved[name])


@dataclass
class EarlyStopping:
    """Keeps the weights of the best held-out check; the starting weights are check 0, so the
    kept weights are never worse on the held-out data than where training began."""

    weights: MaskedWeights
    patience: int
    start_error: float
    history: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    stale: int = 0

    def __post_init__(self) -> None:
        self.best = self.start_error
        self.history = [(0, self.start_error)]
        self._best_weights = self.weights.snapshot()

    def check(self, step: int, error: float) -> bool:
        """Record a held-out check; True when training should stop."""
        self.history.append((step, error))
        if error < self.best:
            self.best, self.best_step, self.stale = error, step, 0
            self._best_weights = self.weights.snapshot()
            return False
        self.stale += 1
        return self.stale >= self.patience

    def keep_best(self) -> None:
        self.weights.restore(self._best_weights)

    def state_dict(self) -> dict:
        """The record and the best weights so far, for a checkpoint."""
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale,
                "history": [list(check) for check in self.history], "best_weights": self._best_weights}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.stale = state["best"], state["best_step"], state["stale"]
        self.history = [tuple(check) for check in state["history"]]
        self._best_weights = state["best_weights"]


@contextmanager
def activation_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside: training mode (transformers checkpoints only then) with activation checkpointing,
    non-reentrant (frozen embeddings give inputs that do not require grad). The LLaMA-family
    models here have no dropout at their default settings, so training mode changes nothing else."""
    enabled = enabled and getattr(model, "supports_gradient_checkpointing", False)
    if enabled:  # transformers 5.24 renamed gradient_checkpointing_enable and its kwargs argument
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        yield
    finally:
        model.eval()
        if enabled:
            (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def window_order(train_windows: int, steps: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Each step's batch of training windows: shuffled passes over the set, reshuffled each pass."""
    batches: list[list[int]] = []
    pool: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < min(batch_size, train_windows):
            if not pool:
                pool = torch.randperm(train_windows, generator=generator).tolist()
            batch.append(pool.pop())
        batches.append(batch)
    return batches


def logit_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) of the next-token distributions, averaged over tokens (nats)."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab), dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")
