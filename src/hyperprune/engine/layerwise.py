"""The one layer loop shared by every method.

For each decoder block: gather the input statistics the method asks for (forward hooks,
which also yields the dense block outputs), let the method prune, then run the pruned
block to produce the next block's inputs while measuring how far each layer and the
whole block moved from their dense outputs. Only the current block sits on the compute
device; calibration activations may stay on the CPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hyperprune.engine.capture import capture_block_inputs, to_device
from hyperprune.engine.statistics import InputStatistics, StatisticsKind
from hyperprune.masks import sparsity_of
from hyperprune.methods.base import BlockContext, PruningMethod
from hyperprune.models.architectures import BlockLayout, block_linears, decoder_blocks

log = logging.getLogger(__name__)


@dataclass
class LayerRecord:
    block: int
    component: str
    name: str
    shape: list[int]
    sparsity: float
    rel_error: float  # Σ‖ΔW x‖² / Σ‖W x‖² on the inputs the layer sees in the pruned model
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BlockRecord:
    block: int
    rel_output_error: float  # Σ‖f(W⊙M, x) − f(W, x)‖² / Σ‖f(W, x)‖² over calibration samples
    seconds: float


@dataclass
class LayerwiseResult:
    masks: dict[str, torch.Tensor]  # state-dict weight name -> keep-mask (CPU, bool)
    layers: list[LayerRecord]
    blocks: list[BlockRecord]
    final_hidden: torch.Tensor  # last block's outputs (before the final norm)


def block_output(out: Any) -> torch.Tensor:
    """Decoder blocks return a tensor (transformers >= 5) or a tuple led by it (4.x)."""
    return out[0] if isinstance(out, (tuple, list)) else out


class _ErrorMeter:
    """Forward hook adding ‖ΔW x‖² and ‖W x‖² for one pruned linear layer."""

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta = delta
        self.num = 0.0
        self.den = 0.0

    def __call__(self, module, args, output):
        diff = F.linear(args[0], self.delta)
        self.num += float(diff.float().pow(2).sum())
        self.den += float((output + diff).float().pow(2).sum())

    @property
    def relative(self) -> float:
        return self.num / self.den if self.den > 0 else 0.0


def _statistics_for(
    linears: dict[str, nn.Linear], layout: BlockLayout, kind: StatisticsKind
) -> tuple[dict[str, InputStatistics], list]:
    """One accumulator per group of layers sharing an input, hooked on the group's first layer."""
    stats: dict[str, InputStatistics] = {}
    handles = []
    if kind == StatisticsKind.NONE:
        return stats, handles
    for group in layout.input_groups:
        first = linears[group[0]]
        acc = InputStatistics(first.in_features, kind)
        for role in group:
            stats[role] = acc
        handles.append(first.register_forward_hook(lambda mod, args, out, acc=acc: acc.add(args[0])))
    return stats, handles


def run_layerwise(
    model: nn.Module,
    layout: BlockLayout,
    method: PruningMethod,
    input_ids: torch.Tensor,
    device: torch.device,
    offload_activations: bool = True,
    progress: bool = True,
) -> LayerwiseResult:
    offload = torch.device("cpu") if offload_activations else device
    captured = capture_block_inputs(model, layout, input_ids, device, offload)
    inputs = captured.hidden
    outputs = torch.empty_like(inputs)
    kwargs = to_device(captured.kwargs, device)
    blocks = decoder_blocks(model, layout)
    nsamples = inputs.shape[0]

    masks: dict[str, torch.Tensor] = {}
    layer_records: list[LayerRecord] = []
    block_records: list[BlockRecord] = []
    bar = tqdm(range(len(blocks)), desc=f"Pruning ({method.name})", unit="block", disable=not progress)
    for index in bar:
        start = time.perf_counter()
        block = blocks[index].to(device)

        def forward(hidden: torch.Tensor, block=block) -> torch.Tensor:
            return block_output(block(hidden, **kwargs))

        linears = block_linears(block, layout)
        stats, handles = _statistics_for(linears, layout, method.statistics)
        # Calibrating: dense outputs, with statistics hooks attached.
        with torch.no_grad():
            try:
                for s in range(nsamples):
                    outputs[s] = forward(inputs[s : s + 1].to(device))[0].to(offload)
            finally:
                for handle in handles:
                    handle.remove()

        dense_weights = {role: lin.weight.detach().clone() for role, lin in linears.items()}
        ctx = BlockContext(
            index=index,
            num_blocks=len(blocks),
            block=block,
            linears=linears,
            statistics=stats,
            target=method.config.target,
            inputs=inputs,
            dense_outputs=outputs,
            forward=forward,
            device=device,
        )
        block_masks = method.prune_block(ctx)
        del stats

        # Propagating: pruned outputs become the next block's inputs, in place.
        meters = {role: _ErrorMeter(dense_weights[role] - lin.weight.detach()) for role, lin in linears.items()}
        handles = [linears[role].register_forward_hook(meter) for role, meter in meters.items()]
        err_num = err_den = 0.0
        with torch.no_grad():
            try:
                for s in range(nsamples):
                    pruned = forward(inputs[s : s + 1].to(device))[0]
                    dense = outputs[s].to(device)
                    err_num += float((pruned - dense).float().pow(2).sum())
                    err_den += float(dense.float().pow(2).sum())
                    outputs[s] = pruned.to(offload)
            finally:
                for handle in handles:
                    handle.remove()
        del dense_weights

        prefix = f"{layout.layers}.{index}"
        for role, lin in linears.items():
            name = f"{prefix}.{layout.components[role]}.weight"
            masks[name] = block_masks[role].detach().to("cpu", torch.bool)
            layer_records.append(
                LayerRecord(
                    block=index,
                    component=role,
                    name=name,
                    shape=list(lin.weight.shape),
                    sparsity=sparsity_of(lin.weight),
                    rel_error=meters[role].relative,
                    info=ctx.info.get(role, {}),
                )
            )
        blocks[index] = block.to("cpu")
        rel = err_num / err_den if err_den > 0 else 0.0
        block_records.append(BlockRecord(index, rel, time.perf_counter() - start))
        bar.set_postfix(err=f"{rel:.4f}")
        inputs, outputs = outputs, inputs
    return LayerwiseResult(masks, layer_records, block_records, inputs)
