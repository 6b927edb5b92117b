"""MaskLLM (Fang et al., NeurIPS 2024), for small models: a learnable categorical distribution
over the C(m, n) patterns of every group, trained end to end on the LM loss with the weights
frozen. Each step draws a soft mask by Gumbel-Softmax over the patterns (temperature annealed
linearly from τ0 to τ_f; logits scaled by κ, constant or annealed linearly too); the logits start
from a one-shot mask (SparseGPT's by default): a pattern's logit is ``init_scale`` × its overlap
with that mask / n. The final mask is each group's most likely pattern.

It is the costly upper reference for learned masks: the logits are C(m, n) floats per group
(6 per 4 weights at 2:4), held with their gradient, Adam's two moments and the Gumbel draw, and
every step is a forward and backward pass of the whole model.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from hyperprune.numerics.end_to_end import check_mask_memory, train_end_to_end
from hyperprune.masks import nm_patterns
from hyperprune.config import MaskLLMOptions
from hyperprune.methods.base import WholeModelPass, register_method
from hyperprune.methods.whole_model import WholeModelMasks
from hyperprune.models.architectures import prunable_weight_names

_MASK_STATE_COPIES = 5  # logits, gradient, Adam's two moments, the Gumbel draw


def logits_from_prior(prior: torch.Tensor, patterns: torch.Tensor, init_scale: float) -> torch.Tensor:
    """[groups, C]: ``init_scale`` × (overlap of each pattern with the prior's group) / n."""
    m, n = patterns.shape[1], int(patterns[0].sum())
    return init_scale * (prior.reshape(-1, m).float() @ patterns.T.float()) / n


def linear_anneal(start: float, final: float, step: int, steps: int) -> float:
    """``start`` at step 0, ``final`` at the last of ``steps`` steps, linear in between (τ and κ)."""
    return start + (final - start) * step / max(1, steps - 1)


def gumbel_noise(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(shape, generator=generator).clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def soft_pattern_mask(logits: torch.Tensor, noise: torch.Tensor, tau: float, logit_scale: float,
                      patterns: torch.Tensor) -> torch.Tensor:
    """[groups, m]: Σ_c softmax((κ·logits + g)/τ)_c · s_c, the Gumbel-Softmax mixture of patterns."""
    return torch.softmax((logit_scale * logits + noise) / tau, dim=1) @ patterns


def most_likely_patterns(logits: torch.Tensor, patterns: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The hard mask of each group's most likely pattern (the read-off), in the weight's shape."""
    return patterns[logits.detach().argmax(dim=1)].bool().reshape(shape)


def prior_logits(prior: dict[str, torch.Tensor], init_scale: float, device, names: list[str],
                 patterns: torch.Tensor) -> dict[str, torch.Tensor]:
    """MaskLLM's starting point: trainable logits for every named weight, from the one-shot prior's
    masks (``prior``, by weight name; consumed)."""
    return {name: logits_from_prior(prior.pop(name).to(device), patterns, init_scale).requires_grad_(True)
            for name in names}


def soft_masked_weights(logits: dict[str, torch.Tensor], params: dict[str, torch.Tensor], patterns: torch.Tensor,
                        tau: float, kappa: float, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Each weight times a fresh Gumbel-Softmax soft mask: what the model uses for one training step."""
    out = {}
    for name, group_logits in logits.items():
        noise = gumbel_noise(group_logits.shape, generator).to(device)
        soft = soft_pattern_mask(group_logits, noise, tau, kappa, patterns)
        weight = params[name].detach()
        out[name] = weight * soft.reshape(weight.shape).to(weight.dtype)
    return out


MaskSnapshot = Callable[[int, Callable[[], dict[str, torch.Tensor]]], None]


@register_method("maskllm", options=MaskLLMOptions,
                 summary="MaskLLM (Fang et al. 2024; end to end, small models): Gumbel-Softmax over n:m patterns")
class MaskLLM(WholeModelMasks):
    supports_unstructured = False
    # Called with (steps done, read-off) before training and after every step, where read-off()
    # gives the masks training would return if it stopped there: how a steps-vs-PPL curve is
    # measured in one run (benchmarks/maskllm_curve.py). None in normal use.
    on_step: MaskSnapshot | None = None

    uses_hessian = True  # through its one-shot prior (sparsegpt by default)

    def compute_masks(self, run: WholeModelPass) -> dict[str, torch.Tensor]:
        model, layout, calib_ids, device, progress = run.model, run.layout, run.calib_ids, run.device, run.progress
        options, pattern = self.options, self.config.target.pattern
        names = prunable_weight_names(model, layout)
        params = dict(model.named_parameters())
        check_mask_memory("maskllm", sum(params[name].numel() for name in names), pattern.m,
                          math.comb(pattern.m, pattern.n), _MASK_STATE_COPIES, options.max_memory_gib,
                          f"{math.comb(pattern.m, pattern.n)} float32 logits per group of {pattern.m} weights")
        patterns = nm_patterns(pattern.n, pattern.m).to(device)
        logits = prior_logits(run.one_shot_masks(options.prior), options.init_scale, device, names, patterns)
        generator = torch.Generator().manual_seed(self.config.seed)
        kappa_final = options.logit_scale if options.logit_scale_final is None else options.logit_scale_final

        def read_off() -> dict[str, torch.Tensor]:
            return {name: most_likely_patterns(logits[name], patterns, params[name].shape).cpu() for name in names}

        def after_step(step: int) -> None:
            if self.on_step is not None:
                self.on_step(step + 1, read_off)

        def weights_for_step(step: int) -> dict[str, torch.Tensor]:
            tau = linear_anneal(options.tau0, options.tau_final, step, options.steps)
            kappa = linear_anneal(options.logit_scale, kappa_final, step, options.steps)
            return soft_masked_weights(logits, params, patterns, tau, kappa, generator, device)

        if self.on_step is not None:
            self.on_step(0, read_off)
        report = train_end_to_end(model, list(logits.values()), weights_for_step, calib_ids, options.steps, options.lr,
                                  options.batch_size, self.config.seed, device, after_step=after_step,
                                  progress=progress, desc="MaskLLM")
        self.whole_model_info = {"steps": report.steps, "tokens": report.tokens, "seconds": report.seconds,
                                 "first_loss": report.losses[0] if report.losses else None,
                                 "last_loss": report.losses[-1] if report.losses else None}
        return read_off()
