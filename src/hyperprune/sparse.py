"""2:4 kernels (PyTorch core's semi-structured sparse tensors) and their measured speed.

What remains in 2026 is ``torch.sparse.to_sparse_semi_structured`` on CUDA: cuSPARSELt (fp16 and
bf16, compute capability ≥ 8.0, ``torch.backends.cusparselt.is_available()``) or CUTLASS
(``SparseSemiStructuredTensor._FORCE_CUTLASS``, compute capability 8.x only), with no fallback
between them. On the CPU there is nothing: ``accelerate`` and ``bench-speed`` say so in one line.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from hyperprune.errors import HyperpruneError
from hyperprune.masks import count_nm_violations

Backend = Literal["auto", "cusparselt", "cutlass"]
NO_KERNELS = ("2:4 kernels need an NVIDIA GPU of compute capability >= 8.0 with CUDA; {why}. "
              "Dense-with-zeros models run at dense speed here, and single-token decode and CPUs gain nothing from 2:4.")


def kernel_backend(requested: Backend = "auto") -> str:
    """The backend that will run, or a one-line HyperpruneError saying why none can."""
    if not torch.cuda.is_available():
        raise HyperpruneError(NO_KERNELS.format(why="CUDA is not available on this machine"))
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise HyperpruneError(NO_KERNELS.format(why=f"this GPU is compute capability {major}.{minor}"))
    cusparselt = bool(getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.is_available())
    if requested == "cusparselt" or (requested == "auto" and cusparselt):
        if not cusparselt:
            raise HyperpruneError("backend cusparselt: torch.backends.cusparselt is not available in this torch build; use --sparse-backend cutlass")
        return "cusparselt"
    if major != 8:
        raise HyperpruneError(f"backend cutlass runs on compute capability 8.x only, this GPU is {major}.{minor}; use cusparselt")
    return "cutlass"


@dataclass
class AccelerateReport:
    backend: str
    swapped: list[str] = field(default_factory=list)
    kept_dense: dict[str, str] = field(default_factory=dict)  # name -> why

    def as_dict(self) -> dict:
        return asdict(self)


def accelerate(model: nn.Module, backend: Backend = "auto") -> AccelerateReport:
    """Swap every exactly-2:4 ``nn.Linear`` of a CUDA fp16/bf16 model for one whose weight is a
    semi-structured sparse tensor. Other matrices stay dense and are listed with the reason."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    chosen = kernel_backend(backend)
    SparseSemiStructuredTensor._FORCE_CUTLASS = chosen == "cutlass"
    report = AccelerateReport(chosen)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight.detach()
        if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
            report.kept_dense[name] = f"{weight.dtype} on {weight.device.type}: the kernels take fp16 or bf16 on CUDA"
            continue
        if weight.shape[-1] % 4 or count_nm_violations(weight, 2, 4):
            report.kept_dense[name] = "not exactly 2:4"
            continue
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(weight.contiguous()), requires_grad=False)
        except (RuntimeError, ValueError) as exc:  # shapes the kernels do not take
            report.kept_dense[name] = " ".join(str(exc).split())[:160]
            continue
        report.swapped.append(name)
    return report


# ---------------------------------------------------------------- speed
SHAPES = {  # (out_features, in_features) of the projections
    "smollm2-135m": [(576, 576), (192, 576), (1536, 576), (576, 1536)],
    "llama-2-7b": [(4096, 4096), (11008, 4096), (4096, 11008)],
    "llama-3-8b": [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)],
}
TOKENS = {"prefill": 2048, "batch decode": 64, "decode": 1}


def time_cuda(fn, warmup: int = 10, runs: int = 50) -> tuple[float, float]:
    """Median and half the interquartile range of ``fn``'s time in ms, by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    quartiles = statistics.quantiles(times, n=4)
    return statistics.median(times), (quartiles[2] - quartiles[0]) / 2


def bench_projections(backend: Backend = "auto", dtype: torch.dtype = torch.float16, runs: int = 50) -> list[dict]:
    """Dense against 2:4 time per projection, for every shape and token count."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    chosen = kernel_backend(backend)
    SparseSemiStructuredTensor._FORCE_CUTLASS = chosen == "cutlass"
    rows = []
    for model_name, shapes in SHAPES.items():
        for out_features, in_features in shapes:
            weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
            keep = torch.tensor([0, 0, 1, 1], device="cuda", dtype=torch.bool).tile(out_features, in_features // 4)
            weight = weight * keep
            sparse = to_sparse_semi_structured(weight)
            for phase, tokens in TOKENS.items():
                x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
                dense_ms, dense_spread = time_cuda(lambda: torch.nn.functional.linear(x, weight), runs=runs)
                try:
                    sparse_ms, sparse_spread = time_cuda(lambda: torch.nn.functional.linear(x, sparse), runs=runs)
                except (RuntimeError, ValueError) as exc:
                    sparse_ms = sparse_spread = None
                    note = " ".join(str(exc).split())[:120]
                else:
                    note = ""
                rows.append({"model": model_name, "shape": [out_features, in_features], "phase": phase, "tokens": tokens,
                             "backend": chosen, "dtype": str(dtype), "dense_ms": dense_ms, "dense_spread_ms": dense_spread,
                             "sparse_ms": sparse_ms, "sparse_spread_ms": sparse_spread,
                             "speedup": dense_ms / sparse_ms if sparse_ms else None, "note": note})
    return rows


def bench_prefill(model: nn.Module, tokens: int, backend: Backend = "auto", runs: int = 20) -> dict:
    """End-to-end prefill latency of ``model`` (on CUDA, fp16/bf16) before and after ``accelerate``."""
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), device="cuda")
    with torch.no_grad():
        dense_ms, dense_spread = time_cuda(lambda: model(input_ids=ids, use_cache=False), warmup=3, runs=runs)
        report = accelerate(model, backend)
        sparse_ms, sparse_spread = time_cuda(lambda: model(input_ids=ids, use_cache=False), warmup=3, runs=runs)
    return {"tokens": tokens, "dense_ms": dense_ms, "dense_spread_ms": dense_spread, "sparse_ms": sparse_ms,
            "sparse_spread_ms": sparse_spread, "speedup": dense_ms / sparse_ms, "swapped": len(report.swapped),
            "kept_dense": len(report.kept_dense), "backend": report.backend}
