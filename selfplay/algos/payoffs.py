"""What the tabular runner measures of a policy: its payoff vector q_π = P π (exact or
from sampled preference queries), the geometric mixtures Nash-MD plays against, and the
local Lipschitz estimate L̂_t behind the adaptive step sizes (base.py)."""

from __future__ import annotations

import torch

from selfplay.algos.base import ADAPT_FLOOR, ADAPT_FORGET, ADAPT_GROW, LIPSCHITZ
from selfplay.algos.plan import Mixture


class Payoffs:
    """q_π = P π, exact or estimated from sampled preference queries.

    P is [B, n, n] (one game per row of π: a batched GEMV) or [n, n] (one game,
    B policies stacked [B, n]: Q = Π Pᵀ, a single GEMM; the hyperparameter sweep).
    """

    def __init__(self, P: torch.Tensor, queries: int | None, generator: torch.Generator):
        self.P, self.queries, self.gen = P, queries, generator
        self.calls = 0

    def __call__(self, logp: torch.Tensor, pi: torch.Tensor | None = None) -> torch.Tensor:
        """q for the policies log π [B, n] (π = exp(log π) may be passed if known)."""
        self.calls += 1
        pi = logp.exp() if pi is None else pi
        if self.queries is None:
            if self.P.dim() == 2:
                return pi @ self.P.mT
            return torch.bmm(self.P, pi.unsqueeze(-1)).squeeze(-1)
        B, n = pi.shape
        Q = self.queries
        opp = torch.multinomial(pi, n * Q, replacement=True, generator=self.gen).view(B, n, Q)
        P = self.P if self.P.dim() == 3 else self.P.expand(B, n, n)  # a view, no copy
        p = P.gather(2, opp)  # p[b, y, k] = P(y ≻ y''_k)
        u = torch.rand(p.shape, generator=self.gen, dtype=p.dtype, device=p.device)
        return (u < p).to(p.dtype).mean(dim=-1)

    def queries_per_call(self, n: int) -> int:
        return n * (n if self.queries is None else self.queries)


def mixture_logp(state: dict[str, torch.Tensor], m: Mixture) -> torch.Tensor:
    """log of the geometric mixture π ∝ π_a^{1−λ}·π_b^{λ}."""
    return torch.log_softmax((1.0 - m.lam) * state[m.a] + m.lam * state[m.b], dim=-1)


class LipschitzEstimate:
    """L̂_t: local Lipschitz constant of q in the KL geometry at π_t (base.py).

    ratio_t = sqrt(Var_π(q_t − q_{t−1}) / Var_π(log π_t − log π_{t−1})) is a
    secant estimate along the last step; a running max that forgets at
    ADAPT_FORGET per step catches the fastest rotating mode, the step may grow
    by at most ADAPT_GROW per step, and L̂ stays in [ADAPT_FLOOR, L] so the
    adaptive step is never below the instance-independent one.
    """

    def __init__(self, B: int):
        self.L = torch.full((B, 1), LIPSCHITZ, dtype=torch.float64)
        self.peak = torch.zeros(B, 1, dtype=torch.float64)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, logp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            pi = logp.exp()
            vx = _var(pi, logp - self.last[0])
            vq = _var(pi, q - self.last[1])
            ok = vx > 1e-24  # below this the policy has stopped moving
            ratio = torch.where(ok, vq / torch.where(ok, vx, 1.0), 0.0).sqrt()
            self.peak = torch.maximum(ratio, ADAPT_FORGET * self.peak)
            self.L = torch.maximum(self.peak, self.L / ADAPT_GROW).clamp(ADAPT_FLOOR, LIPSCHITZ)
        self.last = (logp, q)
        return self.L


def _var(pi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    m = (pi * v).sum(-1, keepdim=True)
    return (pi * (v - m) ** 2).sum(-1, keepdim=True)
