"""Perplexity over non-overlapping windows: PPL = exp(mean token NLL)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens: seqlen - 1 per window
    windows: int


def window_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window: logits[t] predicts input_ids[t + 1]."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = input_ids[:, 1:]
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none")
    return nll.reshape(shift_labels.shape).sum(dim=1)


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module, windows: torch.Tensor, device: str | torch.device = "cpu", progress: bool = True
) -> PerplexityResult:
    """Perplexity of ``model`` on ``windows`` [nwin, seqlen], one window at a time.

    Every window is scored independently from position 0 (no context carried over), as
    in the Wikitext-2 protocol of SparseGPT and Wanda.
    """
    model.to(device)
    total = 0.0
    tokens = 0
    for index in tqdm(range(windows.shape[0]), desc="Perplexity", unit="window", disable=not progress):
        ids = windows[index : index + 1].to(device)
        logits = model(input_ids=ids, use_cache=False).logits
        total += float(window_nll_sum(logits, ids).sum())
        tokens += ids.shape[1] - 1
    nll = total / tokens
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=tokens, windows=int(windows.shape[0]))
