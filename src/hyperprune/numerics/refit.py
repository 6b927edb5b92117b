"""Refits of the kept weights for a fixed mask: pure tensor math, no I/O.

All minimize the layer's output error (w − w′)ᵀ(H + λI)(w − w′) per row, with w′ zero where
the mask prunes. SparseGPT's sequential OBS update (``sparsegpt_prune(keep_mask=...)``)
freezes each column once the scan has passed it; the least-squares refit here solves the
problem exactly, row by row, on that row's kept set S:

    (H + λI)_SS w′_S = ((H + λI) w)_S

The damping λ is a fraction of mean(diag H), as SparseGPT's percdamp; it pulls w′ toward
the original weights, which matters when d_in is large for the number of calibration tokens.

Two solvers give that exact solution. ``lstsq_refit`` factors one k × k system per row (about
d_out · k³/3 flops: 2·10¹⁴ for a 7B ``down``). ``masked_cg_refit`` runs Jacobi-preconditioned
conjugate gradient on all rows at once, x ← M ⊙ (x H̃) being one GEMM an iteration (2·d_out·d_in²
flops), and stops on a relative-residual tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class RefitResult:
    """A refit: the weight (zero where pruned), and what the solver used."""

    weight: torch.Tensor
    error: torch.Tensor  # per row, (w − w′)ᵀH(w − w′) on the undamped H given
    iterations: int | None = None  # CG iterations; None for a direct solve
    residual: float | None = None  # CG's final ‖r‖ / ‖b‖, over all rows


def masked_cg_refit(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, damp_fraction: float,
                    tol: float = 1e-3, max_iter: int = 100, start: torch.Tensor | None = None,
                    preconditioner: str = "inverse") -> RefitResult:
    """The exact least-squares refit by masked, preconditioned conjugate gradient.

    Every row solves (H̃ x)_S = (H̃ w)_S on its kept set S, H̃ = H + λI (dead inputs pinned, as
    ``lstsq_refit``); all rows advance together, so an iteration is one [d_out, d_in] × [d_in, d_in]
    GEMM. Rows sharing an input (q/k/v) can be stacked into one call. ``start``: a first guess (for
    example SparseGPT's OBS weights); the kept weights themselves otherwise. Stops when
    ‖r‖_F ≤ ``tol`` · ‖b‖_F or after ``max_iter`` iterations. The per-row error comes from the
    residual, with no further GEMM.

    ``preconditioner``: ``inverse`` applies (H̃⁻¹)_SS, the kept block of the full inverse (one d³
    factorization per input, then a second GEMM an iteration); it captures the massive channels
    that make real LLM Hessians ill-conditioned and needs 2-3× fewer iterations than ``jacobi``
    (diag H̃) on the embedded model's layers. Falls back to ``jacobi`` if H̃ will not factor.
    """
    W = weight.detach().float()
    H = damped_hessian(hessian, damp_fraction).to(W.device)
    M = keep.to(W.device, torch.bool).to(W.dtype)
    target = W @ H
    b = target * M
    x = (start.detach().float().to(W.device) if start is not None else W) * M
    r = b - (x @ H) * M
    precondition = _jacobi(H)
    if preconditioner == "inverse":
        factor, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            del factor
            precondition = lambda residual: (residual @ inverse) * M  # noqa: E731
    elif preconditioner != "jacobi":
        raise ValueError(f"unknown preconditioner {preconditioner!r}; choose inverse or jacobi")
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(dim=1)
    b_norm = float(b.norm())
    limit = tol * b_norm
    iterations = 0
    residual = float(r.norm())
    while residual > limit and iterations < max_iter:
        Ap = (p @ H) * M
        curvature = (p * Ap).sum(dim=1)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(torch.finfo(W.dtype).tiny), torch.zeros_like(rz))
        x.add_(alpha.unsqueeze(1) * p)
        r.sub_(alpha.unsqueeze(1) * Ap)
        iterations += 1
        residual = float(r.norm())
        z = precondition(r)
        rz_next = (r * z).sum(dim=1)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(W.dtype).tiny), torch.zeros_like(rz))
        p = z + beta.unsqueeze(1) * p
        rz = rz_next
    # (x − w)H̃(x − w)ᵀ = w·(wH̃) − x·b − x·r, since M⊙(xH̃) = b − r and x is zero off S; then the
    # damping's share, Σ_j D_j (x_j − w_j)² with D = diag(H̃ − H), is taken off for the H-scale error.
    damped_error = ((W * target).double().sum(1) - (x * b).double().sum(1) - (x * r).double().sum(1))
    extra = (H.diagonal() - hessian.detach().float().diagonal().to(W.device)).double()
    error = (damped_error - ((x - W).double().pow(2) * extra).sum(1)).clamp_min(0).float()
    out = x.to(weight.dtype) if weight.dtype != torch.float32 else x
    return RefitResult(out, error, iterations, residual / b_norm if b_norm > 0 else 0.0)


def _jacobi(H: torch.Tensor):
    inverse_diagonal = 1.0 / H.diagonal()
    return lambda residual: residual * inverse_diagonal


def exact_refit(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, damp_fraction: float,
                solver: str = "cg", tol: float = 1e-3, max_iter: int = 100,
                start: torch.Tensor | None = None, preconditioner: str = "inverse") -> RefitResult:
    """The exact least-squares refit by ``solver``: ``cg`` (:func:`masked_cg_refit`) or ``lstsq``
    (:func:`lstsq_refit`, one Cholesky per row: the exact reference)."""
    if solver == "cg":
        return masked_cg_refit(weight, hessian, keep, damp_fraction, tol, max_iter, start, preconditioner)
    if solver != "lstsq":
        raise ValueError(f"unknown exact refit solver {solver!r}; choose cg or lstsq")
    refit = lstsq_refit(weight, hessian, keep, damp_fraction)
    return RefitResult(refit, quadratic_output_error(weight, refit, hessian))


def stacked_exact_refit(weights: list[torch.Tensor], hessian: torch.Tensor, keeps: list[torch.Tensor],
                        damp_fraction: float, solver: str = "cg", tol: float = 1e-3, max_iter: int = 100,
                        starts: list[torch.Tensor] | None = None, preconditioner: str = "inverse") -> list[RefitResult]:
    """:func:`exact_refit` of several layers that read the same input (q/k/v, gate/up), as one
    problem: their rows are stacked, so CG's iteration is one GEMM for all of them. The tolerance
    then holds for the stack as a whole. Results in the order given."""
    if solver != "cg" or len(weights) == 1:  # the direct solve gains nothing from stacking
        starts = starts or [None] * len(weights)
        return [exact_refit(w, hessian, k, damp_fraction, solver, tol, max_iter, s, preconditioner)
                for w, k, s in zip(weights, keeps, starts)]
    stacked = masked_cg_refit(torch.cat([w.detach().float() for w in weights]), hessian, torch.cat(keeps), damp_fraction,
                              tol, max_iter, None if starts is None else torch.cat([s.float() for s in starts]),
                              preconditioner)
    sizes = [w.shape[0] for w in weights]
    return [RefitResult(weight.to(w.dtype), error, stacked.iterations, stacked.residual)
            for w, weight, error in zip(weights, stacked.weight.split(sizes), stacked.error.split(sizes))]
