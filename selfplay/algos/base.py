"""Hyperparameters, the `Algorithm` record and the registry.

Every default lives here, once: the per-algorithm modules build their
`default_hyper(n)` by replacing fields of `Hyper()` with the constants below,
and the CLI/config only override what the user names.

Hyperparameters may be Python numbers or torch tensors of shape `[B]` or
`[B, 1]` (one value per game): the tabular runner sweeps many games ×
hyperparameters in one batched call, and the plan arithmetic (`a = 1/(1+ηβ)`,
...) is written so that it works for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from selfplay.algos.plan import StepPlan
from selfplay.errors import InputError

Num = object  # float | int | torch.Tensor (broadcastable to [B, 1])

#: β of the regularized game, shared by every "regularized" algorithm (the
#: issue's reference value; the CLI's --beta overrides it).
BETA = 0.1
#: Mirror prox / extragradient step for preferences in [0, 1]: η = 1/L with
#: L = ½ the Lipschitz constant of y ↦ P(y ≻ π) in (‖·‖₁, ‖·‖∞ mod constants).
PROX_ETA = 2.0
#: MMD/online-mirror-descent step on the β-regularized game, as a multiple of
#: the largest step MMD's theorem allows (η ≤ α/L² = 4α): see online_ipo.py.
MD_ETA_OVER_BETA = 4.0
#: Nash-MD's step, as ηβ (the geometric-mixture weight): see nash_md.py.
NASH_MD_ETA_BETA = 0.1


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters of one run (or one per game, as tensors).

    eta:          step size η (the coefficient of ĝ before normalisation).
    beta:         β, strength of KL(π‖μ) in the regularized game (0 = none).
    alpha:        α, MPO's magnet strength (MMD's regularisation).
    magnet_every: MPO refreshes its magnet every this many steps ...
    magnet_tol:   ... or, if set, as soon as the inner regularized gap of π_t
                  (game regularized by α towards the magnet) is at most
                  magnet_tol · gap(π_t) (a relative tolerance; tabular only,
                  where the gap comes for free from the payoffs already queried).
    """

    eta: Num = 1.0
    beta: Num = 0.0
    alpha: Num = 0.0
    magnet_every: Num = 1
    magnet_tol: Num | None = None

    def with_(self, **kw) -> Hyper:
        return replace(self, **kw)


Objective = Literal["nash", "regularized"]


@dataclass(frozen=True)
class Algorithm:
    """One NLHF algorithm: its step plan as a function of the hyperparameters.

    objective: which game's equilibrium the last iterate converges to
               ("nash": the original game; "regularized": the β-regularized
               game with reference μ).
    """

    name: str
    paper: str
    objective: Objective
    default_hyper: Callable[[int], Hyper]
    plan: Callable[[Hyper], StepPlan]
    summary: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def log_size(n: int) -> float:
    """log n, floored at log 2 (used by size-aware defaults)."""
    return math.log(max(int(n), 2))


def check_n(n: int) -> int:
    if int(n) < 2:
        raise InputError(f"a game needs at least 2 actions, got n={n}")
    return int(n)
