"""Input-channel permutation for n:m masks (RIA's channel permutation, Zhang et al., ICLR 2024, Sec. 4).

An n:m mask keeps the n best of every m *consecutive* input channels, so which channels share a
group decides how much score survives. Reordering the channels before the mask is chosen can
keep more. The search here is RIA's two steps:

1. balanced allocation: channels sorted by their total score are dealt to the groups in a
   snake order (0..K−1, K−1..0, ...), so that important channels do not crowd one group;
2. refinement by linear sum assignment: take the channel at one position out of every group,
   and put the K channels back, one per group, where the kept score is largest (Hungarian
   algorithm); repeat over the positions for a few rounds while it improves.

All functions are pure tensor math on a score matrix [rows, cols]; applying a permutation to a
model (and where that is exact) is the caller's business.
"""

from __future__ import annotations

import torch


def kept_score(scores: torch.Tensor, n: int, m: int) -> float:
    """Σ over rows and groups of the n largest scores of each group of m consecutive columns."""
    rows, cols = scores.shape
    grouped = scores.float().reshape(rows, cols // m, m)
    return float(grouped.topk(n, dim=2).values.sum())


def balanced_allocation(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Step 1: a permutation dealing channels, by descending column total, to the groups in snake order."""
    cols = scores.shape[1]
    groups = cols // m
    order = torch.argsort(scores.float().sum(dim=0), descending=True)
    slots = torch.empty(cols, dtype=torch.long)
    for position in range(m):
        ranks = order[position * groups : (position + 1) * groups]
        targets = torch.arange(groups) if position % 2 == 0 else torch.arange(groups - 1, -1, -1)
        slots[targets * m + position] = ranks
    return slots


def _placement_gain(scores: torch.Tensor, remaining: torch.Tensor, candidates: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """gain[i, j]: kept score of group j (its other m−1 channels ``remaining[j]``) with channel
    ``candidates[i]`` added. With r the group's sorted scores, top-n(r ∪ x) = top-(n−1)(r) + max(x, r_n)."""
    rest = scores[:, remaining].float()  # [rows, groups, m-1]
    top = rest.topk(n, dim=2).values
    base = top[..., : n - 1].sum(dim=(0, 2))  # [groups]
    threshold = top[..., n - 1]  # [rows, groups]: the n-th largest, which a newcomer must beat
    incoming = scores[:, candidates].float()  # [rows, K]
    gain = torch.empty(candidates.numel(), remaining.shape[0])
    for start in range(0, candidates.numel(), chunk):
        x = incoming[:, start : start + chunk]
        gain[start : start + chunk] = torch.maximum(x.unsqueeze(2), threshold.unsqueeze(1)).sum(dim=0)
    return gain + base.unsqueeze(0)


def refine_allocation(scores: torch.Tensor, perm: torch.Tensor, n: int, m: int, rounds: int, chunk: int = 64) -> torch.Tensor:
    """Step 2: improve ``perm`` by optimal reassignment of one position of every group at a time."""
    from scipy.optimize import linear_sum_assignment  # scipy loads in ~0.5 s: only when permuting

    if n >= m or rounds <= 0:
        return perm
    groups = scores.shape[1] // m
    slots = perm.clone().reshape(groups, m)
    best = kept_score(scores[:, slots.reshape(-1)], n, m)
    for _ in range(rounds):
        improved = False
        for position in range(m):
            keep = [p for p in range(m) if p != position]
            candidates = slots[:, position]
            gain = _placement_gain(scores, slots[:, keep], candidates, n, chunk)
            rows, cols = linear_sum_assignment(gain.double().numpy(), maximize=True)
            trial = slots.clone()
            trial[torch.as_tensor(cols), position] = candidates[torch.as_tensor(rows)]
            score = kept_score(scores[:, trial.reshape(-1)], n, m)
            if score > best + 1e-9 * abs(best):
                slots, best, improved = trial, score, True
        if not improved:
            break
    return slots.reshape(-1)


def nm_channel_permutation(scores: torch.Tensor, n: int, m: int, rounds: int = 3) -> torch.Tensor:
    """A permutation ``perm`` of the columns such that ``scores[:, perm]`` keeps at least as much
    score under an n:m mask as the identity (the identity is kept when the search does worse)."""
    scores = scores.detach().float().cpu()
    cols = scores.shape[1]
    if cols % m:
        raise ValueError(f"{cols} columns are not a multiple of m={m}")
    identity = torch.arange(cols)
    perm = refine_allocation(scores, balanced_allocation(scores, m), n, m, rounds)
    return perm if kept_score(scores[:, perm], n, m) > kept_score(scores, n, m) else identity
