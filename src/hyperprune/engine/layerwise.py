"""The one layer loop shared by every method.

For each decoder block: gather the input statistics the method asks for (forward hooks,
which also yields the dense block outputs), let the method prune, then run the pruned
block to produce the next block's inputs while measuring how far each layer and the
whole block moved from their dense outputs. Only the current block sits on the compute
device; calibration activations may stay on the CPU. With a checkpoint, each finished
block is written out (and resumable) before the next one is loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hyperprune.engine.blocks import BlockStore, ModelBlocks
from hyperprune.engine.capture import activation_buffer, capture_block_inputs, to_device_shared
from hyperprune.engine.run_checkpoint import RunCheckpoint
from hyperprune.faults import fault_point
from hyperprune.engine.dense_stream import PairedInputs, apply_dense_target, check_dense_target
from hyperprune.engine.reconstruct import reconstruct_block
from hyperprune.numerics.statistics import InputStatistics, StatisticsKind
from hyperprune.config import EngineSettings
from hyperprune.errors import HyperpruneError
from hyperprune.masks import count_nm_violations, sparsity_of
from hyperprune.methods.base import BlockContext, PruningMethod
from hyperprune.models.architectures import BlockLayout, block_linears

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
    nm_violations: int | None = None  # groups over n non-zeros (None for unstructured targets)


@dataclass
class BlockRecord:
    block: int
    rel_output_error: float  # Σ‖f(W⊙M, x) − f(W, x)‖² / Σ‖f(W, x)‖² over calibration samples
    seconds: float
    # Σ‖f(W⊙M, x) − f(W, x)‖² / Σ‖f(W, x) − x‖²: the same error against what the block adds
    # to the residual stream, which is not dwarfed by the stream itself
    rel_update_error: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # the method's block-level notes
    # Σ‖pruned output − dense model's hidden state‖² / Σ‖dense hidden state‖²: the error carried to
    # this depth (only with --target dense, which keeps the dense trajectory)
    rel_dense_error: float | None = None


@dataclass
class LayerwiseResult:
    masks: dict[str, torch.Tensor]  # weight name -> keep-mask (CPU, bool); empty when checkpointed
    layers: list[LayerRecord]
    blocks: list[BlockRecord]
    final_hidden: torch.Tensor  # last block's outputs (before the final norm)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # blocks kept dense (--on-nan skip)
    resumed_from: int = 0  # first block computed by this run


class NonFiniteError(HyperpruneError):
    """A NaN or Inf appeared; names the block, component and quantity."""


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf: one reduction pass (min and max, which NaN and ±Inf reach), without the
    full-size boolean tensor of ``isfinite(t).all()``, which cost 18× as much."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_finite(tensor: torch.Tensor, what: str, block: int, component: str | None = None) -> None:
    if not all_finite(tensor):
        where = f"block {block}" + (f" component {component}" if component else "")
        raise NonFiniteError(
            f"NaN or Inf in the {what} of {where}; check the model and calibration data, "
            "or pass --on-nan skip (with --resume to go on from here) to keep such blocks dense"
        )


def _violations(weight: torch.Tensor, target) -> int | None:
    if target.pattern is None:
        return None
    return count_nm_violations(weight.detach(), target.pattern.n, target.pattern.m)


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


@torch.no_grad()
def discover_input_groups(block: nn.Module, layout: BlockLayout, forward, sample: torch.Tensor) -> tuple[tuple[str, ...], ...]:
    """Which of the block's Linears receive the very same input tensor, from hooks on one real
    forward (q, k and v usually do; so do gate and up). The inputs are held until the end, so a
    freed tensor's memory cannot be mistaken for another's."""
    linears = block_linears(block, layout)
    seen: dict[str, torch.Tensor] = {}
    def record(role: str):
        def hook(module, args, output) -> None:  # returns None: a forward hook's result would replace the output
            seen.setdefault(role, args[0])

        return hook

    handles = [lin.register_forward_hook(record(role)) for role, lin in linears.items()]
    try:
        forward(sample)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    for role in linears:
        if role not in seen:
            raise HyperpruneError(f"component {role} ({layout.components[role]}) was never called in a forward of the "
                                  "block; hyperprune cannot gather its statistics")
        for group in groups:
            if seen[group[0]] is seen[role]:
                group.append(role)
                break
        else:
            groups.append([role])
    return tuple(tuple(g) for g in groups)


def _statistics_for(
    linears: dict[str, nn.Linear], layout: BlockLayout, kind: StatisticsKind
) -> tuple[dict[str, InputStatistics], dict[str, torch.Tensor], list]:
    """One accumulator per group of layers sharing an input, hooked on the group's first layer;
    with Hessian statistics also each layer's output energy Σ_tokens (y − b)², per output channel
    (see :func:`_output_energy`)."""
    stats: dict[str, InputStatistics] = {}
    energy: dict[str, torch.Tensor] = {}
    handles = []
    if kind == StatisticsKind.NONE:
        return stats, energy, handles
    for group in layout.input_groups:
        first = linears[group[0]]
        acc = InputStatistics(first.in_features, kind)
        for role in group:
            stats[role] = acc
        handles.append(first.register_forward_hook(lambda mod, args, out, acc=acc: acc.add(args[0])))
    if kind >= StatisticsKind.HESSIAN:
        for role, linear in linears.items():
            handles.append(linear.register_forward_hook(
                lambda mod, args, out, role=role: _add_energy(energy, role, mod, out)))
    return stats, energy, handles


def _add_energy(energy: dict[str, torch.Tensor], role: str, linear: nn.Linear, out: torch.Tensor) -> None:
    y = out.detach().reshape(-1, linear.out_features).float()
    if linear.bias is not None:
        y = y - linear.bias.detach().float()
    squares = (y * y).sum(dim=0)
    energy[role] = squares if role not in energy else energy[role].add_(squares)


def _output_energy(energy: dict[str, torch.Tensor], stats: dict[str, InputStatistics]) -> dict[str, torch.Tensor]:
    """‖(W X)_i‖² in the Hessian's scale (H = 2XXᵀ/n): diag(W H Wᵀ) of the dense layer, had for
    the cost of the forward instead of a W·H product (d_out·d_in² flops, a third of HyperPrune's
    setup at 7B shapes)."""
    return {role: total * (2.0 / stats[role].n_tokens) for role, total in energy.items() if stats[role].n_tokens}


def _check_statistics(stats: dict[str, InputStatistics], index: int) -> None:
    for role, acc in stats.items():
        for what, tensor in (("input statistics", acc.sq_sum), ("input means", acc.sum), ("Hessian", acc.xxt)):
            if tensor is not None:
                check_finite(tensor, what, index, role)


@dataclass
class BlockOutcome:
    """What pruning one block gives: its masks, its layers' records and its errors."""

    masks: dict[str, torch.Tensor]  # role -> keep-mask
    layers: list[LayerRecord]
    rel_error: float
    rel_update_error: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    rel_dense_error: float | None = None


@dataclass
class BlockJob:
    """One block to prune, with the buffers it reads and writes: ``inputs`` are the calibration
    windows entering it, ``outputs`` receives what leaves it (first dense, then pruned), and
    ``dense_stream`` (``fit_target="dense"``) is the dense model's own trajectory, advanced in place."""

    index: int
    num_blocks: int
    block: nn.Module
    layout: BlockLayout
    inputs: torch.Tensor
    outputs: torch.Tensor
    kwargs: dict[str, Any]
    device: torch.device
    offload: torch.device
    dense_stream: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return block_output(self.block(hidden, **self.kwargs))

    def weight_name(self, role: str) -> str:
        return f"{self.layout.layers}.{self.index}.{self.layout.components[role]}.weight"


def prune_one_block(job: BlockJob, method: PruningMethod, settings: EngineSettings) -> BlockOutcome:
    """Prune one block in place: calibrate (dense outputs and statistics), prune (the method, then
    the dense-target fit and reconstruction the settings ask for), propagate (the pruned outputs
    replace the dense ones in ``job.outputs``, measuring each layer's error), and record. The public
    single-block entry point; ``run_layerwise`` calls it for every block."""
    linears = block_linears(job.block, job.layout)
    check_finite(job.inputs, "input activations", job.index)
    for role, lin in linears.items():
        check_finite(lin.weight, "weights", job.index, role)
    stats, output_energy = _calibrate(job, linears, method.statistics)
    reordered = method.reorder_block(linears, stats, lambda: _output_change(job.forward, job.inputs, job.outputs, job.device))
    paired = _advance_dense_stream(job, linears, method)
    dense_weights = {role: _lossless_copy(lin.weight.detach()) for role, lin in linears.items()}
    ctx = BlockContext(
        index=job.index,
        num_blocks=job.num_blocks,
        block=job.block,
        linears=linears,
        statistics=stats,
        target=settings.target,
        inputs=job.inputs,
        dense_outputs=job.outputs,
        forward=job.forward,
        device=job.device,
        kwargs=job.kwargs,
        names={role: job.weight_name(role) for role in linears},
        block_info=dict(reordered),
        # A reordering permutes what the layers produce: their energies no longer line up.
        output_energy={} if reordered else output_energy,
    )
    block_masks = _prune(job, ctx, method, settings, paired, dense_weights)
    del stats
    # The dense copies become ΔW = W − W' in place: no third copy of the block's weights.
    meters = {role: _ErrorMeter(_difference(dense_weights.pop(role), lin.weight.detach())) for role, lin in linears.items()}
    errors = _propagate(job, linears, meters, settings.layer_error_windows)
    return _record(job, linears, meters, ctx, block_masks, settings.target, errors)


def _lossless_copy(weight: torch.Tensor) -> torch.Tensor:
    """A copy of ``weight`` to restore it from, in bfloat16 when that holds it exactly (a bf16
    checkpoint computed in float32): half the memory, the same values. At LLaMA-2-7B shapes that
    is 0.4 GiB less beside the method's work on the block."""
    if weight.dtype == torch.float32:
        compact = weight.to(torch.bfloat16)
        if torch.equal(compact.to(torch.float32), weight):
            return compact
    return weight.clone()


def _difference(dense: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """ΔW = W − W' in the pruned weight's dtype, in place when the copy already has it: no third
    copy of the block's weights."""
    return dense.to(pruned.dtype).sub_(pruned)  # .to is the tensor itself when the dtype already matches


def _calibrate(job: BlockJob, linears: dict[str, nn.Linear],
               kind: StatisticsKind) -> tuple[dict[str, InputStatistics], dict[str, torch.Tensor]]:
    """The dense block's outputs into ``job.outputs``, with the method's statistics (and, with a
    Hessian, each layer's output energy) gathered on the way."""
    stats, energy, handles = _statistics_for(linears, job.layout, kind)
    with torch.no_grad():
        try:
            for s in range(job.inputs.shape[0]):
                job.outputs[s] = job.forward(job.inputs[s : s + 1].to(job.device))[0].to(job.offload)
        finally:
            for handle in handles:
                handle.remove()
    check_finite(job.outputs, "output activations", job.index)
    _check_statistics(stats, job.index)
    return stats, _output_energy(energy, stats)


def _prune(job: BlockJob, ctx: BlockContext, method: PruningMethod, settings: EngineSettings,
           paired: PairedInputs | None, dense_weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The method, then what the settings add; on any failure the block is left dense."""
    linears = ctx.linears
    try:
        if paired is not None:
            apply_dense_target(linears, ctx.statistics, paired, settings.fit_target_damp)
        block_masks = method.prune_block(ctx)
        if settings.reconstruct.steps > 0:
            targets = job.dense_stream if settings.fit_target == "dense" else job.outputs
            report = reconstruct_block(job.block, job.forward, linears, block_masks, job.inputs, targets, settings.reconstruct,
                                       job.device, seed=settings.seed * 1_000_003 + job.index, index=job.index)
            ctx.block_info["reconstruct"] = report.as_info()
        fault_point(job.index, "mid_block")  # the block is pruned in memory, nothing of it on disk yet
        for role, lin in linears.items():
            check_finite(lin.weight, "pruned weights", job.index, role)
    except BaseException:
        with torch.no_grad():  # leave the block dense, whatever the method did
            for role, lin in linears.items():
                lin.weight.copy_(dense_weights[role])
        raise
    return block_masks


@dataclass
class _Errors:
    output: float
    update: float
    dense: float | None


def _propagate(job: BlockJob, linears: dict[str, nn.Linear], meters: dict[str, _ErrorMeter],
               meter_windows: int = 0) -> _Errors:
    """Pruned outputs become the next block's inputs, in place, while each layer's error is metered
    on the first ``meter_windows`` windows (0: all). A meter is one more GEMM per linear, so on every
    window it makes this pass cost about 1.7 forwards instead of one."""
    handles = [linears[role].register_forward_hook(meter) for role, meter in meters.items()]
    metered = job.inputs.shape[0] if meter_windows <= 0 else min(meter_windows, job.inputs.shape[0])
    err_num = err_den = update_den = far_num = far_den = 0.0
    with torch.no_grad():
        try:
            for s in range(job.inputs.shape[0]):
                if s == metered:
                    for handle in handles:
                        handle.remove()
                hidden = job.inputs[s : s + 1].to(job.device)
                pruned = job.forward(hidden)[0]
                dense = job.outputs[s].to(job.device)
                err_num += float((pruned - dense).float().pow(2).sum())
                err_den += float(dense.float().pow(2).sum())
                update_den += float((dense - hidden[0]).float().pow(2).sum())
                if job.dense_stream is not None:
                    trajectory = job.dense_stream[s].to(job.device).float()
                    far_num += float((pruned.float() - trajectory).pow(2).sum())
                    far_den += float(trajectory.pow(2).sum())
                job.outputs[s] = pruned.to(job.offload)
        finally:
            for handle in handles:
                handle.remove()
    check_finite(job.outputs, "pruned output activations", job.index)
    return _Errors(err_num / err_den if err_den > 0 else 0.0, err_num / update_den if update_den > 0 else 0.0,
                   (far_num / far_den if far_den > 0 else 0.0) if job.dense_stream is not None else None)


def _record(job: BlockJob, linears: dict[str, nn.Linear], meters: dict[str, _ErrorMeter], ctx: BlockContext,
            block_masks: dict[str, torch.Tensor], target, errors: _Errors) -> BlockOutcome:
    records = [
        LayerRecord(
            block=job.index,
            component=role,
            name=job.weight_name(role),
            shape=list(lin.weight.shape),
            sparsity=sparsity_of(lin.weight),
            rel_error=meters[role].relative,
            info=ctx.info.get(role, {}),
            nm_violations=_violations(lin.weight, target),
        )
        for role, lin in linears.items()
    ]
    masks = {role: block_masks[role].detach().to("cpu", torch.bool) for role in linears}
    return BlockOutcome(masks, records, errors.output, errors.update, ctx.block_info, errors.dense)


def _output_change(forward, inputs: torch.Tensor, outputs: torch.Tensor, device: torch.device) -> float:
    """‖f(x) − y‖/‖y‖ on the first calibration window: how much a rewrite of the block changed it."""
    with torch.no_grad():
        now = forward(inputs[0:1].to(device))[0].float()
        before = outputs[0].to(device).float()
    return float((now - before).norm() / before.norm().clamp_min(1e-12))


def _advance_dense_stream(job: BlockJob, linears: dict[str, nn.Linear], method: PruningMethod) -> PairedInputs | None:
    """Run the dense block on the dense trajectory, in place. When the method updates weights
    and the streams differ, pair each layer's inputs on both streams on the way."""
    inputs, dense_stream, device, offload = job.inputs, job.dense_stream, job.device, job.offload
    if dense_stream is None:
        return None
    paired = None
    if method.updates_weights and not torch.equal(inputs, dense_stream):
        paired = PairedInputs(linears, job.layout)
    with torch.no_grad():
        for s in range(inputs.shape[0]):
            if paired is not None:
                with paired.recording_pruned():
                    job.forward(inputs[s : s + 1].to(device))
                with paired.pairing_dense():
                    dense_stream[s] = job.forward(dense_stream[s : s + 1].to(device))[0].to(offload)
            else:
                dense_stream[s] = job.forward(dense_stream[s : s + 1].to(device))[0].to(offload)
    check_finite(dense_stream, "dense-trajectory activations", job.index)
    return paired


def _dense_block(job: BlockJob) -> BlockOutcome:
    """Keep a block dense (after a NaN with on_nan="skip"): outputs are the dense outputs."""
    with torch.no_grad():
        for s in range(job.inputs.shape[0]):
            job.outputs[s] = job.forward(job.inputs[s : s + 1].to(job.device))[0].to(job.offload)
            if job.dense_stream is not None:
                job.dense_stream[s] = job.forward(job.dense_stream[s : s + 1].to(job.device))[0].to(job.offload)
    linears = block_linears(job.block, job.layout)
    records = [
        LayerRecord(job.index, role, job.weight_name(role), list(lin.weight.shape), sparsity_of(lin.weight), 0.0,
                    {"skipped": True}, None)
        for role, lin in linears.items()
    ]
    masks = {role: torch.ones_like(lin.weight, dtype=torch.bool, device="cpu") for role, lin in linears.items()}
    return BlockOutcome(masks, records, 0.0)


def run_layerwise(
    model: nn.Module,
    layout: BlockLayout,
    method: PruningMethod,
    input_ids: torch.Tensor,
    device: torch.device,
    settings: EngineSettings,
    progress: bool = True,
    store: BlockStore | None = None,
    checkpoint: RunCheckpoint | None = None,
    activation_dir: Path | None = None,
) -> LayerwiseResult:
    """Prune every block of ``model`` in turn, as ``settings`` say (the engine reads nothing else of
    the run's configuration). ``activation_dir``: keep the calibration activations in
    memory-mapped files there instead of RAM."""
    offload = torch.device("cpu") if settings.offload_activations or activation_dir is not None else device
    check_dense_target(method, settings)
    if activation_dir is not None:
        activation_dir.mkdir(parents=True, exist_ok=True)
    store = store or ModelBlocks(model, layout)
    num_blocks = store.num_blocks()
    with store.embedding():
        # Capture is cheap and gives the block kwargs, which are not checkpointed.
        resuming = checkpoint is not None and checkpoint.has_progress()
        captured = capture_block_inputs(model, layout, input_ids[:1] if resuming else input_ids, device, offload,
                                        None if resuming else activation_dir)
    memo: dict[int, Any] = {}  # a tensor shared by several blocks' arguments moves once
    block_kwargs = [to_device_shared(captured.for_block(i), device, memo) for i in range(num_blocks)]

    layer_records: list[LayerRecord] = []
    block_records: list[BlockRecord] = []
    skipped: list[dict[str, Any]] = []
    start_block = 0
    resume = checkpoint.load() if checkpoint else None
    if resume is not None:
        inputs = activation_buffer(tuple(resume.inputs.shape), resume.inputs.dtype, offload, activation_dir, "inputs")
        inputs.copy_(resume.inputs)
        layer_records = [LayerRecord(**r) for r in resume.layers]
        block_records = [BlockRecord(**r) for r in resume.blocks]
        skipped = list(resume.skipped)
        dense_stream = _resumed_dense_stream(resume, settings, offload, activation_dir)
        method.load_state_dict(resume.method_state)
        start_block = resume.next_block
        for index in range(start_block):
            store.restore(index, checkpoint.read_block(index))
        log.info("resuming at block %d of %d", start_block, num_blocks)
    else:
        inputs = captured.hidden
        dense_stream = None
        if settings.fit_target == "dense":  # both streams start from the same embeddings
            dense_stream = activation_buffer(tuple(inputs.shape), inputs.dtype, offload, activation_dir, "dense")
            dense_stream.copy_(inputs)
    outputs = activation_buffer(tuple(inputs.shape), inputs.dtype, offload, activation_dir, "outputs")

    masks: dict[str, torch.Tensor] = {}
    bar = tqdm(range(start_block, num_blocks), desc=f"Pruning ({method.name})", unit="block", disable=not progress,
               initial=start_block, total=num_blocks)
    for index in bar:
        start = time.perf_counter()
        block = store.load(index).to(device)
        if layout.input_groups is None:  # a discovered layout: find the shared inputs once
            groups = discover_input_groups(block, layout, lambda h: block(h, **block_kwargs[index]),
                                           inputs[0:1].to(device))
            layout = dataclasses.replace(layout, input_groups=groups)
        job = BlockJob(index, num_blocks, block, layout, inputs, outputs, block_kwargs[index], device, offload, dense_stream)
        try:
            outcome = prune_one_block(job, method, settings)
        except NonFiniteError as exc:
            if settings.on_nan != "skip":
                raise
            log.warning("block %d kept dense: %s", index, str(exc).split(";")[0])
            skipped.append({"block": index, "reason": str(exc).split(";")[0]})
            outcome = _dense_block(job)
        layer_records.extend(outcome.layers)
        block_records.append(BlockRecord(index, outcome.rel_error, time.perf_counter() - start,
                                         outcome.rel_update_error, outcome.info, outcome.rel_dense_error))
        named_masks = {job.weight_name(role): m for role, m in outcome.masks.items()}
        inputs, outputs = outputs, inputs
        if checkpoint is not None:
            fault_point(index, "before_checkpoint")
            checkpoint.save_block(
                index, store.block_state(index, block), named_masks, inputs, method.state_dict(),
                [asdict(r) for r in layer_records], [asdict(b) for b in block_records], skipped,
                dense_stream=dense_stream,
            )
            fault_point(index, "after_checkpoint")
        else:
            masks.update(named_masks)
        store.release(index, block)
        bar.set_postfix(err=f"{outcome.rel_error:.4f}")
    method.finish()
    return LayerwiseResult(masks, layer_records, block_records, inputs, skipped, start_block)


def _resumed_dense_stream(resume, settings, offload, activation_dir) -> torch.Tensor | None:
    if settings.fit_target != "dense":
        return None
    if resume.dense_stream is None:
        raise HyperpruneError("the checkpoint holds no dense trajectory for --fit-target dense; pass --overwrite to start over")
    stream = activation_buffer(tuple(resume.dense_stream.shape), resume.dense_stream.dtype, offload, activation_dir, "dense")
    stream.copy_(resume.dense_stream)
    return stream
