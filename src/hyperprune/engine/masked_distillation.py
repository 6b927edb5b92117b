"""Masked end-to-end distillation (``hyperprune distill``): the training loop, no I/O.

The student is the pruned model, the teacher the dense one. Only the student's pruned linear
weights train, with their masks fixed (:class:`MaskedWeights`), on the KL divergence from the
teacher's next-token distribution, optionally plus an MSE on the final hidden state. A few
windows are held out; the weights of the best held-out check are kept.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hyperprune.config import DistillOptions
from hyperprune.numerics.masked_training import EarlyStopping, MaskedWeights, activation_checkpointing, logit_kl
from hyperprune.numerics.masked_training import window_order
from hyperprune.errors import HyperpruneError


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """MSE of the final hidden states, relative to the teacher's mean square (scale-free)."""
    teacher = teacher_hidden.float()
    return (student_hidden.float() - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)


@dataclass
class DistillReport:
    steps_run: int
    best_step: int  # 0: the pruned model was best on the held-out windows
    holdout_before: float  # held-out loss (KL, plus the weighted hidden MSE) before training
    holdout_best: float  # the same at the kept weights
    seconds: float
    seconds_per_step: float  # mean over training steps, held-out checks excluded
    trained_weights: int  # pruned matrices trained
    history: list[tuple[int, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def distill_masked(
    student: nn.Module,
    teacher: nn.Module,
    masks: dict[str, torch.Tensor],
    train_ids: torch.Tensor,
    held_out_ids: torch.Tensor,
    options: DistillOptions,
    device: torch.device,
    progress: bool = True,
) -> DistillReport:
    """Distill ``teacher`` into ``student`` in place; ``masks``: parameter name -> keep-mask."""
    params = dict(student.named_parameters())
    missing = [name for name in masks if name not in params]
    if missing:
        raise HyperpruneError(f"the student has no parameter {missing[0]} named in the masks; is it the pruned model they came from?")
    student.to(device)
    teacher.to(device).eval()
    use_hidden = options.hidden_weight > 0

    def loss_on(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(device)
        with torch.no_grad():
            target = teacher(input_ids=ids, use_cache=False, output_hidden_states=use_hidden)
        out = student(input_ids=ids, use_cache=False, output_hidden_states=use_hidden)
        loss = logit_kl(out.logits, target.logits)
        if use_hidden:
            loss = loss + options.hidden_weight * hidden_mse(out.hidden_states[-1], target.hidden_states[-1])
        return loss

    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(float(loss_on(held_out_ids[i : i + 1])) for i in range(held_out_ids.shape[0])) / held_out_ids.shape[0]

    start = time.perf_counter()
    masked = {name: (params[name], keep) for name, keep in masks.items()}
    with activation_checkpointing(student, options.gradient_checkpointing), MaskedWeights(student, masked) as weights:
        optimizer = torch.optim.Adam(weights.parameters(), lr=options.lr)
        stopper = EarlyStopping(weights, options.patience, held_out_loss())
        batches = window_order(train_ids.shape[0], options.steps, options.batch_size,
                               torch.Generator().manual_seed(options.seed))
        bar = tqdm(batches, desc="Distilling", unit="step", disable=not progress)
        steps_run, train_seconds = 0, 0.0
        for step, batch in enumerate(bar, start=1):
            step_start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            batch_loss = 0.0
            for i in batch:
                loss = loss_on(train_ids[i : i + 1]) / len(batch)
                loss.backward()
                batch_loss += float(loss.detach())
            optimizer.step()
            weights.reapply()
            steps_run, train_seconds = step, train_seconds + time.perf_counter() - step_start
            postfix = {"loss": f"{batch_loss:.4f}", "held-out": f"{stopper.best:.4f}"}
            if step % options.eval_every == 0 or step == len(batches):
                stop = stopper.check(step, held_out_loss())
                postfix["held-out"] = f"{stopper.history[-1][1]:.4f}"
                bar.set_postfix(postfix)
                if stop:
                    break
            else:
                bar.set_postfix(postfix)
        stopper.keep_best()
    seconds = time.perf_counter() - start
    return DistillReport(steps_run, stopper.best_step, stopper.start_error, stopper.best, seconds,
                         train_seconds / max(1, steps_run), len(masks), stopper.history)
