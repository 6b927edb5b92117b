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

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    def from_args(cls, pattern: str | None, sparsity: float | None, pattern_name: str = "--pattern",
                  sparsity_name: str = "--sparsity") -> SparsityTarget:
        """``sparsity`` means unstructured; otherwise ``pattern`` (default 2:4). The names are how
        the caller spells the two (CLI flags, or API arguments) in the error."""
        if pattern is not None and sparsity is not None:
            raise ValueError(f"give either {pattern_name} (n:m) or {sparsity_name} (unstructured), not both")
        if sparsity is not None:
            return cls(sparsity=sparsity)
        return cls(pattern=pattern or DEFAULT_PATTERN)

    @property
    def fraction(self) -> float:
        return self.pattern.sparsity if self.pattern is not None else float(self.sparsity)

    def __str__(self) -> str:
        return str(self.pattern) if self.pattern is not None else f"unstructured-{self.sparsity:g}"


# Calibration windows on which each block's per-layer error is metered (an extra GEMM per layer
# and window): the engine's one cost beyond the two passes that the original SparseGPT and Wanda make.
DEFAULT_LAYER_ERROR_WINDOWS = 2

# Damping of the exact least-squares refit, as a fraction of mean(diag H); chosen on held-out
# windows by benchmarks/hyperprune_sweep.py (README, "Settings sweep").
DEFAULT_LSTSQ_DAMP = 0.1


class Options(BaseModel):
    """Base of every options class: frozen, and unknown fields are refused (a typo is an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class HessianOptions(Options):
    """How the input Hessian H = XXᵀ is damped and factored; shared by every method that runs
    SparseGPT's solver (sparsegpt, its prior in hyperprune and maskpro)."""

    percdamp: float = Field(0.01, gt=0, description="SparseGPT dampening, fraction of mean diag(H)")
    blocksize: int = Field(128, gt=0, description="SparseGPT lazy-update block size (columns updated together)")
    max_damp_retries: int = Field(4, ge=0, description="retries with 10x dampening when the Cholesky factorization fails")


class RefitOptions(Options):
    """How the exact least-squares refit of the kept weights is solved; shared by every method that
    runs one (sparsegpt with refit lstsq, hyperprune with refit, admm's final refit)."""

    method: Literal["cg", "lstsq", "obs"] = Field(
        "cg", description="cg: masked, preconditioned conjugate gradient over all rows at once (GEMM speed); lstsq: "
        "one Cholesky solve per row (the exact reference); obs: SparseGPT's sequential OBS update for the mask "
        "(approximate)"
    )
    tol: float = Field(2e-5, gt=0, lt=1, description="cg: stop when the relative residual ‖r‖/‖b‖ is below this")
    max_iter: int = Field(200, gt=0, description="cg: at most this many iterations")
    preconditioner: Literal["inverse", "jacobi"] = Field(
        "inverse", description="cg: inverse, the kept block of (H + λI)⁻¹ (one factorization per input, two GEMMs "
        "an iteration, 2-3× fewer iterations); jacobi, diag(H + λI) (one GEMM an iteration)")


class SparseGPTOptions(Options):
    refit: Literal["obs", "lstsq", "admm"] = Field(
        "obs", description="SparseGPT's weight update: obs, its own sequential update; lstsq, its mask then the exact "
        "least-squares refit (solved as --refit-method says); admm, its mask then ADMM's update (the admm method's "
        "defaults)"
    )
    lstsq_damp: float = Field(DEFAULT_LSTSQ_DAMP, gt=0, description="λ of the lstsq refit, fraction of mean diag(H)")


class ADMMOptions(Options):
    """ADMM pruning (Boža 2024): a mask chosen gradually from |W + U| while ADMM updates the weights."""

    iterations: int = Field(20, ge=0, description="ADMM iterations (one GEMM each; the authors' 20)")
    gradual_iterations: int = Field(15, ge=1, description="iterations over which the mask reaches its sparsity, "
                                    "then held (the authors' 15)")
    schedule: Literal["cubic", "linear"] = Field("cubic", description="sparsity over the gradual iterations: "
                                                 "cubic, s·(1 − (1 − t/T)³) as the authors; or linear")
    rho: float = Field(1.0, gt=0, description="ρ, the ADMM penalty, on inputs scaled to unit diagonal")
    damp: float = Field(0.1, gt=0, description="ρ₀, ridge toward the dense weights, fraction of the mean "
                        "(normalized) diagonal (the authors' 0.1)")
    final_refit: Literal["none", "lstsq"] = Field(
        "none", description="none: ADMM's (W + U)⊙M, as the authors; lstsq: then the exact least-squares refit "
        "on the final mask (as ALPS), solved as --refit-method says")
    refit_damp: float = Field(DEFAULT_LSTSQ_DAMP, gt=0, description="λ of the final refit, fraction of mean diag(H)")


class RIAOptions(Options):

    power: float = Field(0.5, gt=0, description="a in ‖X_j‖^a")
    permute: bool = Field(False, description="permute the MLP's intermediate channels before the n:m mask "
                          "(folded exactly into gate/up rows and down columns)")
    permute_rounds: int = Field(3, ge=0, description="rounds of linear-sum-assignment refinement of the permutation")


class LearnedFromPriorOptions(Options):
    """What the mask learners that start from a one-shot mask share."""

    prior: Literal["sparsegpt", "wanda", "magnitude"] = Field("sparsegpt", description="the one-shot mask the "
                                                              "learned mask starts from")


class MaskProOptions(LearnedFromPriorOptions):
    """MaskPro's settings, run layer-wise in this engine (the original trains end to end)."""

    steps: int = Field(50, ge=0, description="policy-gradient steps per layer")
    samples: int = Field(4, gt=0, description="masks sampled per step")
    lr: float = Field(0.5, gt=0, description="Adam learning rate of the mask logits")
    init_scale: float = Field(3.0, ge=0, description="logits start at this constant times the prior's keep-mask")
    baseline_decay: float = Field(0.9, ge=0, lt=1, description="moving average of the baseline, from the prior's loss")


class EndToEndOptions(Options):
    """What every method trained end to end on the whole model's LM loss shares."""


    steps: int = Field(100, ge=0, description="optimizer steps on the whole model")
    batch_size: int = Field(1, gt=0, description="calibration windows per step")
    max_memory_gib: float = Field(8.0, gt=0, description="refuse models whose learned state would need more")


class MaskLLMOptions(EndToEndOptions, LearnedFromPriorOptions):
    """MaskLLM's settings (small models only): end to end on the LM loss, weights frozen."""

    lr: float = Field(0.05, gt=0, description="Adam learning rate of the pattern logits")
    tau0: float = Field(1.0, gt=0, description="initial Gumbel-Softmax temperature")
    tau_final: float = Field(0.05, gt=0, description="final temperature (linear anneal)")
    logit_scale: float = Field(1.0, gt=0, description="κ: the logits are scaled by κ before the noise is added")
    logit_scale_final: float | None = Field(None, gt=0, description="κ at the last step, annealed linearly from "
                                            "logit_scale, sharpening the distribution as MaskLLM's 100 → 500 "
                                            "does; unset: κ stays constant")
    init_scale: float = Field(3.0, ge=0, description="prior: logit of a pattern = this × its overlap with the one-shot mask / n")


class ProxSparseOptions(EndToEndOptions):
    """ProxSparse's settings (small models only): end to end on the LM loss, weights trained
    under a regularizer that is zero exactly on n:m groups; the mask is read off at the end."""

    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the weights")
    lambda_sparse: float = Field(3.0, ge=0, description="λ1 of the n:m regularizer, ramped from 0 (its proximal step shrinks by λ1·lr per unit of gradient)")
    lambda_close: float = Field(1.0, ge=0, description="λ2 of ‖W − W0‖², relative to ‖W0‖²")


HYPERNET_FEATURES = ("weight", "wanda", "saliency", "hdiag", "hinv", "coupling", "delta", "hblock")


class HyperPruneOptions(Options):
    """HyperPrune's settings. Paper values are noted; where a default departs from the
    paper it was chosen by the recorded sweep in ``benchmarks/hyperprune_sweep.py``."""

    steps: int = Field(100, ge=0, description="training steps per block (paper: 200 or 2000)")
    objective: Literal["layer", "block", "two-stage"] = Field(
        "layer",
        description="layer: each linear's exact quadratic error tr(ΔW H ΔWᵀ); block: the paper's block-output "
        "reconstruction; two-stage: layer, then block for the last block_fraction of the steps",
    )
    block_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share of steps on the block objective (two-stage)")
    relaxation: Literal["exact", "expected", "gumbel"] = Field(
        "exact",
        description="exact: E_M of the hard-mask loss in closed form (paper Eq. 12; layer objective only, else E[M]); "
        "expected: the loss at E[M] = Σ softmax(logits/τ)·s (paper Thm. 1); gumbel: Gumbel-Softmax samples",
    )
    refresh_every: int = Field(
        25, ge=0, description="recompute the mask-dependent features (coupling, delta) at the current argmax every K steps; 0: never"
    )
    straight_through: bool = Field(False, description="hard argmax forward, relaxed backward")
    hidden_dim: int = Field(64, gt=0, description="hypernetwork width (paper: 256 or 512)")
    depth: int = Field(3, ge=2, description="linear layers in the hypernetwork (paper: 4)")
    features: tuple[str, ...] = Field(HYPERNET_FEATURES, description="per-weight context the hypernetwork sees")
    embed_dim: int = Field(64, gt=0, description="size of layer and component embeddings (paper: 64)")
    embed_init: Literal["onehot", "gaussian"] = Field("onehot", description="paper app. D.4 recommends one-hot + noise")
    layer_embedding: bool = Field(True, description="learned layer embeddings (off: ablation)")
    component_embedding: bool = Field(True, description="learned component embeddings (off: ablation)")
    lr: float = Field(5e-3, gt=0, description="AdamW learning rate of the hypernetwork (paper: 5e-4)")
    embed_lr: float = Field(1e-4, gt=0, description="learning rate of the embeddings (smaller, as in the paper)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (paper: 0.1)")
    tau0: float = Field(1.0, gt=0, description="initial Gumbel-Softmax temperature (paper: 1.0)")
    tau_final: float = Field(0.05, gt=0, description="final temperature τ_f (paper: 0.5)")
    tau_decay: float | None = Field(
        None, ge=0, description="η in τ(t) = max(τ_f, τ0·exp(−ηt)), t the step in the block; None: reach τ_f at 3/4 of the steps"
    )
    prior: Literal["sparsegpt", "wanda", "admm", "none"] = Field(
        "sparsegpt", description="mask prior on the logits: a one-shot mask (admm: Boža 2024's, at the admm "
        "method's defaults)")
    values: Literal["dense", "prior-update", "auto"] = Field(
        "dense", description="the weights the mask multiplies while it is learned and in the output: dense, W itself "
        "(the paper); prior-update, the prior's updated weights (admm: its W + U at every position; sparsegpt: its "
        "OBS weights where it keeps, W elsewhere), so that patterns are priced at compensated weights (issue 27, "
        "route A); auto (hyperprune+refit's default), prior-update when the prior updates weights (sparsegpt, admm), "
        "else dense. Reports record what auto became")
    selection_windows: int = Field(
        0, ge=0, description="with refit: calibration windows held out of everything the masks are learned from; the "
        "row-by-row choice between the prior's and the learned mask is made on them, and the chosen mask is then "
        "refit on all windows (0: choose on the calibration windows, as before)")
    hypernet: str | None = Field(None, description="start from this saved hypernetwork (--save-hypernet); with 0 steps "
                                 "it is applied as it is")
    save_hypernet: str | None = Field(None, description="write the trained hypernetwork, its embeddings and options "
                                      "here (safetensors) when the run ends")
    end_to_end_steps: int = Field(
        0, ge=0, description="route B (issue 27): after the layer-wise pass (frozen weights), fine-tune the network "
        "and its embeddings end to end on KL(dense ‖ pruned) for at most this many steps, then prune with its masks "
        "(with refit: each layer refit to them); 0: off")
    end_to_end_lr: float = Field(1e-4, gt=0, description="Adam's learning rate in the end-to-end phase")
    end_to_end_tau: float = Field(0.5, gt=0, description="temperature of the straight-through relaxation end to end")
    end_to_end_batch_size: int = Field(1, gt=0, description="calibration windows per end-to-end step")
    end_to_end_holdout: int = Field(
        2, gt=0, description="the last calibration windows, held out of the layer-wise pass and the end-to-end "
        "training: early stopping's data")
    end_to_end_eval_every: int = Field(4, gt=0, description="end-to-end steps between held-out checks")
    end_to_end_patience: int = Field(2, gt=0, description="held-out checks without a gain before the phase stops")
    end_to_end_group_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="share of each layer's groups in the network's backward per step (unbiased)")
    end_to_end_gradient_checkpointing: bool = Field(
        True, description="recompute each decoder block in the end-to-end backward instead of keeping its activations")
    prior_gamma: float = Field(0.3, ge=0, description="γ0, the prior's weight on the logits (paper: 1e-5)")
    prior_decay: float = Field(2.0, ge=0, description="α in γ = γ0·exp(−α·t/T) over the block's steps")
    prior_beta: float = Field(10.0, gt=0, description="β, sharpness of the prior's softmax over patterns")
    outlier: bool = Field(True, description="the feature-outlier term (off: ablation)")
    lambda_outlier: float = Field(
        0.0, ge=0, description="λ1, weight of the (normalized) feature-outlier term; R_outlier = ½Σ Ŵ²_ij H_jj is "
        "Wanda's criterion, and the sweep found no λ1 > 0 that helps (0: not computed)"
    )
    continual: bool = Field(True, description="the continual-pruning term (off: ablation)")
    lambda_continual: float = Field(0.1, ge=0, description="λ2, weight of the continual-pruning term")
    continual_groups: int = Field(50, gt=0, description="weight groups cached per finished layer (paper: ~50)")
    row_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="rows sampled per step on the layer objective (unbiased; 1 = all rows)"
    )
    batch_size: int = Field(2, gt=0, description="calibration samples per step on the block objective")
    refit: bool = Field(False, description="after the mask is chosen, refit the kept weights (beyond the paper)")
    refit_method: Literal["obs", "lstsq", "cg"] | None = Field(
        None, description="overrides the shared --refit-method for hyperprune only (kept for older scripts)"
    )
    refit_damp: float = Field(DEFAULT_LSTSQ_DAMP, gt=0, description="λ of the lstsq refit, fraction of mean(diag H)")
    refit_rounds: int = Field(
        0, ge=0, description="refit-aware masks: after training, R times refit, recompute the problem at the refit "
        "weights and train round_steps more steps (with refit)"
    )
    round_steps: int = Field(25, ge=1, description="training steps in each refit-aware round")

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_values(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("values") == "auto":
            updating = data.get("prior", "sparsegpt") in ("sparsegpt", "admm")
            data = {**data, "values": "prior-update" if updating else "dense"}
        return data

    @model_validator(mode="after")
    def _check_route_a(self) -> "HyperPruneOptions":
        if self.values == "prior-update" and self.prior not in ("sparsegpt", "admm"):
            raise ValueError(f"values 'prior-update' needs an updating prior, not '{self.prior}': give prior "
                             "sparsegpt or admm, or values dense or auto")
        if self.end_to_end_steps and self.values != "dense" and not self.refit:
            raise ValueError("without a refit the end-to-end phase applies its masks to the dense weights: give "
                             "values 'dense' with end_to_end_steps, or refit")
        if self.end_to_end_steps and (self.selection_windows or self.refit_rounds):
            raise ValueError("the end-to-end phase fixes the masks before the layer loop: it takes neither "
                             "selection_windows nor refit_rounds")
        return self

    @field_validator("features", mode="before")
    @classmethod
    def _parse_features(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        unknown = [f for f in value if f not in HYPERNET_FEATURES]
        if unknown:
            raise ValueError(f"unknown hypernetwork feature(s) {unknown}; choose from {', '.join(HYPERNET_FEATURES)}")
        if "weight" not in value:
            raise ValueError("hypernetwork features must include 'weight'")
        return tuple(value)


class ReconstructOptions(Options):
    """Block-wise reconstruction after any method (``--reconstruct-steps``): the block's kept
    weights are trained with the mask fixed, on the block's output error, with early stopping
    on held-out calibration windows (the "pruning paradox", arXiv 2406.15524: it overfits)."""

    steps: int = Field(0, ge=0, description="Adam steps per block; 0: off")
    holdout: int = Field(4, ge=1, description="calibration windows held out of training, for early stopping")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the kept weights")
    batch_size: int = Field(4, gt=0, description="calibration windows per step")
    eval_every: int = Field(10, gt=0, description="steps between held-out evaluations")
    patience: int = Field(3, ge=1, description="stop after this many evaluations without a held-out improvement")


class DistillOptions(Options):
    """Masked end-to-end distillation of a pruned model (``hyperprune distill``): the student's
    kept linear weights train, masks fixed, on KL to the dense teacher's next-token distribution."""

    steps: int = Field(50, gt=0, description="optimizer steps")
    lr: float = Field(2e-5, gt=0, description="Adam learning rate of the kept weights")
    batch_size: int = Field(2, gt=0, description="windows per step")
    seqlen: int | None = Field(None, gt=0, description="tokens per window (default: the pruning run's)")
    nsamples: int = Field(64, gt=1, description="distillation windows, including the held-out ones")
    holdout: int = Field(4, ge=1, description="windows held out for early stopping")
    eval_every: int = Field(10, gt=0, description="steps between held-out checks")
    patience: int = Field(3, ge=1, description="held-out checks without improvement before stopping")
    hidden_weight: float = Field(0.0, ge=0, description="weight of the final hidden-state MSE added to the KL")
    calib: str | None = Field(None, description="text source (default: the pruning run's calibration text)")
    seed: int = Field(DEFAULT_SEED, description="window sampling seed")
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass")

    @model_validator(mode="after")
    def _holdout_leaves_training(self) -> DistillOptions:
        if self.holdout >= self.nsamples:
            raise ValueError(f"holdout {self.holdout} leaves no training windows of nsamples {self.nsamples}")
        return self


# Keys under which PruneConfig once took each method's options directly (PruneConfig(hyperprune=...));
# still accepted, and moved into ``options``.
LEGACY_OPTION_KEYS = ("sparsegpt", "hyperprune", "ria", "maskpro", "maskllm", "proxsparse")


class EngineSettings(Options):
    """What the layer-wise engine itself needs; it never reads a method's options."""

    target: SparsityTarget = Field(default_factory=lambda: SparsityTarget(pattern=DEFAULT_PATTERN))
    seed: int = DEFAULT_SEED
    offload_activations: bool = True
    offload_to_disk: bool = False
    on_nan: Literal["error", "skip"] = "error"
    fit_target: Literal["pruned", "dense"] = "pruned"
    fit_target_damp: float = Field(DEFAULT_LSTSQ_DAMP, gt=0)
    reconstruct: ReconstructOptions = Field(default_factory=ReconstructOptions)
    layer_error_windows: int = Field(DEFAULT_LAYER_ERROR_WINDOWS, ge=0)


class PruneConfig(BaseModel):
    """Everything that determines a pruning run. Recorded in every report (with the options of the
    method that ran only). Unknown fields are refused; ``target`` may be given as ``"2:4"`` or as a
    fraction (unstructured), or as ``pattern=`` / ``sparsity=``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
    bos_per_window: Literal["auto", "on", "off"] = Field(
        "auto", description="a BOS at the start of every calibration and evaluation window; auto: when the tokenizer adds one"
    )
    hessian: HessianOptions = Field(default_factory=HessianOptions)
    refit: RefitOptions = Field(default_factory=RefitOptions)
    # Each method's own options, by the name of the method that declares them (a preset such as
    # hyperprune+refit uses its base method's): validated by the method's declared options class.
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    fit_target: Literal["pruned", "dense"] = Field(
        "pruned",
        description="what a block is fitted to: pruned: the dense block's output on the pruned model's "
        "inputs; dense: the dense model's own hidden state at that depth, which also corrects the error carried in",
    )
    fit_target_damp: float = Field(
        DEFAULT_LSTSQ_DAMP, gt=0, description="ridge λ toward the dense weights of the fit_target='dense' weight fit, "
        "fraction of mean diag(H)"
    )
    reconstruct: ReconstructOptions = Field(default_factory=ReconstructOptions)
    layer_error_windows: int = Field(
        DEFAULT_LAYER_ERROR_WINDOWS, ge=0, description="the report's per-layer error ‖ΔW x‖²/‖W x‖² is measured on the "
        "first N calibration windows of each block (0: all); each metered window costs one more GEMM per layer"
    )

    @model_validator(mode="before")
    @classmethod
    def _friendly_inputs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        pattern, sparsity = data.pop("pattern", None), data.pop("sparsity", None)
        if pattern is not None or sparsity is not None:
            if "target" in data:
                raise ValueError("give target, or pattern/sparsity, not both")
            data["target"] = SparsityTarget.from_args(pattern, sparsity, "pattern", "sparsity")
        target = data.get("target")
        if isinstance(target, str):
            data["target"] = SparsityTarget(pattern=target)
        elif isinstance(target, (int, float)) and not isinstance(target, bool):
            data["target"] = SparsityTarget(sparsity=float(target))
        options = {key: dict(value) for key, value in (data.get("options") or {}).items()}
        for key in LEGACY_OPTION_KEYS:
            if key in data:
                value = data.pop(key)
                given = value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else dict(value)
                if key == "sparsegpt":  # the Hessian settings moved to their own shared options
                    moved = {f: given.pop(f) for f in list(given) if f in HessianOptions.model_fields}
                    if moved:
                        data["hessian"] = {**_as_dict(data.get("hessian")), **moved}
                options[key] = {**options.get(key, {}), **given}
        if options:
            data["options"] = options
        return data

    @model_validator(mode="after")
    def _holdout_leaves_training(self) -> PruneConfig:
        if self.reconstruct.steps > 0 and self.reconstruct.holdout >= self.nsamples:
            raise ValueError(
                f"reconstruct.holdout {self.reconstruct.holdout} leaves no training windows of nsamples "
                f"{self.nsamples}; hold out fewer or calibrate on more"
            )
        return self

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(target=self.target, seed=self.seed, offload_activations=self.offload_activations,
                              offload_to_disk=self.offload_to_disk, on_nan=self.on_nan, fit_target=self.fit_target,
                              fit_target_damp=self.fit_target_damp, reconstruct=self.reconstruct,
                              layer_error_windows=self.layer_error_windows)

    def with_method(self, method: str) -> PruneConfig:
        """The same run settings for another method (its options, if any, come along)."""
        return self.model_copy(update={"method": method})

    def with_options(self, key: str, **changes: Any) -> PruneConfig:
        """A copy with ``options[key]`` (a method's options, by the method's name) updated."""
        return PruneConfig.model_validate({**self.model_dump(), "options": {**self.options, key: {**self.options.get(key, {}), **changes}}})


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else dict(value)


class ZeroShotOptions(Options):
    """Zero-shot accuracy through lm-eval (``--tasks``): which tasks, on how many documents."""

    tasks: tuple[str, ...] = Field(description="packaged names, the group zeroshot7, lm-eval:NAME, or FILE.jsonl")
    limit: int | None = Field(None, gt=0, description="the first N documents of each task; None: all")
    batch_size: int = Field(8, gt=0, description="requests per forward pass")
    field_map: dict[str, str] = Field(default_factory=dict, description="JSONL tasks: our field -> the file's field")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = value.split(",")
        items = tuple(s.strip() for s in value if s.strip())
        if not items:
            raise ValueError("tasks is empty; give for example zeroshot7")
        return items


def first_validation_error(exc: ValueError) -> str:
    """One line from a pydantic error: where, and what is wrong."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors()[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "__root__")
    msg = str(first.get("msg", exc)).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown option; check the spelling"
    return f"{where}: {msg}" if where else msg
