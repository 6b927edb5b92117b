"""Block-wise reconstruction with the mask fixed (``--reconstruct-steps``), after any method.

Per-linear least squares cannot see what happens between a block's layers (q and k meet in
a softmax, gate and up in a product). Here the block's kept weights are trained together on
the block's output error, as EBFT (arXiv 2402.12419) does: Adam on the kept weights only,
gradients masked so every pruned weight stays exactly zero, on the training windows of the
calibration set. Reconstruction overfits small calibration sets (arXiv 2406.15524), so a few
windows are held out and the weights of the best held-out evaluation are the ones kept; the
starting weights count as an evaluation, so reconstruction never makes the held-out error worse.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from hyperprune.config import ReconstructOptions
from hyperprune.faults import fault_point
from hyperprune.numerics.masked_training import EarlyStopping, MaskedWeights, window_order


@dataclass
class ReconstructReport:
    steps_run: int
    best_step: int  # 0: the starting weights were best on the held-out windows
    holdout_before: float  # mean squared output error on the held-out windows, before
    holdout_best: float  # the same at the kept weights
    train_before: float  # the same on the first training batch, before the first step
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out error) of every check

    def as_info(self) -> dict:
        return asdict(self)


def output_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a block's output, in float32."""
    return (prediction.float() - target.float()).pow(2).mean()


def reconstruct_block(
    block: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    linears: dict[str, nn.Linear],
    masks: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    options: ReconstructOptions,
    device: torch.device,
    seed: int,
    index: int = 0,
) -> ReconstructReport:
    """Train ``linears``' kept weights so that ``forward(inputs[s]) ≈ targets[s]``; in place.

    The last ``options.holdout`` windows are held out. The block is trained in float32 (and cast
    back to its dtype after); zeros of ``masks`` (keep-masks by role) stay exactly zero.
    """
    start = time.perf_counter()
    nsamples = inputs.shape[0]
    train_windows = nsamples - options.holdout
    held_out = range(train_windows, nsamples)
    dtype = next(block.parameters()).dtype
    if dtype != torch.float32:
        block.float()

    def sample(buffer: torch.Tensor, s: int) -> torch.Tensor:
        return buffer[s : s + 1].to(device, torch.float32)

    def held_out_error() -> float:
        with torch.no_grad():
            return sum(float(output_mse(forward(sample(inputs, s)), sample(targets, s))) for s in held_out) / len(held_out)

    try:
        with MaskedWeights(block, {role: (linear.weight, masks[role]) for role, linear in linears.items()}) as weights:
            batches = window_order(train_windows, options.steps, options.batch_size, torch.Generator().manual_seed(seed))
            optimizer = torch.optim.Adam(weights.parameters(), lr=options.lr)
            stopper = EarlyStopping(weights, options.patience, held_out_error())
            steps_run, train_before = 0, float("nan")
            for step, batch in enumerate(batches, start=1):
                optimizer.zero_grad(set_to_none=True)
                batch_loss = 0.0
                for s in batch:  # one window at a time: the captured kwargs are shaped for batch 1
                    loss = output_mse(forward(sample(inputs, s)), sample(targets, s)) / len(batch)
                    loss.backward()
                    batch_loss += float(loss.detach())
                if step == 1:
                    train_before = batch_loss
                optimizer.step()
                weights.reapply()
                steps_run = step
                fault_point(index, "reconstruct")
                if (step % options.eval_every == 0 or step == len(batches)) and stopper.check(step, held_out_error()):
                    break
            stopper.keep_best()
    finally:
        if dtype != torch.float32:
            block.to(dtype)
    return ReconstructReport(steps_run, stopper.best_step, stopper.start_error, stopper.best, train_before,
                             time.perf_counter() - start, stopper.history)
