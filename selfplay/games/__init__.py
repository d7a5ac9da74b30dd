"""Matrix preference games: generators, exact NE oracles and duality gaps.

A game is a preference matrix ``P[y, y'] = P(y ≻ y')`` with ``P + Pᵀ = 1``
(Munos et al. 2023, "Nash Learning from Human Feedback"). `matrix` validates,
loads and generates them (the "uniform" generator is the EGPO paper's, Zhou,
Fazel, Du 2025); `solvers` gives the exact NE by linear programming and the
β-regularized NE ``π*_β ∝ μ·exp(P π*_β / β)`` by globally convergent damped
Newton; `measures` gives ``gap``, ``regularized_gap`` and ``kl`` on numpy
arrays or batched torch tensors. The math: docs/algorithms.md#duality-gaps.
"""

from selfplay.games.matrix import KINDS, generate, load, save, validate
from selfplay.games.measures import gap, kl, regularized_gap
from selfplay.games.solvers import solve_nash, solve_regularized

__all__ = [
    "validate",
    "load",
    "generate",
    "save",
    "KINDS",
    "solve_nash",
    "solve_regularized",
    "gap",
    "regularized_gap",
    "kl",
]
