"""Duality gaps and KL for matrix games, on numpy arrays or torch tensors.

Notation (Munos et al. 2023, NLHF): ``q_π(y) = P(y ≻ π) = (P π)_y``.

* ``gap(P, π) = max_π' P(π' ≻ π) − min_π' P(π ≻ π') = 2·max_y q_π(y) − 1``:
  ≥ 0, and 0 exactly at an NE of the original game.
* ``regularized_gap(P, π, β, μ)``, the duality gap of the β-regularized game
  ``J_β(π, π') = P(π ≻ π') − β·KL(π‖μ) + β·KL(π'‖μ)``:
  ``2·[β·log Σ_y μ(y)·exp(q_π(y)/β) + β·KL(π‖μ)] − 1 = 2β·KL(π ‖ σ)`` with
  ``σ = softmax(log μ + q_π/β)``: ≥ 0, and 0 exactly at π*_β. It is computed
  in an equivalent form whose summands are each non-negative, so the absolute
  error stays near 1e-16 for every β (≥ −1e-15 for any probability vector).
* ``kl(p, q)``.

All functions take numpy arrays or torch tensors with optional leading batch
dims (``P [..., n, n]``, ``π [..., n]``, ``β`` scalar or ``[...]``) and return
the same kind: a python float / numpy array for numpy input, a tensor of
shape ``[...]`` for torch input (torch if any argument is a tensor). They are
evaluation measures, not losses: no attention was paid to autograd.

Derivation (the gap formulas, the stable form): docs/algorithms.md#duality-gaps
"""

from __future__ import annotations

import numpy as np
import torch


def gap(P, pi):
    """``2·max_y (P π)_y − 1`` over the last axis."""
    back, (P, pi) = _to_torch(P, pi)
    q = _payoff(P, pi)
    return back(2.0 * q.amax(dim=-1) - 1.0)


def regularized_gap(P, pi, beta, mu=None):
    """``2·[β·log Σ_y μ(y)·exp(q_π(y)/β) + β·KL(π‖μ)] − 1`` (μ uniform if None).

    Evaluated in the equivalent stable form of docs/algorithms.md#duality-gaps.
    """
    back, (P, pi, beta, mu) = _to_torch(P, pi, beta, mu)
    q = _payoff(P, pi)
    logits = q / beta.unsqueeze(-1)
    if mu is not None:
        logits = logits + torch.log(mu)  # −inf off supp μ
    log_sigma = torch.log_softmax(logits, dim=-1)
    sigma = torch.exp(log_sigma)
    near = (pi - sigma).abs() <= 0.5 * sigma
    safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    term_near = pi * torch.log1p((pi - sigma) / safe_sigma) - (pi - sigma)
    term_far = pi * (torch.log(pi) - log_sigma) - pi + sigma
    term = torch.where(near, term_near, term_far)
    term = torch.where(pi > 0, term, sigma)
    value = (pi * q).sum(dim=-1)
    return back(2.0 * beta * term.sum(dim=-1) + (2.0 * value - 1.0))


def kl(p, q):
    """``Σ p·log(p/q)`` over the last axis, with ``0·log 0 = 0`` (inf if q=0<p)."""
    back, (p, q) = _to_torch(p, q)
    p, q = torch.broadcast_tensors(p, q)
    near = (p - q).abs() <= 0.5 * q
    safe_q = torch.where(q > 0, q, torch.ones_like(q))
    log_near = torch.log1p((p - q) / safe_q)
    log_far = torch.log(p) - torch.log(q)
    term = p * torch.where(near, log_near, log_far)
    return back(torch.where(p > 0, term, torch.zeros_like(term)).sum(dim=-1))


def _payoff(P: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """``q = P π`` with broadcasting over leading dims."""
    if P.dim() == 2:  # one game, a batch of policies: a single GEMM, no expanded copies of P
        return pi @ P.T
    return (P @ pi.unsqueeze(-1)).squeeze(-1)


def _to_torch(*xs):
    """Convert to torch (float64 for numpy input); return a converter back.

    Torch input keeps its dtype and device. ``None`` passes through.
    """
    ref = next((x for x in xs if isinstance(x, torch.Tensor)), None)
    if ref is None:
        dtype, device = torch.float64, torch.device("cpu")
    else:
        dtype = ref.dtype if ref.is_floating_point() else torch.float64
        device = ref.device
    out = []
    for x in xs:
        if x is None:
            out.append(None)
        elif isinstance(x, torch.Tensor):
            out.append(x.to(dtype=dtype, device=device))
        else:
            out.append(torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device))
    return (_identity if ref is not None else _to_numpy), out


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _to_numpy(t: torch.Tensor):
    a = t.detach().cpu().numpy()
    return float(a) if a.ndim == 0 else a


def cyclic_triples(P) -> tuple[int, int]:
    """(cyclic, total) over the unordered triples {a, b, c} of the n items of P [n, n].

    A triple is cyclic when its strict majority relation (a ≻ b iff P[a, b] > ½) is a
    3-cycle, a ≻ b ≻ c ≻ a: no ranking of the three agrees with it. With B[a, b] =
    [P[a, b] > ½] (antisymmetric off ties), a cyclic triple holds exactly one directed
    3-cycle of B, which trace(B³) counts once per starting point, so
    cyclic = trace(B³) / 3. A triple with a tie (P = ½) is never cyclic.
    """
    B = (np.asarray(P, dtype=np.float64) > 0.5).astype(np.int64)
    np.fill_diagonal(B, 0)
    n = B.shape[0]
    return int(np.trace(B @ B @ B)) // 3, n * (n - 1) * (n - 2) // 6
