"""Typed, validated configuration. Every default lives here, and only here.

Strings such as ``"2:4"`` are parsed once, at construction; later code works with
:class:`NMPattern` and never re-parses them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_METHOD = "sparsegpt"
DEFAULT_PATTERN = "2:4"
# Calibration and evaluation default to different texts, as C4 and Wikitext-2 do in
# the paper: mixed-genre prose to calibrate, long-form speeches to evaluate.
DEFAULT_CALIB = "brown"
DEFAULT_EVAL = "sotu"
DEFAULT_NSAMPLES = 128  # Wanda / SparseGPT protocol
MAX_DEFAULT_SEQLEN = 2048  # --seqlen defaults to the model context, capped here
DEFAULT_SEED = 0

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class NMPattern(BaseModel):
    """n:m semi-structured sparsity: at most ``n`` non-zeros in every ``m`` consecutive
    weights along the input dimension (NVIDIA's convention: 2:4 keeps 2 of 4)."""

    model_config = ConfigDict(frozen=True)

    n: int
    m: int

    @model_validator(mode="after")
    def _check(self) -> NMPattern:
        if not 0 < self.n < self.m:
            raise ValueError(f"pattern {self.n}:{self.m} needs 0 < n < m (for example 2:4, 1:4, 4:8)")
        return self

    @classmethod
    def parse(cls, text: str | NMPattern) -> NMPattern:
        if isinstance(text, NMPattern):
            return text
        match = _PATTERN_RE.match(str(text))
        if not match:
            raise ValueError(f"pattern '{text}' is not of the form n:m (for example 2:4, 1:4, 4:8)")
        return cls(n=int(match.group(1)), m=int(match.group(2)))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


class SparsityTarget(BaseModel):
    """What a method must reach: an n:m pattern, or an unstructured fraction of zeros."""

    model_config = ConfigDict(frozen=True)

    pattern: NMPattern | None = None
    sparsity: float | None = None

    @field_validator("pattern", mode="before")
    @classmethod
    def _parse_pattern(cls, value: Any) -> Any:
        if value is None or isinstance(value, (NMPattern, dict)):
            return value
        return NMPattern.parse(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> SparsityTarget:
        if (self.pattern is None) == (self.sparsity is None):
            raise ValueError("give either an n:m pattern or an unstructured sparsity, not both")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity {self.sparsity} must be in [0, 1)")
        return self

    @classmethod
    def from_args(cls, pattern: str | None, sparsity: float | None) -> SparsityTarget:
        """CLI rule: ``--sparsity`` means unstructured; otherwise ``--pattern`` (default 2:4)."""
        if pattern is not None and sparsity is not None:
            raise ValueError("give either --pattern (n:m) or --sparsity (unstructured), not both")
        if sparsity is not None:
            return cls(sparsity=sparsity)
        return cls(pattern=pattern or DEFAULT_PATTERN)

    @property
    def fraction(self) -> float:
        return self.pattern.sparsity if self.pattern is not None else float(self.sparsity)

    def __str__(self) -> str:
        return str(self.pattern) if self.pattern is not None else f"unstructured-{self.sparsity:g}"


class SparseGPTOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    percdamp: float = Field(0.01, gt=0, description="dampening as a fraction of mean(diag H)")
    blocksize: int = Field(128, gt=0, description="columns updated lazily together")
    max_damp_retries: int = Field(4, ge=0, description="retries with 10x dampening on Cholesky failure")


class PruneConfig(BaseModel):
    """Everything that determines a pruning run. Recorded in full in every report."""

    model_config = ConfigDict(frozen=True)

    model: str = DEFAULT_MODEL
    method: str = DEFAULT_METHOD
    target: SparsityTarget = Field(default_factory=lambda: SparsityTarget(pattern=DEFAULT_PATTERN))
    calib: str = DEFAULT_CALIB
    nsamples: int = Field(DEFAULT_NSAMPLES, gt=0)
    seqlen: int | None = Field(None, gt=0, description="None: model context, capped at 2048")
    seed: int = DEFAULT_SEED
    device: str | None = Field(None, description="None: cuda if available, else cpu")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    offload_activations: bool = Field(True, description="keep calibration activations on the CPU")
    offload_to_disk: bool = Field(False, description="keep calibration activations in memory-mapped files")
    stream: bool | None = Field(
        None, description="stream blocks from safetensors shards; None: when the model is a local safetensors checkpoint"
    )
    on_nan: Literal["error", "skip"] = Field("error", description="on NaN/Inf: stop, or keep that block dense")
    sparsegpt: SparseGPTOptions = Field(default_factory=SparseGPTOptions)
