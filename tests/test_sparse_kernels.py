"""2:4 kernels: refused in one line without a suitable GPU; on CUDA, outputs match dense."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from hyperprune.cli import main
from hyperprune.errors import HyperpruneError
from hyperprune.sparse import accelerate


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without CUDA")
def test_without_cuda_accelerate_refuses_in_one_line():
    with pytest.raises(HyperpruneError, match="compute capability >= 8.0") as info:
        accelerate(tiny_model("llama"))
    assert "\n" not in str(info.value) and "CUDA is not available" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without CUDA")
def test_without_cuda_bench_speed_exits_zero_with_one_line(capsys):
    assert main(["bench-speed"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "NVIDIA GPU" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without CUDA")
def test_without_cuda_eval_sparse_kernels_is_an_error(tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--eval", "sotu", "--sparse-kernels", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "compute capability" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without CUDA")
def test_without_cuda_the_gpu_check_script_exits_zero_with_one_line(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable, "GPU_OUT": str(tmp_path / "gpu")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "gpu_checks: no CUDA GPU on this machine; nothing to measure (run it where one is lent)"]
    assert not (tmp_path / "gpu").exists()


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@pytest.mark.skipif(not _cuda_ready(), reason="2:4 kernels need CUDA and compute capability >= 8.0")
def test_accelerated_linears_match_dense_with_zeros():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512, bias=False), torch.nn.Linear(512, 256, bias=False)).cuda().half()
    with torch.no_grad():
        first = model[0].weight
        keep = torch.tensor([0, 0, 1, 1], device="cuda", dtype=torch.bool).tile(512, 64)
        first.mul_(keep)
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    expected = model(x)
    report = accelerate(model)
    assert report.swapped == ["0"] and "1" in report.kept_dense
    assert torch.allclose(model(x), expected, atol=1e-2, rtol=1e-2)
