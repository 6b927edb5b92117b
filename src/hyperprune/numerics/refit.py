"""Refits of the kept weights for a fixed mask: pure tensor math, no I/O.

Both minimize the layer's output error (w − w′)ᵀ(H + λI)(w − w′) per row, with w′ zero where
the mask prunes. SparseGPT's sequential OBS update (``sparsegpt_prune(keep_mask=...)``)
freezes each column once the scan has passed it; the least-squares refit here solves the
problem exactly, row by row, on that row's kept set S:

    (H + λI)_SS w′_S = ((H + λI) w)_S

The damping λ is a fraction of mean(diag H), as SparseGPT's percdamp; it pulls w′ toward
the original weights, which matters when d_in is large for the number of calibration tokens.
"""

from __future__ import annotations

import torch

from hyperprune.numerics.least_squares import damped_hessian

# H_SS systems gathered at a time. 16 MB rather than 256 MB: the batched Cholesky is no slower
# on small batches, and the gathered systems then stay in cache (30% faster on one CPU thread).
_SOLVE_BYTES = 1 << 24


def lstsq_refit(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, damp_fraction: float) -> torch.Tensor:
    """The exact least-squares refit of every row's kept weights, batched over rows.

    ``weight`` [d_out, d_in], ``hessian`` H = 2XXᵀ/n [d_in, d_in], ``keep`` [d_out, d_in] bool.
    Rows may keep different numbers of weights. Returns the refit weight (float32), zero where
    ``keep`` is False.
    """
    W = weight.detach().float()
    H = damped_hessian(hessian, damp_fraction).to(W.device)
    keep = keep.to(W.device, torch.bool)
    rows, cols = W.shape
    target = W @ H  # ((H + λI) w)_j for every row and column
    out = torch.zeros_like(W)
    kept_per_row = keep.sum(dim=1)
    for count in kept_per_row.unique().tolist():
        if count == 0:
            continue
        which = torch.nonzero(kept_per_row == count).squeeze(1)
        chunk = max(1, _SOLVE_BYTES // (count * count * 4))
        for start in range(0, len(which), chunk):
            rows_now = which[start : start + chunk]
            # Column indices of each row's kept set, ascending: [r, k].
            index = torch.nonzero(keep[rows_now])[:, 1].view(len(rows_now), count)
            system = H[index.unsqueeze(2), index.unsqueeze(1)]  # [r, k, k]
            rhs = torch.gather(target[rows_now], 1, index).unsqueeze(2)
            factor, info = torch.linalg.cholesky_ex(system)
            if bool((info != 0).any()):  # not positive definite: fall back to a general solve
                solution = torch.linalg.lstsq(system, rhs).solution
            else:
                solution = torch.cholesky_solve(rhs, factor)
            out[rows_now.unsqueeze(1), index] = solution.squeeze(2)
    return out.to(weight.dtype) if weight.dtype != torch.float32 else out


def quadratic_output_error(weight: torch.Tensor, refit: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per row, (w − w′)ᵀH(w − w′): the squared output error (H scale) of replacing w by w′."""
    delta = weight.float() - refit.float()
    return ((delta @ hessian.float()) * delta).sum(dim=1)
